"""Splits that hold: near-duplicate and lesion groups kept on one side, validation carved per source and class, test images that repeat a training image left out."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import replace

import numpy as np

from edgeskin.data import dedup
from edgeskin.data.sets import DataError, Dataset, Sample, check_classes, linked_to
from edgeskin.runtime.imageio import ImageError


_HASHES: dict[tuple, np.ndarray] = {}


def _cached_phash(path: str) -> np.ndarray:
    """dedup.phash, remembered per file version: evaluating three test sets against
    one run's 13,000 training images would otherwise hash them three times."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    except OSError:
        return dedup.phash(path)  # raises the ImageError that names the file
    if key not in _HASHES:
        _HASHES[key] = dedup.phash(path)
    return _HASHES[key]


def hashes(samples, workers: int | None = None) -> np.ndarray:
    """Perceptual hashes of the samples, in order."""
    paths = [s.path for s in samples]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        try:
            return np.array(list(pool.map(_cached_phash, paths)), dtype=bool).reshape(len(paths), -1)
        except ImageError as exc:
            raise DataError(f"unreadable image: {exc}") from exc


def _groups(samples, hash_array: np.ndarray, max_distance: int) -> tuple[list[int], dedup.DuplicateReport]:
    """One group id per sample, joining near-duplicates and manifest groups."""
    report = dedup.cluster(hash_array, max_distance)
    sets = dedup.UnionFind(len(samples))
    first_of: dict[tuple[str, object], int] = {}
    for i, s in enumerate(samples):
        for key in [("dup", report.groups[i])] + [("group", g) for g in s.groups]:
            sets.join(i, first_of.setdefault(key, i))
    # Root indices, not relabelled ids: the split's shuffle order depends on them.
    return [sets.root(i) for i in range(len(samples))], report


def split_validation(
    data: Dataset, fraction: float, seed: int, max_distance: int = dedup.DEFAULT_MAX_DISTANCE
) -> Dataset:
    """Carve a stratified, seeded, group-aware validation split out of train.

    Near-duplicates are grouped first, so the same lesion never sits on both
    sides; a validation figure inflated by copies would pick the wrong epoch
    and the wrong threshold. When the data already has a val split, val images
    that near-duplicate a training image are dropped from it instead.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must lie in (0, 1), got {fraction}")
    train = list(data.train)
    check_classes(train, f"{data.source}: training data")
    if data.val:
        return _clean_given_val(data, train, max_distance)
    groups, report = _groups(train, hashes(train), max_distance)
    val_idx = _carve(train, groups, fraction, seed)
    new_train = tuple(s for i, s in enumerate(train) if i not in val_idx)
    new_val = tuple(s for i, s in enumerate(train) if i in val_idx)
    check_classes(new_train, "training split")
    check_classes(new_val, "validation split")
    note = (f"near-duplicates: {report.images_in_clusters} training images in {report.clusters} clusters "
            f"({report.pairs} pairs within {max_distance}/{dedup.HASH_SIZE ** 2} bits), kept within one split")
    return replace(data, train=new_train, val=new_val, notes=data.notes + (note,))


def _clean_given_val(data: Dataset, train: list, max_distance: int) -> Dataset:
    """The data's own val split, less the images that repeat or share a group with a training image."""
    h_train, h_val = hashes(train), hashes(data.val)
    linked = linked_to(data.val, train)
    leaked = dedup.near_duplicates_of(h_val, h_train, max_distance) | np.array([s.path in linked for s in data.val])
    val = tuple(s for s, bad in zip(data.val, leaked) if not bad)
    check_classes(val, f"{data.source}: validation data")
    report = dedup.cluster(h_train, max_distance)
    note = (f"near-duplicates: {report.images_in_clusters} training images in {report.clusters} clusters; "
            f"{int(leaked.sum())} val images near-duplicate a training image or share its group, "
            "and were dropped from val")
    return replace(data, val=val, notes=data.notes + (note,))


def _carve(train: list, groups: list[int], fraction: float, seed: int) -> set[int]:
    """Indices of the validation images: whole groups, about fraction of each (source, class) stratum.

    Stratified by source and class, so that validation and calibration draw
    from every source in its own proportions and one large set cannot crowd
    out a small one.
    """
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict[tuple, list[int]] = {}
    for g, idx in members.items():
        majority = Counter((train[i].source, train[i].label) for i in idx).most_common(1)[0][0]
        by_stratum.setdefault(majority, []).append(g)
    val_idx: set[int] = set()
    for stratum in sorted(by_stratum):
        gs = sorted(by_stratum[stratum])
        rng.shuffle(gs)
        target = round(fraction * sum(len(members[g]) for g in gs))
        taken = 0
        for g in gs:
            if taken >= target:
                break
            val_idx.update(members[g])
            taken += len(members[g])
    return val_idx


def held_out_test(data: Dataset, max_distance: int = dedup.DEFAULT_MAX_DISTANCE) -> tuple[tuple[Sample, ...], int]:
    """The test images that near-duplicate no train or val image (nor share its group), and how many were dropped.

    A test image that is a copy of a training image measures memory, so every
    reported test figure leaves it out.
    """
    seen = list(data.train) + list(data.val)
    if not data.test or not seen:
        return data.test, 0
    linked = linked_to(data.test, seen)
    leaked = dedup.near_duplicates_of(hashes(data.test), hashes(seen), max_distance) | np.array(
        [s.path in linked for s in data.test], dtype=bool)
    return tuple(s for s, bad in zip(data.test, leaked) if not bad), int(leaked.sum())
