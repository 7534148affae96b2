"""Shortcut audit: which properties of the files, other than the lesion, predict the label?

A network takes any cue that separates the classes. In isic-binary the JPEG
compression does (every benign file is quality 100, half the malignant ones
are chroma-subsampled), and a model that learns it fails on a phone's JPEG.
The audit records, for every image, how it was saved and a few plain pixel
statistics, and measures how well each one alone predicts the label (ROC
AUC with a bootstrap CI). A flag is a question to answer before training,
not a verdict: a darker mean can be the lesion itself, a quality table
cannot.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

from edgeskin.data import dedup, sets
from edgeskin.data.splits import hashes as perceptual_hashes
from edgeskin.runtime.imageio import ImageError, open_rgb

# Flag a property when the lower end of the 95% CI of its (oriented) AUC
# reaches this: clearly better than chance, not a fluctuation of a small set.
FLAG_MIN_AUC_LOW = 0.55
AUDIT_FILE = "audit.json"
PROPERTIES_FILE = "properties.csv"
FIGURE_FILE = "audit.png"

# The IJG (libjpeg) luminance table that "quality" scales.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_SCALED = np.stack([np.sort(np.clip(np.floor((_IJG_LUMA * (5000 / q if q < 50 else 200 - 2 * q) + 50) / 100), 1, 255))
                    for q in range(1, 101)])
_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class Property:
    name: str
    kind: str  # "numeric" or "categorical"
    description: str


PROPERTIES = (
    Property("format", "categorical", "file format"),
    Property("jpeg_quality", "numeric", "JPEG quality estimated from the luminance quantization table (lossless = 101)"),
    Property("chroma_subsampling", "categorical", "JPEG chroma subsampling"),
    Property("bytes_per_pixel", "numeric", "file size over pixel count"),
    Property("width", "numeric", "original width in pixels"),
    Property("height", "numeric", "original height in pixels"),
    Property("aspect_ratio", "numeric", "width / height"),
    Property("exif", "categorical", "EXIF block present"),
    Property("brightness", "numeric", "mean luminance, 0-255"),
    Property("red_blue_cast", "numeric", "(mean R - mean B) / 255"),
    Property("green_cast", "numeric", "(mean G - (mean R + mean B) / 2) / 255"),
    Property("dark_border", "numeric", "share of the outer 10% frame darker than luminance 40 (vignette, scope ring)"),
    Property("sharpness", "numeric", "variance of the Laplacian of the luminance"),
)


def jpeg_quality(quantization: dict | None) -> float:
    """The IJG quality whose scaled luminance table is nearest the file's (101 for a lossless file)."""
    if not quantization:
        return 101.0
    table = np.sort(np.asarray(quantization[min(quantization)], dtype=np.float64))
    if table.size != 64:
        return float("nan")
    return float(1 + np.argmin(np.abs(_SCALED - table).sum(axis=1)))


def _pixel_stats(im: Image.Image) -> dict:
    im.thumbnail((512, 512))
    a = np.asarray(im, dtype=np.float64)
    luma = a @ np.array([0.299, 0.587, 0.114])
    r, g, b = (a[..., k].mean() for k in range(3))
    h, w = luma.shape
    bh, bw = max(1, h // 10), max(1, w // 10)
    frame = np.ones_like(luma, dtype=bool)
    frame[bh:h - bh, bw:w - bw] = False
    lap = (luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]) if h > 2 and w > 2 else np.zeros(1)
    return {"brightness": float(luma.mean()), "red_blue_cast": (r - b) / 255.0, "green_cast": (g - (r + b) / 2) / 255.0,
            "dark_border": float((luma[frame] < 40).mean()), "sharpness": float(lap.var())}


def properties_of(path) -> dict:
    """Every audited property of one image file."""
    try:
        with Image.open(path) as raw:
            fmt = raw.format or "unknown"
            width, height = raw.size
            is_jpeg = fmt in ("JPEG", "MPO")  # phones write MPO: JPEG with extra frames
            quality = jpeg_quality(getattr(raw, "quantization", None)) if is_jpeg else 101.0
            sampling = _SUBSAMPLING.get(JpegImagePlugin.get_sampling(raw), "other") if is_jpeg else "none"
            exif = "yes" if raw.getexif() else "no"
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: not an image file Pillow can read ({exc})") from exc
    return {"format": fmt, "jpeg_quality": quality, "chroma_subsampling": sampling,
            "bytes_per_pixel": os.path.getsize(path) / float(width * height), "width": float(width),
            "height": float(height), "aspect_ratio": width / float(height), "exif": exif,
            **_pixel_stats(open_rgb(path))}


def auc(scores, labels) -> float:
    """ROC AUC by the Mann-Whitney rank sum; ties count one half."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _numeric_scores(prop: Property, values: list, labels: np.ndarray) -> np.ndarray:
    if prop.kind == "numeric":
        v = np.array(values, dtype=np.float64)
        return np.where(np.isfinite(v), v, np.nanmedian(v) if np.isfinite(v).any() else 0.0)
    # A category scores as its share of malignant images: the best any rule on
    # this property alone could do (slightly optimistic with many rare levels).
    levels = {lv: labels[[x == lv for x in values]].mean() for lv in set(values)}
    return np.array([levels[x] for x in values], dtype=np.float64)


def _assess(prop: Property, values: list, labels: np.ndarray, n_boot: int, seed: int) -> dict:
    scores = _numeric_scores(prop, values, labels)
    a = auc(scores, labels)
    sign = 1.0 if a >= 0.5 else -1.0  # orient so that AUC >= 0.5: which way it points is in `direction`
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            boots.append(auc(sign * scores[idx], labels[idx]))
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan))
    oriented = a if sign > 0 else 1.0 - a
    return {"property": prop.name, "kind": prop.kind, "description": prop.description,
            "auc": oriented, "ci95": [float(lo), float(hi)],
            "direction": ("higher means malignant" if sign > 0 else "lower means malignant") if prop.kind == "numeric" else "by category",
            "flagged": bool(np.isfinite(lo) and lo >= FLAG_MIN_AUC_LOW),
            "per_class": _per_class(prop, values, labels)}


def _per_class(prop: Property, values: list, labels: np.ndarray) -> dict:
    out = {}
    for k, name in enumerate(sets.LABELS):
        vs = [v for v, y in zip(values, labels) if y == k]
        if prop.kind == "numeric":
            v = np.array(vs, dtype=np.float64)
            v = v[np.isfinite(v)]
            out[name] = {"median": float(np.median(v)), "p25": float(np.quantile(v, 0.25)),
                         "p75": float(np.quantile(v, 0.75)), "share_nonzero": float(np.mean(v != 0))} if v.size else {}
        else:
            levels = sorted(set(values))
            out[name] = {lv: vs.count(lv) for lv in levels}
    return out


def _duplicates(samples_by_split: dict, max_distance: int) -> dict:
    hashes = {name: perceptual_hashes(s) for name, s in samples_by_split.items() if s}
    out = {}
    for name, h in hashes.items():
        report = dedup.cluster(h, max_distance)
        out[f"within_{name}"] = {"images_in_clusters": report.images_in_clusters, "clusters": report.clusters}
    if "train" in hashes:
        for name in ("val", "test"):
            if name in hashes:
                out[f"{name}_near_duplicating_train"] = int(dedup.near_duplicates_of(hashes[name], hashes["train"], max_distance).sum())
    return out


SOURCE = Property("source", "categorical", "the data set the image came from")


def _by_source(rows, labels: np.ndarray, sources: np.ndarray, n_boot: int, seed: int) -> dict:
    """The flagged properties within each source alone: a cue can hide inside one set of a mixture."""
    out = {}
    for src in sorted(set(sources)):
        m = sources == src
        if len(set(labels[m])) < 2:
            continue
        assessed = [_assess(p, [r[p.name] for r, keep in zip(rows, m) if keep], labels[m], n_boot, seed)
                    for p in PROPERTIES]
        out[src] = {"images": int(m.sum()), "malignant": int(labels[m].sum()),
                    "flagged": {a["property"]: a["auc"] for a in assessed if a["flagged"]}}
    return out


def audit(samples, out=None, seed: int = 0, n_boot: int = 1000, max_distance: int = dedup.DEFAULT_MAX_DISTANCE,
          splits: dict | None = None, workers: int | None = None) -> dict:
    """Audit labelled samples; write audit.json, properties.csv and audit.png to out if given.

    splits (name -> samples), when given, adds near-duplicate counts within
    and across those splits; otherwise the samples count as one split.
    """
    samples = list(samples)
    sets.check_classes(samples, "audit")
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        rows = list(pool.map(lambda s: properties_of(s.path), samples))
    labels = np.array([s.label for s in samples])
    sources = [s.source for s in samples]
    props = PROPERTIES
    if len(set(sources)) > 1:
        # Mixed sets differ in class balance: the source is itself a cue, and
        # every property that tells the sources apart (size, compression,
        # colour) can carry it to the model.
        props += (SOURCE,)
        rows = [{**r, "source": src} for r, src in zip(rows, sources)]
    report = {
        "images": len(samples),
        "counts": {name: int((labels == k).sum()) for k, name in enumerate(sets.LABELS)},
        "flag_rule": f"flagged when the lower end of the 95% bootstrap CI of the property's ROC AUC is >= {FLAG_MIN_AUC_LOW}",
        "properties": [_assess(p, [r[p.name] for r in rows], labels, n_boot, seed) for p in props],
        "near_duplicates": _duplicates(splits or {"train": samples}, max_distance),
    }
    if len(set(sources)) > 1:
        report["by_source"] = _by_source(rows, labels, np.array(sources), n_boot, seed)
    if out is not None:
        _write(Path(out), report, samples, rows)
    return report


def _write(out: Path, report: dict, samples, rows) -> None:
    from edgeskin.reporting import figures

    out.mkdir(parents=True, exist_ok=True)
    with open(out / PROPERTIES_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"] + [p.name for p in PROPERTIES])
        for s, r in zip(samples, rows):
            w.writerow([s.path, sets.LABELS[s.label]] + [r[p.name] for p in PROPERTIES])
    figures.audit(report, samples, rows, out / FIGURE_FILE)
    (out / AUDIT_FILE).write_text(json.dumps(report, indent=2) + "\n")


_CELL = 28


def table(report: dict) -> str:
    """The audit as printed text: one line a property, flags first."""
    c = report["counts"]
    lines = [f"audit of {report['images']} images ({c['benign']} benign, {c['malignant']} malignant); {report['flag_rule']}",
             f"  {'property':<20}{'ROC AUC [95% CI]':<24}{'benign':<{_CELL}}{'malignant':<{_CELL}}"]
    same_median = False
    for row in sorted(report["properties"], key=lambda r: (not r["flagged"], -r["auc"])):
        lo, hi = row["ci95"]
        cells = _cells(row)
        same_median |= row["flagged"] and cells[0].startswith("median") and "," in cells[0]
        lines.append(f"{'! ' if row['flagged'] else '  '}{row['property']:<20}{row['auc']:.3f} [{lo:.3f}, {hi:.3f}]".ljust(46)
                     + f"{cells[0]:<{_CELL - 1}} {cells[1]}")
    if same_median:
        # A flag beside two equal medians looks like a bug; the AUC ranks whole distributions, not medians.
        lines.append("  where both classes share a median, the AUC comes from the rest of the distribution: how many "
                     "values are non-zero, the quartiles (IQR) or the tails beyond them")
    for k, v in report["near_duplicates"].items():
        lines.append(f"  near-duplicates {k.replace('_', ' ')}: {v}")
    for src, row in report.get("by_source", {}).items():
        flags = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["flagged"].items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"  within {src} ({row['images']} images, {row['malignant']} malignant), flagged: {flags}")
    return "\n".join(lines)


def _cells(row: dict) -> list[str]:
    """Each class's cell: its median (and what differs when the medians agree), or its levels' counts, whole words only."""
    per = [row["per_class"][name] for name in sets.LABELS]
    if row["kind"] == "numeric":
        if not all(per):
            return [f"median {pc['median']:.3g}" if pc else "" for pc in per]
        if f"{per[0]['median']:.3g}" != f"{per[1]['median']:.3g}":
            return [f"median {pc['median']:.3g}" for pc in per]
        if per[0]["median"] == 0 and "share_nonzero" in per[0]:
            return [f"median 0, {pc['share_nonzero']:.0%} non-zero" for pc in per]
        return [f"median {pc['median']:.3g}, IQR {pc['p25']:.3g}-{pc['p75']:.3g}" for pc in per]
    return [_fit([f"{k} {v}" for k, v in pc.items() if v], _CELL - 2) for pc in per]


def _fit(items: list[str], width: int) -> str:
    """As many whole items as fit in width, and how many more there are: never a name cut mid-word."""
    for keep in range(len(items), 0, -1):
        text = ", ".join(items[:keep]) + (f", +{len(items) - keep} more" if keep < len(items) else "")
        if len(text) <= width:
            return text
    return f"{len(items)} levels"
