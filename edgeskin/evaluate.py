"""Evaluate a model on a labelled set: metrics.json, figures and a model card.

A .tflite model is scored through the runtime, exactly as an app would run
it; a Keras model or run folder through Keras. The set is any layout that
`train` accepts: its test/ split when it has one (leaving out test images
that near-duplicate a train or val image), otherwise every image in it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskin import calibration, data, figures, metrics

METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
PREDICTIONS_FILE = "predictions.csv"


class EvaluationError(ValueError):
    """An evaluation that cannot run."""


@dataclass(frozen=True)
class Scorer:
    """A model that maps samples to malignant probabilities, and what it knows of itself."""

    name: str
    path: Path
    kind: str  # "tflite" or "keras"
    operating_points: dict  # name -> threshold
    temperature: float | None
    info: dict
    run_dir: Path | None
    platt: calibration.Platt | None = None  # the score calibration a .tflite carries

    def predictor(self):
        """(input size, a function from a (n, size, size, 3) uint8 batch to malignant probabilities)."""
        if self.kind == "tflite":
            from edgeskin.runtime import Classifier

            classifier = Classifier(self.path, num_threads=os.cpu_count())
            return classifier.image_size, lambda x: np.array([classifier.malignant_probability(v) for v in x])
        from edgeskin import model as model_lib

        net = model_lib.load(self.path)

        def run(x):
            y = net.predict(x, verbose=0)
            # A serving model gives [benign, malignant]; a training model one logit.
            # A training model's logit gets the run's temperature, so that its
            # probabilities match the operating points chosen on them.
            return y[:, 1] if y.shape[1] == 2 else calibration.sigmoid(y[:, 0] / (self.temperature or 1.0))

        return int(net.input_shape[1]), run

    def score(self, samples, progress=None, transform=None, predictor=None, inspect=None) -> np.ndarray:
        """Malignant probabilities of the samples; transform (PIL -> PIL), if given,
        changes each decoded image before the model's own crop and resize, and
        inspect(sample, original_size, pixels), if given, sees every decoded
        image once, so a second look at the set needs no second decode."""
        from edgeskin.imageio import ImageError, open_rgb, to_model_input

        samples = list(samples)
        size, run = predictor or self.predictor()

        def decode(s):
            try:
                im = open_rgb(s.path)
                im = transform(im) if transform else im
                pixels = to_model_input(im, size)
                if inspect:
                    inspect(s, im.size, pixels)
                return pixels
            except ImageError as exc:
                raise EvaluationError(f"unreadable image: {exc}") from exc

        chunks = [samples[i : i + 64] for i in range(0, len(samples), 64)]
        out = []
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for chunk in progress(chunks, len(chunks)) if progress else chunks:
                out.append(run(np.stack(list(pool.map(decode, chunk)))))
        return np.concatenate(out).astype(np.float64)


def load_scorer(source) -> Scorer:
    source = Path(source)
    if not source.exists():
        raise EvaluationError(f"{source}: no such model file or run folder")
    if source.suffix == ".tflite":
        from edgeskin import metadata
        from edgeskin.runtime import RuntimeModelError

        try:
            info = metadata.validate(metadata.read(source.read_bytes()))
        except metadata.MetadataError as exc:
            raise RuntimeModelError(f"{source}: {exc}") from exc
        points = {k: v["threshold"] for k, v in info.get("operating_points", {}).items()}
        cal = info.get("score_calibration")
        if cal:
            # Its probabilities are Platt-calibrated, so "before calibration"
            # means before the Platt map, not before the temperature.
            platt = calibration.Platt(cal["slope"], cal["offset"])
            return Scorer(source.name, source, "tflite", points, None, info, None, platt)
        return Scorer(source.name, source, "tflite", points, info.get("temperature"), info, None)
    run_dir = source if source.is_dir() else source.parent
    keras_path = source if source.is_file() else source / "model.keras"
    if keras_path.suffix != ".keras":
        raise EvaluationError(f"{source}: expected a .tflite or .keras model, or a run folder")
    cal_file = run_dir / "calibration.json"
    cal = json.loads(cal_file.read_text()) if cal_file.is_file() else {}
    points = {k: v["threshold"] for k, v in cal.get("operating_points", {}).items()}
    is_run = (run_dir / "history.csv").is_file()
    return Scorer(keras_path.name, keras_path, "keras", points, cal.get("temperature"), cal, run_dir if is_run else None)


def evaluation_set(source) -> tuple[tuple[data.Sample, ...], dict]:
    """The samples to report on, and a description of how they were chosen."""
    ds = data.discover(source)
    if ds.test:
        kept, dropped = data.held_out_test(ds)
        desc = {"source": str(Path(source).resolve()), "split": "test", "images": len(ds.test),
                "near_duplicates_left_out": dropped, "evaluated": len(kept),
                "rule": "test images within the near-duplicate distance of any train or val image are left out"}
    else:
        kept = ds.train + ds.val
        desc = {"source": str(Path(source).resolve()), "split": "all", "images": len(kept),
                "near_duplicates_left_out": 0, "evaluated": len(kept), "rule": "every image in the set"}
    data.check_classes(kept, f"{source}: evaluation set", data.MIN_PER_CLASS)
    return kept, desc


def write_predictions(path: Path, samples, p: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "malignant_probability"])
        for s, v in zip(samples, p):
            w.writerow([s.path, data.LABELS[s.label], f"{v:.6f}"])


def report_files(y, p, thresholds: dict, out: Path, temperature=None, compare=None, history=None,
                 n_boot: int = 1000, name: str = "model", platt=None) -> dict:
    """Metrics and figures for one scored set; shared by `evaluate` and the end of `train`."""
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    m = metrics.report(y, p, thresholds, temperature, n_boot=n_boot, platt=platt)
    named = {k: v for k, v in m["thresholds"].items()}
    curves = {name: (y, p, m["roc_auc"]["value"])}
    pr = {name: (y, p, m["pr_auc"]["value"])}
    if compare is not None:
        cname, cp, cm = compare
        curves[cname] = (y, cp, cm["roc_auc"]["value"])
        pr[cname] = (y, cp, cm["pr_auc"]["value"])
    written = [
        figures.roc(curves, named, figs / "roc.png"),
        figures.precision_recall(pr, figs / "precision_recall.png"),
        figures.reliability(y, p, figs / "reliability.png",
                            before=platt.invert(p) if platt else metrics.uncalibrated(p, temperature) if temperature else None),
        figures.threshold_sweep(y, p, named, figs / "threshold_sweep.png"),
        figures.confusion_matrices(named, figs / "confusion_matrices.png"),
        figures.histograms(y, p, named, figs / "probability_histograms.png"),
    ]
    if history is not None:
        written.append(figures.training_curves(history, figs / "training_curves.png"))
    m["figures"] = sorted(str(f.relative_to(out)) for f in written if f is not None)
    return m


def _compare(compare, samples, y, threshold, n_boot, progress):
    other = load_scorer(compare)
    cp = other.score(samples, progress)
    cthr = dict(other.operating_points) or {"requested": threshold if threshold is not None else 0.5}
    return other.name, cp, metrics.report(y, cp, cthr, other.temperature, n_boot=n_boot, platt=other.platt), other


def _robustness(scorer: Scorer, samples, y, p, n_boot, progress) -> list[dict]:
    from edgeskin import robustness

    predictor = scorer.predictor()
    points = dict(scorer.operating_points) or {"requested": 0.5}
    return robustness.measure(lambda t: scorer.score(samples, transform=t, predictor=predictor), y, p, points,
                              n_boot=n_boot, progress=progress)


def _gate_inspector(scorer: Scorer):
    """For a .tflite with a gate: a score(inspect=...) callback that records each image's reasons, and the record."""
    if scorer.kind != "tflite" or not scorer.info.get("gate"):
        return None, None
    from edgeskin.gate import Gate

    gate, found = Gate.from_dict(scorer.info["gate"]), {}

    def inspect(sample, size, pixels):
        found[sample.path] = gate.reasons(size, pixels)

    return inspect, found


def _gate_report(found: dict | None, samples, y, p, thresholds: dict, n_boot: int) -> dict | None:
    """How many images the model's gate set aside, why, and the metrics on the rest (all images: `metrics`)."""
    if found is None:
        return None
    from collections import Counter

    reasons = [found[s.path] for s in samples]
    keep = np.array([not r for r in reasons])
    out = {"images": len(samples), "set_aside": int((~keep).sum()), "share_set_aside": float((~keep).mean()),
           "reasons": dict(Counter(r for rs in reasons for r in rs)),
           "set_aside_files": [s.path for s, k in zip(samples, keep) if not k]}
    if keep.any() and len(set(np.asarray(y)[keep])) == 2:
        out["usable_metrics"] = metrics.report(np.asarray(y)[keep], np.asarray(p)[keep], thresholds, n_boot=n_boot)
    return out


def evaluate(model, source, out, threshold: float | None = None, compare=None, n_boot: int = 1000,
             progress=None, run_dir=None, robust: bool = True) -> dict:
    """Score model (and optionally compare) on source and write everything to out.

    With robust, every perturbation of the robustness table costs one more
    pass over the set. metrics.json, predictions.csv, figures/ and
    MODEL_CARD.md are written to a staging folder first and moved into out
    only once all exist, so a failure never leaves out (often models/) with
    new figures beside an old card.
    """
    out = Path(out)
    if threshold is not None and not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise EvaluationError(f"threshold must be a number in [0, 1], got {threshold}")
    scorer = load_scorer(model)
    run = Path(run_dir) if run_dir else scorer.run_dir
    history = run / "history.csv" if run else None
    if history is not None:
        _check_history(history)
    samples, desc = evaluation_set(source)
    y = np.array([s.label for s in samples])
    inspect, found = _gate_inspector(scorer)
    p = scorer.score(samples, progress, inspect=inspect)
    thresholds = dict(scorer.operating_points)
    if threshold is not None or not thresholds:
        thresholds["requested"] = float(threshold) if threshold is not None else 0.5
    cmp = _compare(compare, samples, y, threshold, n_boot, progress) if compare is not None else None
    rows = _robustness(scorer, samples, y, p, n_boot, progress) if robust else None
    cmp_rows = _robustness(cmp[3], samples, y, cmp[1], n_boot, progress) if robust and cmp is not None else None
    gate = _gate_report(found, samples, y, p, thresholds, n_boot)
    config = json.loads((run / "config.json").read_text()) if run and (run / "config.json").is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".evaluate-") as staging:
        staging = Path(staging)
        m = report_files(y, p, thresholds, staging, scorer.temperature, cmp[:3] if cmp else None, history, n_boot,
                         scorer.name, scorer.platt)
        if rows is not None:
            m["figures"] = sorted(m["figures"] + [str(figures.robustness(rows, staging / "figures" / "robustness.png")
                                                      .relative_to(staging))])
        result = _result(scorer, desc, m, cmp, compare, rows, cmp_rows)
        if gate is not None:
            result["gate"] = metrics.json_safe(gate)
        _write_outputs(staging, out, samples, p, result, scorer, config)
    return result


def _result(scorer: Scorer, desc: dict, m: dict, cmp, compare, rows, cmp_rows=None) -> dict:
    """What metrics.json holds, and so exactly what the printed table and the card can show."""
    result = {
        "model": {"name": scorer.name, "path": str(scorer.path), "kind": scorer.kind,
                  "quantization": scorer.info.get("quantization", "float32" if scorer.kind == "keras" else None),
                  "temperature": scorer.temperature, "operating_points": scorer.operating_points},
        "data": desc,
        "metrics": m,
    }
    if cmp is not None:
        result["compare"] = {"model": {"name": cmp[0], "path": str(compare)}, "metrics": cmp[2]}
        if cmp_rows is not None:
            result["compare"]["robustness"] = cmp_rows
    if rows is not None:
        result["robustness"] = rows
    return metrics.json_safe(result)


def _write_outputs(staging: Path, out: Path, samples, p, result: dict, scorer: Scorer, config: dict) -> None:
    from edgeskin import card

    write_predictions(staging / PREDICTIONS_FILE, samples, p)
    (staging / METRICS_FILE).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (staging / CARD_FILE).write_text(card.render(result, scorer.info, config))
    shutil.rmtree(out / "figures", ignore_errors=True)
    for name in ("figures", PREDICTIONS_FILE, METRICS_FILE, CARD_FILE):
        os.replace(staging / name, out / name)


def _check_history(path: Path) -> None:
    """A --run folder's history must have the columns the training-curve figure reads."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        columns = set(next(csv.reader(f), []))
    missing = {"phase", "loss", "val_loss", "val_auc"} - columns
    if missing:
        raise EvaluationError(f"{path}: not a training history (missing {', '.join(sorted(missing))})")


def table(result: dict) -> str:
    """The headline figures as a plain-text table."""
    m = result["metrics"]

    def ci(entry, fmt="{:.3f}"):
        f = lambda v: "n/a" if v is None else fmt.format(v)  # noqa: E731
        lo, hi = entry["ci95"]
        return f"{f(entry['value'])} [{f(lo)}, {f(hi)}]"

    d = result["data"]
    lines = [f"{result['model']['name']} on {d['evaluated']} images ({m['n_malignant']} malignant, {m['n_benign']} benign; "
             f"{d['near_duplicates_left_out']} near-duplicates of training images left out)",
             f"  ROC AUC          {ci(m['roc_auc'])}",
             f"  PR AUC           {ci(m['pr_auc'])}",
             f"  Brier            {ci(m['brier'])}",
             f"  ECE (15 bins)    {ci(m['ece'])}" + (f"   before temperature: {ci(m['ece_before_temperature'])}"
                                                     if "ece_before_temperature" in m else "")
             + (f"   before Platt: {ci(m['ece_before_platt'])}" if "ece_before_platt" in m else "")]
    for t, v in m["specificity_at_sensitivity"].items():
        lines.append(f"  specificity at sensitivity {t}: {ci(v)}")
    lines.append(f"  {'point':<11}{'threshold':>9}  {'sensitivity':<22}{'specificity':<22}{'PPV':<22}{'NPV':<22}")
    for name, pt in m["thresholds"].items():
        lines.append(f"  {name:<11}{pt['threshold']:>9.4f}  {ci(pt['sensitivity']):<22}{ci(pt['specificity']):<22}"
                     f"{ci(pt['ppv']):<22}{ci(pt['npv']):<22}")
    if "compare" in result:
        c = result["compare"]["metrics"]
        lines.append(f"compare {result['compare']['model']['name']}: ROC AUC {ci(c['roc_auc'])}, PR AUC {ci(c['pr_auc'])}")
    if "gate" in result:
        g = result["gate"]
        usable = g.get("usable_metrics")
        lines.append(f"  gate: {g['set_aside']} of {g['images']} images set aside ({g['share_set_aside']:.1%}; "
                     + (", ".join(f"{k} {v}" for k, v in g["reasons"].items()) or "none") + ")"
                     + (f"; ROC AUC on the rest {ci(usable['roc_auc'])}" if usable else ""))
    if "robustness" in result:
        lines.append(robustness_table(result["robustness"]))
    return "\n".join(lines)


def robustness_table(rows: list[dict]) -> str:
    lines = [f"  robustness {'':<12}{'ROC AUC':>8}  {'screening sens':>14}  {'spec':>6}  {'flipped':>8}  {'median |dp|':>11}"]
    for r in rows:
        pt = r["operating_points"].get("screening") or next(iter(r["operating_points"].values()))
        lines.append(f"  {r['name']:<23}{r['roc_auc']['value']:>8.3f}  {pt['sensitivity']:>14.3f}  {pt['specificity']:>6.3f}  "
                     f"{r['screening_flip_rate']:>8.1%}  {r['median_abs_delta']:>11.4f}")
    return "\n".join(lines)
