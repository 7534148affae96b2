"""Calibrate a model for one site: its camera, its population, its prevalence.

A clinic with a few hundred labelled images of its own runs the model over
them, fits a Platt map on the model's own outputs and re-chooses the
operating points, then gets a new .tflite whose standard metadata carries
both, so MediaPipe, the Task Library and `edgeskin predict` all read the
same calibrated probability. No TensorFlow: numpy, Pillow and the TFLite
runtime only, as on the device.

The "after" figures are cross-validated: the map and the thresholds are
fitted on k-1 folds and measured on the held-out fold, so the report is
never measured on the images it was fitted to.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskin.runtime import calibration
from edgeskin.data import sets
from edgeskin.runtime import metadata
from edgeskin.reporting.stats import bootstrap
from edgeskin.runtime.imageio import ImageError, load_rgb
from edgeskin.runtime import Classifier
from edgeskin.runtime.gate import DOMAIN_PASS


class SiteCalibrationError(ValueError):
    """Site data or an output path that calibration cannot use."""


@dataclass(frozen=True)
class SiteOptions:
    target_sensitivity: float = calibration.SCREENING_SENSITIVITY
    folds: int = 5
    seed: int = 0
    n_boot: int = 1000
    min_per_class: int = sets.MIN_PER_CLASS
    # Also move the in-model gate's threshold so that the site's own images pass
    # as the calibration pool did at export (a clinic whose images are all flagged).
    refit_gate: bool = False

    def __post_init__(self):
        if not 0.5 <= self.target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must lie in [0.5, 1], got {self.target_sensitivity}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.n_boot < 1 or self.min_per_class < self.folds:
            raise ValueError("n_boot must be positive and min_per_class at least the number of folds")


@dataclass(frozen=True)
class SiteResult:
    path: Path
    info: dict
    report: dict


def _samples(source) -> list[sets.Sample]:
    ds = sets.discover(source)
    return [s for name in sets.SPLITS for s in ds.split(name)]


def raw_scores(classifier: Classifier, samples, progress=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's own malignant outputs (before any score calibration) and its out_of_domain
    probabilities (None without a usable head); every unreadable file is named."""
    out, ood, errors = [], [], []
    items = progress(samples, len(samples)) if progress else samples
    for s in items:
        try:
            heads = classifier.raw_heads(load_rgb(s.path, classifier.image_size))
        except ImageError as exc:
            errors.append(str(exc))
            continue
        out.append(heads["malignant"])
        ood.append(heads["out_of_domain"])
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SiteCalibrationError(f"{len(errors)} unreadable image(s): {errors[0]}{more}")
    return np.array(out, dtype=np.float64), (np.array(ood, dtype=np.float64) if classifier.has_usable_head else None)


def refit_gate(usable: dict, out_of_domain: np.ndarray) -> dict:
    """The usable entry with its threshold moved so that DOMAIN_PASS of the site's images pass (never below 0.5)."""
    threshold = float(min(max(0.5, np.quantile(out_of_domain, DOMAIN_PASS) + 1e-6), 1.0))
    return {**usable, "threshold": threshold,
            "site_refit": {"previous_threshold": usable["threshold"], "images": int(len(out_of_domain)),
                           "pass_rate_before": float(np.mean(out_of_domain < usable["threshold"])),
                           "pass_rate_after": float(np.mean(out_of_domain < threshold))}}


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A stratified fold number per image."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0, 1):
        idx = rng.permutation(np.nonzero(y == label)[0])
        fold[idx] = np.arange(len(idx)) % k
    return fold


def cross_validate(raw: np.ndarray, y: np.ndarray, options: SiteOptions) -> tuple[np.ndarray, dict]:
    """Held-out calibrated probabilities, and held-out decisions at each operating point."""
    fold = _folds(y, options.folds, options.seed)
    p = np.empty(len(y))
    flagged: dict[str, np.ndarray] = {}
    for f in range(options.folds):
        fit, held = fold != f, fold == f
        platt = calibration.fit_platt(raw[fit], y[fit])
        points = calibration.choose_operating_points(platt.apply(raw[fit]), y[fit], options.target_sensitivity)
        p[held] = platt.apply(raw[held])
        for name, point in points.items():
            flagged.setdefault(name, np.zeros(len(y), dtype=bool))[held] = p[held] >= point.threshold
    return p, flagged


def _rates_with_ci(y, flagged, n_boot, seed) -> dict:
    def rates(a, b):
        a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
        return [b[a].mean(), (~b[~a]).mean()]

    (s_lo, s_hi), (c_lo, c_hi) = bootstrap(rates, y, flagged.astype(float), n_boot, seed)
    sens, spec = rates(y, flagged)
    return {"sensitivity": {"value": float(sens), "ci95": [float(s_lo), float(s_hi)]},
            "specificity": {"value": float(spec), "ci95": [float(c_lo), float(c_hi)]}}


def _ece(y, p, n_boot, seed) -> dict:
    fn = lambda a, b: calibration.expected_calibration_error(b, a)  # noqa: E731
    lo, hi = bootstrap(fn, y, p, n_boot, seed)
    return {"value": fn(y, p), "ci95": [lo, hi]}


def _report(y, p_before, before_points: dict, p_cv, flagged_cv: dict, options: SiteOptions) -> dict:
    n, s = options.n_boot, options.seed
    return {
        "before": {"ece": _ece(y, p_before, n, s),
                   "operating_points": {k: {"threshold": t, **_rates_with_ci(y, p_before >= t, n, s)}
                                        for k, t in before_points.items()}},
        "after_cross_validated": {"folds": options.folds, "ece": _ece(y, p_cv, n, s),
                                  "operating_points": {k: _rates_with_ci(y, f, n, s) for k, f in flagged_cv.items()}},
    }


def calibrate(model, source, out, options: SiteOptions = SiteOptions(), progress=None) -> SiteResult:
    """Fit the site's Platt map and operating points; write a new model, its JSON, card and figure."""
    model, out = Path(model), Path(out)
    if out.suffix != ".tflite":
        raise SiteCalibrationError(f"{out}: the output file must end in .tflite")
    if out.resolve() == model.resolve():
        raise SiteCalibrationError(f"{out}: refusing to overwrite the model being calibrated; choose another --out")
    classifier = Classifier(model)
    samples = _samples(source)
    sets.check_classes(samples, f"{source}: site data", options.min_per_class)
    y = np.array([s.label for s in samples])
    if options.refit_gate and not classifier.has_usable_head:
        raise SiteCalibrationError(f"{model}: this model has no usable head, so there is no gate threshold to refit")
    raw, out_of_domain = raw_scores(classifier, samples, progress)
    before = classifier.score_calibration.apply(raw) if classifier.score_calibration else raw
    p_cv, flagged_cv = cross_validate(raw, y, options)
    report = _report(y, before, classifier.operating_points, p_cv, flagged_cv, options)
    platt = calibration.fit_platt(raw, y)
    points = calibration.choose_operating_points(platt.apply(raw), y, options.target_sensitivity)
    info = _new_info(classifier.info, platt, points, source, y, report, options)
    if options.refit_gate:
        info["usable"] = refit_gate(info["usable"], out_of_domain)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, metadata.embed_for_apps(model.read_bytes(), info), info, y, before, p_cv)
    return SiteResult(out, info, report)


def _new_info(old: dict, platt, points, source, y, report: dict, options: SiteOptions) -> dict:
    described = f"site data {Path(source).resolve()} ({int(y.sum())} malignant, {int((1 - y).sum())} benign)"
    # The export's checks describe the export-time fit; they move under site_calibration.
    kept = {k: v for k, v in old.items() if k != "checks"}
    return {
        **kept,
        "score_calibration": {**platt.to_dict(), "fitted_on": described},
        "operating_points": {k: v.to_dict() for k, v in points.items()},
        "operating_points_chosen_on": described,
        "site_calibration": {
            "data": str(Path(source).resolve()),
            "counts": {"benign": int((1 - y).sum()), "malignant": int(y.sum())},
            "date": time.strftime("%Y-%m-%d"),
            "target_sensitivity": options.target_sensitivity,
            "previous_score_calibration": old.get("score_calibration"),
            "export_checks": old.get("checks"),
            "report": report,
        },
    }


def _write(out: Path, model: bytes, info: dict, y, before, p_cv) -> None:
    """All four files are complete on disk before any replaces an older one; a failure leaves no temporary file."""
    figure = out.with_name(out.stem + "_reliability.png")
    card = out.with_name(out.stem + "_MODEL_CARD.md")
    staged = {figure: None, card: render_card(info, figure.name).encode(), out: model,
              out.with_suffix(".json"): (json.dumps(info, indent=2) + "\n").encode()}
    tmp = {path: path.with_name(path.name + ".tmp") for path in staged}
    try:
        reliability_png(y, before, p_cv, tmp[figure])
        for path, payload in staged.items():
            if payload is not None:
                tmp[path].write_bytes(payload)
        for path in staged:
            os.replace(tmp[path], path)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)


def _bins(y, p, bins: int = 15):
    idx = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    return [(float(np.mean(p[idx == b])), float(np.mean(y[idx == b]))) for b in range(bins) if np.any(idx == b)]


def reliability_png(y, before, after, path: Path, size: int = 420) -> None:
    """A reliability diagram drawn with Pillow alone (the light runtime has no matplotlib):
    observed malignant share against mean predicted probability, per 15 equal-width bins."""
    from PIL import Image, ImageDraw

    pad = 50
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    span = size - 2 * pad

    def xy(px, py):
        return pad + px * span, size - pad - py * span

    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    d.line([xy(0, 0), xy(1, 1)], fill=(150, 150, 150), width=1)
    for k in range(0, 11, 2):
        d.text((xy(k / 10, 0)[0] - 8, size - pad + 6), f"{k / 10:.1f}", fill="black")
        d.text((10, xy(0, k / 10)[1] - 6), f"{k / 10:.1f}", fill="black")
    y = np.asarray(y, dtype=float)
    for values, colour, label, row in ((before, (120, 120, 120), "before", 0), (after, (214, 39, 40), "after (cross-validated)", 1)):
        points = [xy(px, py) for px, py in _bins(y, np.asarray(values, dtype=float))]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        for cx, cy in points:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        d.text((pad + 8, pad + 8 + 14 * row), label, fill=colour)
    d.text((size // 2 - 80, size - 20), "mean malignant_probability", fill="black")
    d.text((pad, 10), "observed share malignant", fill="black")
    im.save(path, format="PNG")


def render_card(info: dict, figure: str) -> str:
    """The model card of a site-calibrated file: what it was calibrated on, and the before/after figures."""
    site = info["site_calibration"]
    rep = site["report"]

    def ci(e):
        return f"{e['value']:.3f} ({e['ci95'][0]:.3f}–{e['ci95'][1]:.3f})"

    cal = info["score_calibration"]
    lines = [
        f"# Model card: edgeskin {info.get('version', '')}, calibrated for a site",
        "",
        "A screening aid, not a diagnosis. This file is the shipped edgeskin model with its score calibration and "
        "operating points refitted on one site's labelled images; the network itself is unchanged.",
        "",
        "## Site data",
        f"- Data: `{site['data']}`: {site['counts']['malignant']} malignant, {site['counts']['benign']} benign images.",
        f"- Calibrated on {site['date']}; screening operating point at sensitivity >= {site['target_sensitivity']:.2f}.",
        f"- Platt map (standard ScoreCalibrationOptions, INVERSE_LOGISTIC): slope {cal['slope']:.4f}, offset {cal['offset']:.4f}.",
        "",
        "## Before and after",
        f"After: {rep['after_cross_validated']['folds']}-fold cross-validated (fitted on the other folds, measured on "
        "each held-out fold). 95% bootstrap intervals.",
        "",
        "| figure | before | after (cross-validated) |",
        "|---|---|---|",
        f"| ECE, 15 bins | {ci(rep['before']['ece'])} | {ci(rep['after_cross_validated']['ece'])} |",
    ]
    for name, after in rep["after_cross_validated"]["operating_points"].items():
        b = rep["before"]["operating_points"].get(name)
        for key in ("sensitivity", "specificity"):
            lines.append(f"| {name} {key} | {ci(b[key]) if b else 'n/a'} | {ci(after[key])} |")
    lines += ["", "## Operating points of this file", "", "| operating point | threshold |", "|---|---|"]
    lines += [f"| {k} | {v['threshold']:.4f} |" for k, v in info["operating_points"].items()]
    lines += [f"\n- {note}." for note in coinciding(info["operating_points"])]
    lines += ["", f"![reliability before and after]({figure})", ""]
    return "\n".join(lines)


def summary(result: SiteResult) -> str:
    rep = result.report

    def ci(e):
        return f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"

    lines = [f"ECE (15 bins): before {ci(rep['before']['ece'])}, after (cross-validated) {ci(rep['after_cross_validated']['ece'])}"]
    for name, after in rep["after_cross_validated"]["operating_points"].items():
        b = rep["before"]["operating_points"].get(name)
        lines.append(f"  {name:<10} sensitivity {ci(b['sensitivity']) if b else 'n/a'} -> {ci(after['sensitivity'])}   "
                     f"specificity {ci(b['specificity']) if b else 'n/a'} -> {ci(after['specificity'])}")
    for name, point in result.info["operating_points"].items():
        lines.append(f"  new {name} threshold {point['threshold']:.4f}")
    refit = result.info.get("usable", {}).get("site_refit")
    if refit:
        lines.append(f"  in-model gate: out_of_domain threshold {refit['previous_threshold']:.3f} -> "
                     f"{result.info['usable']['threshold']:.3f}; site images passing {refit['pass_rate_before']:.1%} -> "
                     f"{refit['pass_rate_after']:.1%}")
    lines += [f"  {note}" for note in coinciding(result.info["operating_points"])]
    return "\n".join(lines)


# What picks each point (calibration.choose_operating_points), to say why two of them can land on one threshold.
_RULES = {"screening": "the highest threshold that reaches the target sensitivity (or the balanced one, if lower)",
          "balanced": "the threshold with the best sensitivity + specificity",
          "specific": "the lowest threshold with specificity >= 0.90 (or the balanced one, if higher)"}


def coinciding(points: dict) -> list[str]:
    """One sentence for each pair of operating points that share a threshold: why, so that it does not look like a bug."""
    names, notes = list(points), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = points[a], points[b]
            if pa["threshold"] != pb["threshold"]:
                continue
            notes.append(f"{a} and {b} share the threshold {pa['threshold']:.4f}: on this data "
                         f"{_RULES.get(a, a)} is also {_RULES.get(b, b)} (sensitivity {pa['sensitivity']:.3f}, "
                         f"specificity {pa['specificity']:.3f}); a larger site set may separate them")
    return notes
