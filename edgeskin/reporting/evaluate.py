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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeskin.data import sets, splits
from edgeskin.reporting import figures, metrics
from edgeskin.reporting.outputs import report_files, write_predictions
from edgeskin.reporting.scoring import EvaluationError, Scorer, Scores, load_scorer


METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
PREDICTIONS_FILE = "predictions.csv"


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
        kept, dropped = splits.held_out_test(seen)
        desc = {"source": str(Path(source).resolve()), "split": "test", "images": len(ds.test),
                "near_duplicates_left_out": dropped, "evaluated": len(kept), "training_images_checked": bool(trained_on),
                "rule": "test images within the near-duplicate distance of any train or val image are left out"
                        + (", or of any of the model's own training images (its run's splits.csv)" if trained_on else "")}
    else:
        every = ds.train + ds.val
        kept, dropped = splits.held_out_test(sets.Dataset(ds.source, train=tuple(trained_on), test=every))
        desc = {"source": str(Path(source).resolve()), "split": "all", "images": len(every),
                "near_duplicates_left_out": dropped, "evaluated": len(kept), "training_images_checked": bool(trained_on),
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
    label = f"scoring {name} ({len(samples)} images)"
    mine = scorer.scores(samples, _labelled(progress, label), inspect=inspect)
    theirs = other.scores(samples, _labelled(progress, f"{label} with {other.name}")) if other is not None else None
    return _Set(name, samples, desc, mine, theirs)


def _labelled(progress, label: str):
    """progress(items, n, label) as the progress(items, n) the scorers call, so that each bar says what it counts."""
    return (lambda items, n: progress(items, n, label)) if progress else None


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
    label = f"robustness of {scorer.name} ({len(samples)} images, one pass a perturbation)"
    return robustness.measure(lambda t: scorer.score(samples, transform=t, predictor=predictor), y, p, points,
                              n_boot=n_boot, progress=_labelled(progress, label))


def _gate_inspector(scorer: Scorer):
    """For a .tflite with a gate: a score(inspect=...) callback that records each image's reasons, and the record.

    The reasons are exactly what `edgeskin predict` gives: the pixel gate's
    quality checks and, for a model with a usable head, that head's verdict
    (one more invocation per image, on its own interpreter).
    """
    if scorer.kind != "tflite" or not (scorer.info.get("gate") or scorer.info.get("usable")):
        return None, None
    import threading

    from edgeskin.runtime import Classifier

    classifier, lock, found = Classifier(scorer.path), threading.Lock(), {}

    def inspect(sample, size, pixels):
        with lock:  # the decoder calls from a thread pool; one interpreter is not thread-safe
            found[sample.path] = list(classifier.reasons(size, pixels))

    return inspect, found


def _gate_report(found: dict | None, samples, y, p, thresholds: dict, n_boot: int, full: bool = True) -> dict | None:
    """How many images the model's gate set aside, why, and (full) the files and the metrics on the rest."""
    if found is None:
        return None
    from collections import Counter

    reasons = [found[s.path] for s in samples]
    keep = np.array([not r for r in reasons])
    out = {"images": len(samples), "set_aside": int((~keep).sum()), "share_set_aside": float((~keep).mean()),
           "reasons": dict(Counter(r for rs in reasons for r in rs))}
    if full:
        out["set_aside_files"] = [s.path for s, k in zip(samples, keep) if not k]
        if keep.any() and len(set(np.asarray(y)[keep])) == 2:
            out["usable_metrics"] = metrics.report(np.asarray(y)[keep], np.asarray(p)[keep], thresholds, n_boot=n_boot)
    return out


def _add_gate(result: dict, gate: dict | None, found, sets, n_boot: int) -> None:
    """The primary set's full gate report, and every set's share set aside by reason."""
    if gate is None:
        return
    result["gate"] = metrics.json_safe(gate)
    for st in sets:
        result["sets"][st.name]["gate"] = _gate_report(found, st.samples, st.y, None, {}, n_boot, full=False)


def evaluate(model, source, out, threshold: float | None = None, compare=None, n_boot: int = 1000,
             progress=None, run_dir=None, robust: bool = True) -> dict:
    """Score model (and optionally compare) on source and write everything to out.

    source is one data set or a list of them. The first is the primary set:
    metrics, figures, robustness table, gate report and predictions.csv are
    of it. Every set, the primary too, gets a compact report under
    result["sets"][name]. With robust, every perturbation of the robustness
    table costs one more pass over the primary set. metrics.json,
    predictions.csv, figures/ and MODEL_CARD.md are staged and moved into
    out only once all exist: a failure never leaves new figures beside an old card.
    """
    out = Path(out)
    if threshold is not None and not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise EvaluationError(f"threshold must be a number in [0, 1], got {threshold}")
    scorer, other, run, history = _models(model, compare, run_dir := run_dir or default_run(model))
    # Every set is read before any is scored: a bad last set fails in seconds. Only a run named with run_dir (or
    # shipped beside the model): the folder a Keras model sits in may be any folder, its splits not the model's.
    trained_on = _trained_on(Path(run_dir)) if run_dir else ()
    chosen = [(name, *evaluation_set(src, trained_on)) for name, src in named_sources(source)]
    inspect, found = _gate_inspector(scorer)
    sets = [_score_set(scorer, other, *c, progress, inspect) for c in chosen]
    first, thresholds = sets[0], _thresholds(scorer, threshold)
    cmp = _compare(other, first, threshold, n_boot) if other is not None else None
    rows = _robustness(scorer, first.samples, first.y, first.scores.malignant, n_boot, progress) if robust else None
    cmp_rows = _robustness(other, first.samples, first.y, cmp[1], n_boot, progress) if robust and cmp else None
    gate = _gate_report(found, first.samples, first.y, first.scores.malignant, thresholds, n_boot)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".evaluate-") as staging:
        staging = Path(staging)
        m = report_files(first.y, first.scores.malignant, thresholds, staging, scorer.temperature,
                         cmp[:3] if cmp else None, history, n_boot, scorer.name, scorer.platt)
        if rows is not None:
            m["figures"].append(str(figures.robustness(rows, staging / "figures" / "robustness.png").relative_to(staging)))
        result = {**_result(scorer, first.desc, m, cmp, compare, rows, cmp_rows), "bootstrap": n_boot}
        _add_sets(result, sets, scorer, other, m, cmp, threshold, n_boot, staging)
        _add_gate(result, gate, found, sets, n_boot)
        _write_outputs(staging, out, first, result, scorer, _run_records(run))
    return result


def default_run(model) -> Path | None:
    """The run record shipped beside a model file: a training/ folder with its splits.csv, as models/ has.

    Evaluating the shipped model then leaves out its own training images'
    near-duplicates without --run; a model with no such folder is evaluated
    without that check, and the report says so.
    """
    folder = Path(model).parent / "training"
    return folder if Path(model).is_file() and (folder / "splits.csv").is_file() else None


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
