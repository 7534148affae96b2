"""Labelled image sets: finding them, checking them, splitting them.

Five layouts are accepted, so that a new set takes no conversion:
  (a) a folder with train/ (and optionally val/ and test/), each holding
      benign/ and malignant/;
  (b) a folder holding just benign/ and malignant/;
  (c) a CSV manifest with path,label and optional dx, group, split and
      source columns;
  (d) a HAM10000 folder as published: images/ and metadata.csv (lesion ids,
      diagnoses, a fixed lesion-level split);
  (e) an ISIC 2017 challenge folder: images/ and labels.csv (official splits).
Several of them can be combined into one training set (discover_many).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeskin.data import dedup
from edgeskin.runtime.imageio import IMAGE_SUFFIXES, ImageError, load_rgb

LABELS = ("benign", "malignant")  # index 1 is the positive class everywhere
SPLITS = ("train", "val", "test")
# The seven HAM10000 diagnoses, in the order of the diagnosis head's outputs.
DIAGNOSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Other sets' names for the same diagnoses: ISIC 2017's seborrheic keratosis
# is one of HAM10000's benign keratosis-like lesions.
DX_ALIASES = {"sk": "bkl", "seborrheic_keratosis": "bkl", "melanoma": "mel", "nevus": "nv"}
GROUP_SEPARATOR = "|"  # a sample may belong to several groups: a lesion id and a copy elsewhere
# Fewest images of either class that a calibration or evaluation set may
# have: below it a threshold chosen for 95% sensitivity rests on one or two
# cases, and a bootstrap interval means nothing. Train (its calibration
# split), evaluate and calibrate all refuse smaller sets.
MIN_PER_CLASS = 20


class DataError(ValueError):
    """A data set that cannot be used as it is."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # index into LABELS
    group: str = ""  # lesion or patient ids, "|"-separated; images sharing any of them stay in one split
    dx: str = ""  # one of DIAGNOSES, or "" when the set has no diagnosis
    source: str = ""  # which data set the image came from

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g in self.group.split(GROUP_SEPARATOR) if g)


@dataclass(frozen=True)
class Dataset:
    """A labelled image set, split three ways. Empty splits are allowed."""

    source: str
    train: tuple[Sample, ...] = ()
    val: tuple[Sample, ...] = ()
    test: tuple[Sample, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def split(self, name: str) -> tuple[Sample, ...]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name in SPLITS:
            c = Counter(s.label for s in self.split(name))
            out[name] = {LABELS[k]: c.get(k, 0) for k in range(len(LABELS))}
        return out


def parse_label(value: str, where: str) -> int:
    v = str(value).strip().lower()
    if v in LABELS:
        return LABELS.index(v)
    if v in ("0", "1"):
        return int(v)
    raise DataError(f"{where}: label {value!r} is neither 'benign' nor 'malignant' (nor 0/1)")


def parse_dx(value: str, where: str) -> str:
    v = str(value or "").strip().lower()
    v = DX_ALIASES.get(v, v)
    if v and v not in DIAGNOSES:
        raise DataError(f"{where}: diagnosis {value!r} is not one of {', '.join(DIAGNOSES)} (or sk)")
    return v


def _class_folder(folder: Path, root: Path | None = None) -> tuple[Sample, ...]:
    """benign/ and malignant/ under folder; each image's group is its path under root's parent
    (for example isic-binary/train/benign/1.jpg), the name other sets use to point at it."""
    missing = [name for name in LABELS if not (folder / name).is_dir()]
    if missing:
        raise DataError(f"{folder}: no {' or '.join(m + '/' for m in missing)} folder (expected benign/ and malignant/)")
    root = root or folder
    # The set's own folder name, resolved, so that "." or a trailing slash
    # still gives "isic-binary/train/benign/1.jpg" and not "train/benign/1.jpg".
    name_of_set = root.resolve().name
    samples = []
    for k, name in enumerate(LABELS):
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend(Sample(str(p), k, f"{name_of_set}/{p.relative_to(root).as_posix()}", source=name_of_set)
                       for p in files)
    return tuple(samples)


def _manifest(path: Path) -> Dataset:
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    columns = set(rows[0])
    path_col = "path" if "path" in columns else "file" if "file" in columns else None
    if path_col is None or "label" not in columns:
        raise DataError(f"{path}: a manifest needs 'path' and 'label' columns (found {', '.join(sorted(columns))})")
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for n, row in enumerate(rows, start=2):
        where = f"{path}:{n}"
        if None in row or any(row.get(c) is None for c in (path_col, "label")):
            raise DataError(f"{where}: the row does not have one value per column")
        image = Path(row[path_col])
        image = image if image.is_absolute() else base / image
        split = (row.get("split") or "train").strip().lower()
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        splits[split].append(Sample(str(image), parse_label(row["label"], where), (row.get("group") or "").strip(),
                                    parse_dx(row.get("dx"), where), (row.get("source") or path.stem).strip()))
    return Dataset(str(path), *(tuple(splits[name]) for name in SPLITS))


def _rows(path: Path, needed: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise DataError(f"{path}: no rows, or no {', '.join(missing)} column")
    for n, row in enumerate(rows, start=2):
        if None in row or any(row.get(c) is None for c in needed):
            raise DataError(f"{path}:{n}: the row does not have one value per column")
    return rows


def _copy_of(row: dict) -> list[str]:
    """The group key of the isic-binary image this one repeats, if the set's metadata names one."""
    other = (row.get("same_as_isic_binary") or "").strip()
    return [other] if other else []


def _published(root: Path, table: str, split_column: str, lesion_of, split_of=lambda split: split,
               also_needed: tuple[str, ...] = ()) -> Dataset:
    """A set as its publisher laid it out: images/<image_id>.jpg and one metadata row an image.

    lesion_of(row, name) gives the row's own group key; a copy of another
    set's image (same_as_isic_binary) joins its group too.
    """
    name = root.resolve().name
    rows = _rows(root / table, ("image_id", "dx", "label", split_column) + also_needed)
    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for n, row in enumerate(rows, start=2):
        where = f"{root / table}:{n}"
        split = split_of(row[split_column].strip().lower())
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        group = GROUP_SEPARATOR.join([lesion_of(row, name)] + _copy_of(row))
        splits[split].append(Sample(str(root / "images" / f"{row['image_id']}.jpg"), parse_label(row["label"], where),
                                    group, parse_dx(row["dx"], where), name))
    return Dataset(str(root), *(tuple(splits[split]) for split in SPLITS))


def _ham10000(root: Path) -> Dataset:
    """HAM10000 as published: lesion ids are groups, the given lesion-level split is kept."""
    return _published(root, "metadata.csv", "split", lambda row, _: row["lesion_id"].strip(),
                      also_needed=("lesion_id",))


def _isic2017(root: Path) -> Dataset:
    """The ISIC 2017 challenge set: the official test split stays test; its small
    official val split joins train, so that validation is drawn, like every
    other source's, from the training pool. No lesion ids: each image is its own group."""
    return _published(root, "labels.csv", "official_split", lambda row, name: f"{name}/{row['image_id']}",
                      lambda split: "train" if split == "val" else split)


def discover(source) -> Dataset:
    """Read any of the three layouts into a Dataset (nothing is decoded yet)."""
    root = Path(source)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: expected a folder or a .csv manifest")
        return _manifest(root)
    if (root / "metadata.csv").is_file() and (root / "images").is_dir():
        return _ham10000(root)
    if (root / "labels.csv").is_file() and (root / "images").is_dir():
        return _isic2017(root)
    if (root / "train").is_dir():
        parts = {name: _class_folder(root / name, root) if (root / name).is_dir() else () for name in SPLITS}
        return Dataset(str(root), **parts)
    if (root / LABELS[0]).is_dir() or (root / LABELS[1]).is_dir():
        return Dataset(str(root), train=_class_folder(root))
    raise DataError(f"{root}: expected train/ or benign/ and malignant/ folders, a HAM10000 or ISIC 2017 "
                    "folder (images/ with metadata.csv or labels.csv), or a CSV manifest")


def discover_many(sources) -> Dataset:
    """Several data sets as one: splits concatenated, every image keeping its source.

    A training image that shares a group with any test image (the same lesion,
    or a copy another set's metadata points at) is left out of training, so
    every source's test split stays a clean benchmark.
    """
    sources = list(sources)
    if not sources:
        raise DataError("no data given")
    parts = [discover(s) for s in sources]
    if len(parts) == 1:
        return parts[0]
    names = [p.train[0].source if p.train else Path(p.source).name for p in parts]
    if len(set(names)) < len(names):
        raise DataError(f"the same source is given twice ({', '.join(names)})")
    notes = tuple(n for p in parts for n in p.notes)
    if any(p.val for p in parts):
        # One set's own val split would leave every other set out of
        # validation and calibration; validation is carved from them all.
        parts = [replace(p, train=p.train + p.val, val=()) for p in parts]
        notes += ("the given val splits joined train: validation is drawn from every source alike",)
    merged = {name: tuple(s for p in parts for s in p.split(name)) for name in SPLITS}
    leaked = linked_to(merged["train"] + merged["val"], merged["test"])
    notes += _unmatched_links(merged, names)
    if leaked:
        merged = {**merged, "train": tuple(s for s in merged["train"] if s.path not in leaked),
                  "val": tuple(s for s in merged["val"] if s.path not in leaked)}
        notes += (f"{len(leaked)} training images share a lesion or a copy with a test image of another source "
                  "and were left out of training",)
    return Dataset(" + ".join(str(Path(s)) for s in sources), **merged, notes=notes)


def _unmatched_links(merged: dict, names: list[str]) -> tuple[str, ...]:
    """A note for copy links (same_as_isic_binary) that name a set absent from these sources:
    harmless when that set is not being used, a leak if it is, under another folder name."""
    everyone = [s for split in merged.values() for s in split]
    keys = {g for s in everyone for g in s.groups[:1]}  # each image's own key
    links = {g for s in everyone for g in s.groups[1:] if "/" in g}
    missing = sorted({g.split("/")[0] for g in links - keys} - set(names))
    if not missing:
        return ()
    return (f"{len(links - keys)} copy links name images of {', '.join(missing)}, which is not among the sources "
            f"({', '.join(names)}); if it is, under another folder name, name its folder {missing[0]}",)


def linked_to(samples, others) -> set[str]:
    """Paths of the samples joined to any of others through shared groups, transitively
    (an image whose lesion has another image that copies a test image is linked too)."""
    everyone = list(samples) + list(others)
    sets = dedup.UnionFind(len(everyone))
    first_of: dict[str, int] = {}
    for i, s in enumerate(everyone):
        for g in s.groups:
            sets.join(i, first_of.setdefault(g, i))
    tainted = {sets.root(i) for i in range(len(samples), len(everyone))}
    return {s.path for i, s in enumerate(samples) if sets.root(i) in tainted}


def source_counts(samples) -> dict[str, dict[str, int]]:
    """Images per source and class."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        row = out.setdefault(s.source or "data", {name: 0 for name in LABELS})
        row[LABELS[s.label]] += 1
    return out


def check_classes(samples, what: str, minimum: int = 1) -> None:
    """Stop early, and say why, if a class is empty (or has fewer than minimum images)."""
    counts = Counter(s.label for s in samples)
    empty = [LABELS[k] for k in range(len(LABELS)) if counts.get(k, 0) == 0]
    if empty:
        raise DataError(f"{what}: no {' and no '.join(empty)} images")
    few = [f"{counts.get(k, 0)} {LABELS[k]}" for k in range(len(LABELS)) if counts.get(k, 0) < minimum]
    if few:
        raise DataError(f"{what}: only {' and '.join(few)} images; at least {minimum} of each class are needed")


def load_images(samples, size: int, workers: int | None = None) -> np.ndarray:
    """Decode every sample into one (n, size, size, 3) uint8 array.

    All files are tried before anything fails, so one run lists every bad file
    rather than the first, and training never starts on a set with holes.
    """
    samples = list(samples)
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            out[i] = load_rgb(samples[i].path, size)
        except ImageError as exc:
            errors.append(str(exc))

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(one, range(len(samples))))
    if errors:
        shown = "; ".join(sorted(errors)[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DataError(f"{len(errors)} unreadable image(s): {shown}{more}")
    return out


def write_manifest(path, splits: dict[str, tuple[Sample, ...]]) -> None:
    """Write a manifest (path,label,dx,group,split,source) that discover() reads back.

    Image paths are written relative to the manifest's folder, so a run
    folder and its data can move together to another machine.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "dx", "group", "split", "source"])
        for name, samples in splits.items():
            for s in samples:
                w.writerow([os.path.relpath(os.path.abspath(s.path), os.path.abspath(path.parent)),
                            LABELS[s.label], s.dx, s.group, name, s.source])
    os.replace(tmp, path)
