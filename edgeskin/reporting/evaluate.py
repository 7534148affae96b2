"""Evaluate a model on labelled sets: metrics.json, figures and a model card.

A .tflite model is scored through the runtime, exactly as an app would run
it; a Keras model or run folder through Keras. Each set is any layout that
`train` accepts: its test/ split when it has one (leaving out test images
that near-duplicate a train or val image), otherwise every image in it. The
first set is the primary one, reported in full; every set also gets a
compact report (result["sets"]). A model with a diagnosis head is measured
on the images whose diagnosis it knows, from the same pass over the images.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeskin.runtime import calibration
from edgeskin.data import sets
from edgeskin.reporting import figures, metrics
from edgeskin.reporting.card import format_value

METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
PREDICTIONS_FILE = "predictions.csv"


class EvaluationError(ValueError):
    """An evaluation that cannot run."""


@dataclass(frozen=True)
class Scores:
    """One model's pass over a set: both heads, from the same invocations."""

    malignant: np.ndarray  # (n,)
    diagnosis: np.ndarray | None = None  # (n, len(scorer.diagnoses)); None without a diagnosis head


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
    diagnoses: tuple[str, ...] = ()  # the diagnosis head's outputs in order; () without one

    def predictor(self):
        """(input size, a function from a (n, size, size, 3) uint8 batch to (malignant probabilities,
        diagnosis probabilities or None))."""
        if self.kind == "tflite":
            return self._tflite_predictor()
        from edgeskin.training import model as model_lib

        net = model_lib.load(self.path)
        return int(net.input_shape[1]), lambda x: self._keras_outputs(net.predict(x, verbose=0))

    def _tflite_predictor(self):
        from edgeskin.runtime import Classifier

        classifier = Classifier(self.path, num_threads=os.cpu_count())

        def run(x):
            out = [classifier.scores(v) for v in x]
            dx = [d for _, d in out]
            return np.array([p for p, _ in out]), (np.stack(dx) if self.diagnoses and dx[0] is not None else None)

        return classifier.image_size, run

    def _keras_outputs(self, y):
        """A serving model gives [benign, malignant] (and diagnosis probabilities); a training
        model one logit (and diagnosis logits). A training model's logit gets the run's
        temperature, so that its probabilities match the operating points chosen on them."""
        heads = [np.asarray(h) for h in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]
        serving = heads[0].shape[1] == 2
        p = heads[0][:, 1] if serving else calibration.sigmoid(heads[0][:, 0] / (self.temperature or 1.0))
        if len(heads) < 2 or not self.diagnoses:
            return p, None
        return p, heads[1] if serving else _softmax(heads[1])

    def scores(self, samples, progress=None, transform=None, predictor=None, inspect=None) -> Scores:
        """Both heads' probabilities for the samples, in one pass. transform (PIL -> PIL), if given,
        changes each decoded image before the model's own crop and resize, and
        inspect(sample, original_size, pixels), if given, sees every decoded
        image once, so a second look at the set needs no second decode."""
        samples = list(samples)
        size, run = predictor or self.predictor()
        decode = _decoder(size, transform, inspect)
        chunks = [samples[i : i + 64] for i in range(0, len(samples), 64)]
        malignant, diagnosis = [], []
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for chunk in progress(chunks, len(chunks)) if progress else chunks:
                p, dx = run(np.stack(list(pool.map(decode, chunk))))
                malignant.append(p)
                diagnosis.append(dx)
        return Scores(np.concatenate(malignant).astype(np.float64), self._stack_diagnosis(diagnosis))

    def score(self, samples, progress=None, transform=None, predictor=None, inspect=None) -> np.ndarray:
        """Malignant probabilities of the samples (the first half of `scores`)."""
        return self.scores(samples, progress, transform, predictor, inspect).malignant

    def _stack_diagnosis(self, parts) -> np.ndarray | None:
        if not parts or any(d is None for d in parts):
            return None
        dx = np.concatenate(parts).astype(np.float64)
        if dx.ndim != 2 or dx.shape[1] != len(self.diagnoses):
            raise EvaluationError(f"{self.path}: its diagnosis output has shape {dx.shape[1:]}, "
                                  f"but it names {len(self.diagnoses)} diagnoses")
        return dx


def _decoder(size: int, transform, inspect):
    """sample -> the model's input pixels, with a one-line error for an unreadable file."""
    from edgeskin.runtime.imageio import ImageError, open_rgb, to_model_input

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

    return decode


def _softmax(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_scorer(source) -> Scorer:
    source = Path(source)
    if not source.exists():
        raise EvaluationError(f"{source}: no such model file or run folder")
    if source.suffix == ".tflite":
        from edgeskin.runtime import RuntimeModelError, metadata

        try:
            info = metadata.validate(metadata.read(source.read_bytes()))
        except metadata.MetadataError as exc:
            raise RuntimeModelError(f"{source}: {exc}") from exc
        points = {k: v["threshold"] for k, v in info.get("operating_points", {}).items()}
        cal = info.get("score_calibration")
        diagnoses = tuple(info.get("diagnoses", ()))
        if cal:
            # Its probabilities are Platt-calibrated, so "before calibration"
            # means before the Platt map, not before the temperature.
            platt = calibration.Platt(cal["slope"], cal["offset"])
            return Scorer(source.name, source, "tflite", points, None, info, None, platt, diagnoses)
        return Scorer(source.name, source, "tflite", points, info.get("temperature"), info, None, diagnoses=diagnoses)
    run_dir = source if source.is_dir() else source.parent
    keras_path = source if source.is_file() else source / "model.keras"
    if keras_path.suffix != ".keras":
        raise EvaluationError(f"{source}: expected a .tflite or .keras model, or a run folder")
    cal_file = run_dir / "calibration.json"
    cal = json.loads(cal_file.read_text()) if cal_file.is_file() else {}
    points = {k: v["threshold"] for k, v in cal.get("operating_points", {}).items()}
    is_run = (run_dir / "history.csv").is_file()
    return Scorer(keras_path.name, keras_path, "keras", points, cal.get("temperature"), cal, run_dir if is_run else None,
                  diagnoses=tuple(cal.get("diagnoses", ())))


def evaluation_set(source, trained_on=()) -> tuple[tuple[sets.Sample, ...], dict]:
    """The samples to report on, and a description of how they were chosen.

    trained_on: the images the model was trained and calibrated on (a run's
    splits.csv), whatever their source. A model trained on several sets can
    have seen a copy of this set's test image in another set, so those are
    left out as well as the near-duplicates of this set's own train split.
    """
    ds = sets.discover(source)
    if ds.test:
        seen = replace(ds, train=ds.train + tuple(trained_on))
        kept, dropped = sets.held_out_test(seen)
        desc = {"source": str(Path(source).resolve()), "split": "test", "images": len(ds.test),
                "near_duplicates_left_out": dropped, "evaluated": len(kept),
                "rule": "test images within the near-duplicate distance of any train or val image are left out"
                        + (", or of any of the model's own training images (its run's splits.csv)" if trained_on else "")}
    else:
        every = ds.train + ds.val
        kept, dropped = sets.held_out_test(sets.Dataset(ds.source, train=tuple(trained_on), test=every))
        desc = {"source": str(Path(source).resolve()), "split": "all", "images": len(every),
                "near_duplicates_left_out": dropped, "evaluated": len(kept),
                "rule": "every image in the set" + (", less those within the near-duplicate distance of any of the "
                                                    "model's own training images (its run's splits.csv)"
                                                    if trained_on else "")}
    sets.check_classes(kept, f"{source}: evaluation set", sets.MIN_PER_CLASS)
    return kept, desc


def named_sources(source) -> list[tuple[str, Path]]:
    """The test sets, each with the name its report goes under: its folder's name (a manifest's stem)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise EvaluationError("no data set given")
    named = []
    for src in sources:
        path = Path(src).resolve()
        named.append((path.stem if path.is_file() else path.name, Path(src)))
    names = [name for name, _ in named]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise EvaluationError(f"two data sets are named {twice[0]!r}; each set's report goes under its folder's name, "
                              "so give each set once and from folders of different names")
    return named


def write_predictions(path: Path, samples, p: np.ndarray, diagnosis: np.ndarray | None = None,
                      diagnoses: tuple[str, ...] = ()) -> None:
    """One row an image; with a diagnosis head, its true diagnosis and every diagnosis probability too."""
    dx_columns = diagnosis is not None
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "malignant_probability"]
                   + (["dx"] + [f"p_{name}" for name in diagnoses] if dx_columns else []))
        for i, (s, v) in enumerate(zip(samples, p)):
            w.writerow([s.path, sets.LABELS[s.label], f"{v:.6f}"]
                       + ([s.dx] + [f"{q:.6f}" for q in diagnosis[i]] if dx_columns else []))


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


@dataclass(frozen=True)
class _Set:
    """One test set: its samples, how they were chosen, and each model's scores on them."""

    name: str
    samples: tuple
    desc: dict
    scores: Scores
    compare: Scores | None = None

    @property
    def y(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])


def _score_set(scorer: Scorer, other: Scorer | None, name: str, samples, desc: dict, progress, inspect=None) -> _Set:
    mine = scorer.scores(samples, progress, inspect=inspect)
    return _Set(name, samples, desc, mine, other.scores(samples, progress) if other is not None else None)


def _thresholds(scorer: Scorer, threshold: float | None, always_requested: bool = True) -> dict:
    """The model's operating points, and the requested threshold (0.5 for a model that has none).

    The compared model gets the requested threshold only when it has no
    operating points of its own: its own points are what it would ship with.
    """
    points = dict(scorer.operating_points)
    if (threshold is not None and always_requested) or not points:
        points["requested"] = float(threshold) if threshold is not None else 0.5
    return points


def _compare(other: Scorer, s: _Set, threshold, n_boot):
    cp = s.compare.malignant
    report = metrics.report(s.y, cp, _thresholds(other, threshold, False), other.temperature, n_boot=n_boot,
                            platt=other.platt)
    return other.name, cp, report, other


def _robustness(scorer: Scorer, samples, y, p, n_boot, progress) -> list[dict]:
    from edgeskin.reporting import robustness

    predictor = scorer.predictor()
    points = dict(scorer.operating_points) or {"requested": 0.5}
    return robustness.measure(lambda t: scorer.score(samples, transform=t, predictor=predictor), y, p, points,
                              n_boot=n_boot, progress=progress)


def _gate_inspector(scorer: Scorer):
    """For a .tflite with a gate: a score(inspect=...) callback that records each image's reasons, and the record."""
    if scorer.kind != "tflite" or not scorer.info.get("gate"):
        return None, None
    from edgeskin.runtime.gate import Gate

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

    source is one data set or a list of them. The first is the primary set:
    metrics, figures, robustness table, gate report and predictions.csv are
    of it. Every set, the primary too, gets a compact report under
    result["sets"][name]. With robust, every perturbation of the robustness
    table costs one more pass over the primary set. metrics.json,
    predictions.csv, figures/ and MODEL_CARD.md are written to a staging
    folder first and moved into out only once all exist, so a failure never
    leaves out (often models/) with new figures beside an old card.
    """
    out = Path(out)
    if threshold is not None and not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise EvaluationError(f"threshold must be a number in [0, 1], got {threshold}")
    scorer, other, run, history = _models(model, compare, run_dir)
    # Every set is read and de-duplicated before any image is scored, so that a
    # bad last set fails in seconds, not after the primary's robustness passes.
    # Only a run named with run_dir (--run): the folder a Keras model sits in
    # may be any folder, and its splits are then not known to be the model's.
    trained_on = _trained_on(Path(run_dir)) if run_dir else ()
    chosen = [(name, *evaluation_set(src, trained_on)) for name, src in named_sources(source)]
    inspect, found = _gate_inspector(scorer)
    sets = [_score_set(scorer, other, *c, progress, inspect if i == 0 else None) for i, c in enumerate(chosen)]
    first, thresholds = sets[0], _thresholds(scorer, threshold)
    cmp = _compare(other, first, threshold, n_boot) if other is not None else None
    rows = _robustness(scorer, first.samples, first.y, first.scores.malignant, n_boot, progress) if robust else None
    cmp_rows = _robustness(other, first.samples, first.y, cmp[1], n_boot, progress) if robust and cmp else None
    gate = _gate_report(found, first.samples, first.y, first.scores.malignant, thresholds, n_boot)
    config = _run_records(run)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".evaluate-") as staging:
        staging = Path(staging)
        m = report_files(first.y, first.scores.malignant, thresholds, staging, scorer.temperature,
                         cmp[:3] if cmp else None, history, n_boot, scorer.name, scorer.platt)
        if rows is not None:
            m["figures"].append(str(figures.robustness(rows, staging / "figures" / "robustness.png").relative_to(staging)))
        result = {**_result(scorer, first.desc, m, cmp, compare, rows, cmp_rows), "bootstrap": n_boot}
        _add_sets(result, sets, scorer, other, m, cmp, threshold, n_boot, staging)
        if gate is not None:
            result["gate"] = metrics.json_safe(gate)
        _write_outputs(staging, out, first, result, scorer, config)
    return result


def _run_records(run: Path | None) -> dict:
    """The run's config.json, with its calibration.json under "calibration" (per-source validation figures)."""
    if not run or not (run / "config.json").is_file():
        return {}
    config = json.loads((run / "config.json").read_text())
    if (run / "calibration.json").is_file():
        config["calibration"] = json.loads((run / "calibration.json").read_text())
    return config


def _trained_on(run: Path | None) -> tuple[sets.Sample, ...]:
    """The training and calibration images of the evaluated model's run, when its splits.csv is at hand."""
    if run is None or not (run / "splits.csv").is_file():
        return ()
    splits = sets.discover(run / "splits.csv")
    return splits.train + splits.val


def _models(model, compare, run_dir):
    """The scorer, the compared one (or None), the run folder (or None) and its history file (or None)."""
    scorer = load_scorer(model)
    other = load_scorer(compare) if compare is not None else None
    run = Path(run_dir) if run_dir else scorer.run_dir
    history = run / "history.csv" if run else None
    if history is not None:
        _check_history(history)
    return scorer, other, run, history


def _add_sets(result: dict, sets, scorer: Scorer, other, m: dict, cmp, threshold, n_boot: int, staging: Path) -> None:
    """result["sets"], result["diagnosis"] (the primary set's) and the diagnosis figures."""
    reports = {s.name: _set_entry(s, i == 0, scorer, other, m, cmp, threshold, n_boot) for i, s in enumerate(sets)}
    result["sets"] = metrics.json_safe(reports)
    written = _diagnosis_figures(result["sets"], scorer.name, staging)
    result["metrics"]["figures"] = sorted(result["metrics"]["figures"] + written)
    primary = result["sets"][sets[0].name]
    if "diagnosis" in primary:
        result["diagnosis"] = primary["diagnosis"]
    if "diagnosis" in primary.get("compare", {}):
        result["compare"]["diagnosis"] = primary["compare"]["diagnosis"]


def _set_entry(s: _Set, primary: bool, scorer: Scorer, other, m: dict, cmp, threshold, n_boot: int) -> dict:
    """One set's compact report, and the compared model's beside it. The primary set's
    figures are picked out of its full report rather than bootstrapped a second time."""

    def figures_of(model: Scorer, scores: Scores, full: dict | None, always_requested: bool) -> dict:
        if primary:
            return metrics.compact(full)
        return metrics.summary(s.y, scores.malignant, _thresholds(model, threshold, always_requested), n_boot)

    entry = {"primary": primary, "data": s.desc, "metrics": figures_of(scorer, s.scores, m, True),
             **_diagnosis(scorer, s.samples, s.scores, n_boot)}
    if other is not None:
        entry["compare"] = {"model": {"name": other.name}, "metrics": figures_of(other, s.compare, cmp and cmp[2], False),
                            **_diagnosis(other, s.samples, s.compare, n_boot)}
    return entry


def _diagnosis(scorer: Scorer, samples, scores: Scores, n_boot: int) -> dict:
    """{"diagnosis": the head's report} on the samples whose diagnosis the model knows; {} when there is none."""
    if scores is None or scores.diagnosis is None:
        return {}
    index = metrics.diagnosis_index([s.dx for s in samples], scorer.diagnoses)
    if not (index >= 0).any():
        return {}
    return {"diagnosis": metrics.diagnosis_report(scores.diagnosis, index, scorer.diagnoses, n_boot)}


def figure_name(set_name: str, primary: bool) -> str:
    """The diagnosis confusion figure of a set: confusion_matrix.png for the primary set."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", set_name).strip("._") or "set"
    return "confusion_matrix.png" if primary else f"confusion_matrix_{slug}.png"


def _diagnosis_figures(sets: dict, model_name: str, staging: Path) -> list[str]:
    """One confusion figure a set with a diagnosis report, its path recorded in that report."""
    written = []
    for name, entry in sets.items():
        dx = entry.get("diagnosis")
        if not dx:
            continue
        rel = f"figures/{figure_name(name, entry['primary'])}"
        figures.diagnosis_confusion(dx["confusion"], dx["diagnoses"], staging / rel, f"{model_name} on {name}")
        dx["figure"] = rel
        written.append(rel)
    return written


def _result(scorer: Scorer, desc: dict, m: dict, cmp, compare, rows, cmp_rows=None) -> dict:
    """What metrics.json holds, and so exactly what the printed table and the card can show."""
    result = {
        "model": {"name": scorer.name, "path": str(scorer.path), "kind": scorer.kind,
                  "quantization": scorer.info.get("quantization", "float32" if scorer.kind == "keras" else None),
                  "temperature": scorer.temperature, "operating_points": scorer.operating_points,
                  "diagnoses": list(scorer.diagnoses)},
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


def _write_outputs(staging: Path, out: Path, primary: _Set, result: dict, scorer: Scorer, config: dict) -> None:
    from edgeskin.reporting import card

    write_predictions(staging / PREDICTIONS_FILE, primary.samples, primary.scores.malignant, primary.scores.diagnosis,
                      scorer.diagnoses)
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


def _ci_text(entry, fmt="{:.3f}") -> str:
    lo, hi = entry["ci95"]
    return f"{format_value(entry['value'], fmt)} [{format_value(lo, fmt)}, {format_value(hi, fmt)}]"


def table(result: dict) -> str:
    """The headline figures as a plain-text table."""
    m = result["metrics"]
    ci = _ci_text
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
    lines += diagnosis_lines(result)
    if len(result.get("sets", {})) > 1:
        lines += sets_table(result)
    return "\n".join(lines)


def screening_point(thresholds: dict) -> tuple[str, dict]:
    """The screening operating point, or the first one a model without it has."""
    from edgeskin.runtime.calibration import DEFAULT_OPERATING_POINT

    name = DEFAULT_OPERATING_POINT if DEFAULT_OPERATING_POINT in thresholds else next(iter(thresholds))
    return name, thresholds[name]


def diagnosis_lines(result: dict) -> list[str]:
    """The diagnosis head's figures on every set that has them, the primary set first."""
    lines = []
    for name, entry in result.get("sets", {}).items():
        dx = entry.get("diagnosis")
        if not dx:
            continue
        lines += [f"  diagnosis head on {name}: {dx['images']} of {entry['metrics']['n']} images have one of its "
                  f"{len(dx['diagnoses'])} diagnoses",
                  f"    balanced accuracy {_ci_text(dx['balanced_accuracy'])}   top-3 accuracy {_ci_text(dx['top3_accuracy'])}"]
        cdx = entry.get("compare", {}).get("diagnosis")
        if cdx:
            lines.append(f"    {entry['compare']['model']['name']}: balanced accuracy {_ci_text(cdx['balanced_accuracy'])}"
                         f"   top-3 accuracy {_ci_text(cdx['top3_accuracy'])}")
        for dname, c in dx["per_class"].items():
            if c["support"] or c["predicted"]:
                lines.append(f"    {dname:<6} n={c['support']:<6} recall {format_value(c['recall'])}   precision {format_value(c['precision'])}")
    return lines


def sets_table(result: dict) -> list[str]:
    """One row a test set (and one for the compared model under it)."""
    lines = [f"  {'by test set':<20}{'images':>7}  {'ROC AUC':<22}{'screen sens':>11}{'spec':>7}{'ECE':>7}"
             f"{'dx bal.acc':>11}{'top-3':>7}"]

    def row(label, m, dx):
        _, pt = screening_point(m["thresholds"])
        balanced, top3 = (format_value(dx["balanced_accuracy"]["value"]), format_value(dx["top3_accuracy"]["value"])) if dx else ("", "")
        return (f"  {label:<20}{m['n']:>7}  {_ci_text(m['roc_auc']):<22}{format_value(pt['sensitivity']['value']):>11}"
                f"{format_value(pt['specificity']['value']):>7}{format_value(m['ece']['value']):>7}{balanced:>11}{top3:>7}")

    for name, entry in result["sets"].items():
        lines.append(row(name, entry["metrics"], entry.get("diagnosis")))
        if "compare" in entry:
            c = entry["compare"]
            lines.append(row(f"  {c['model']['name']}"[:20], c["metrics"], c.get("diagnosis")))
    return lines


def robustness_table(rows: list[dict]) -> str:
    lines = [f"  robustness {'':<12}{'ROC AUC':>8}  {'screening sens':>14}  {'spec':>6}  {'flipped':>8}  {'median |dp|':>11}"]
    for r in rows:
        pt = r["operating_points"].get("screening") or next(iter(r["operating_points"].values()))
        lines.append(f"  {r['name']:<23}{r['roc_auc']['value']:>8.3f}  {pt['sensitivity']:>14.3f}  {pt['specificity']:>6.3f}  "
                     f"{r['screening_flip_rate']:>8.1%}  {r['median_abs_delta']:>11.4f}")
    return "\n".join(lines)
