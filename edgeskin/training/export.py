"""Export a calibrated run to TFLite, checked against the float model.

The int8 file is what ships, so its operating points are re-derived from the
int8 model's own outputs on the calibration split: quantization moves scores
by a step or two, and a threshold chosen on float scores could silently lose
the sensitivity it was chosen for.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeskin import __version__
from edgeskin.runtime import calibration
from edgeskin.data import sets
from edgeskin.runtime import metadata
from edgeskin.training import model as model_lib
from edgeskin.training import domain as domain_lib
from edgeskin.training import run as run_lib
from edgeskin.training.arrays import calibration_pool
from edgeskin.training.report import diagnosis_prior_weight, diagnosis_report
from edgeskin.runtime import Classifier


@dataclass(frozen=True)
class ExportOptions:
    quantization: str = "int8"  # "int8", "float16" or "float32"
    representative_images: int = 300  # drawn from the training split
    max_auc_drop: float = 0.01  # int8 may lose at most this much AUC on the calibration split
    # The exported diagnosis head must name the float model's top diagnosis on
    # at least this share of the calibration pool.
    min_diagnosis_agreement: float = 0.9
    seed: int = 0
    # Fit a Platt map on the exported model's own outputs and carry it as
    # standard score-calibration metadata (see calibration.Platt).
    platt: bool = True
    # Add the in-model gate, a third output "usable" (training/domain.py).
    usable_head: bool = True

    def __post_init__(self):
        if self.quantization not in ("int8", "float16", "float32"):
            raise ValueError(f"quantization must be int8, float16 or float32; got {self.quantization!r}")
        if self.representative_images < 1:
            raise ValueError("representative_images must be at least 1")
        if not 0.0 <= self.max_auc_drop <= 1.0:
            raise ValueError("max_auc_drop must lie in [0, 1]")
        if not 0.0 <= self.min_diagnosis_agreement <= 1.0:
            raise ValueError("min_diagnosis_agreement must lie in [0, 1]")

    @classmethod
    def for_int8(cls, **overrides) -> "ExportOptions":
        """Full-integer: uint8 raw-pixel input, int8 weights and activations, uint8 output."""
        return replace(cls(quantization="int8"), **overrides)

    @classmethod
    def for_float16(cls, **overrides) -> "ExportOptions":
        return replace(cls(quantization="float16"), **overrides)

    @classmethod
    def for_float32(cls, **overrides) -> "ExportOptions":
        return replace(cls(quantization="float32"), **overrides)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    info: dict
    float_auc: float
    auc: float
    agreement: float  # share of calibration images where float and exported decisions agree
    passed: bool
    size_bytes: int

    def failure(self, options: "ExportOptions") -> str:
        """Which check the export failed, in words."""
        if self.auc < self.float_auc - options.max_auc_drop:
            return f"AUC fell more than {options.max_auc_drop} below the float model's"
        return f"diagnosis head agreed with the float model's on less than {options.min_diagnosis_agreement:.0%} of images"


class ExportError(ValueError):
    """An export that failed its check or could not run."""


def _run_parts(source: Path):
    """The serving model, the run's files and its splits, from a run folder (or a model inside one)."""
    run_dir = source if source.is_dir() else source.parent
    run = run_lib.load_run(run_dir)
    keras_path = source if source.is_file() else run_dir / "model.keras"
    splits = sets.discover(run_dir / "splits.csv")
    # Runs saved before the diagnosis logits were centred get it here; the probabilities are unchanged.
    return model_lib.centre_diagnosis_logits(model_lib.load(keras_path)), run, splits


def _outputs_in_model_order(tflite: bytes) -> bytes:
    """The file's outputs listed as the Keras model lists them: probabilities, diagnosis, usable.

    The converter lists outputs in no promised order (it put the diagnosis
    first); MediaPipe and most apps read head 0 as the model's answer, so the
    decision must be output 0. The signature still names each output
    (output_0, output_1, ...) in the model's order, so the subgraph's list of
    output tensors is sorted by those names; nothing else changes.
    """
    import flatbuffers

    schema = metadata.tflite_schema()
    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite), 0))
    graph = obj.subgraphs[0]
    if len(graph.outputs) < 2:
        return tflite
    names = {t.tensorIndex: t.name.decode() for t in obj.signatureDefs[0].outputs}
    graph.outputs = sorted(graph.outputs, key=lambda i: int(names[i].rsplit("_", 1)[1]))
    builder = flatbuffers.Builder(len(tflite) + 4096)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _convert(serving, options: ExportOptions, representative: np.ndarray) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel: converting concrete functions directly gave
        # broken int8 models with this TensorFlow.
        # A batch of exactly one: strict clients (LiteRT.js) refuse an open batch dimension.
        signature = [tf.TensorSpec([1, *serving.input_shape[1:]], tf.float32, name="image")]
        serving.export(tmp, format="tf_saved_model", verbose=False, input_signature=signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if options.quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

            def samples():
                for image in representative:
                    yield [image[None].astype(np.float32)]

            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # uint8 in, so an app hands over camera pixels untouched; uint8
            # out, a probability in steps of 1/256.
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        elif options.quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        from edgeskin.runtime.classifier import quiet_native_stderr

        with quiet_native_stderr():  # the converter's own C++ lines (fully_quantize: 0, ...)
            return converter.convert()


def build_info(run: dict, options: ExportOptions, image_size: int, points, checks: dict, platt=None,
               output_tensors=(metadata.PROBABILITIES,)) -> dict:
    """The JSON an app needs, embedded in the model and written beside it."""
    config, cal = run["config"], run["calibration"]
    diagnoses = cal.get("diagnoses", [])
    return {
        "name": "edgeskin",
        "version": __version__,
        "description": "Benign / malignant classifier for dermoscopic images. A screening aid, not a diagnosis.",
        "labels": list(sets.LABELS),
        "input": {"size": image_size, "channels": "RGB", "dtype": "uint8" if options.quantization == "int8" else "float32",
                  "range": [0, 255], "resize": "centre-crop to square, then bilinear resize"},
        "output": "probabilities for [benign, malignant]; apply score_calibration (Platt, on the inverse logistic)"
                  if platt else "probabilities for [benign, malignant], temperature-calibrated",
        **({"diagnoses": list(diagnoses),
            "diagnosis_output": f"probabilities of the diagnoses {', '.join(diagnoses)} (softmax, not calibrated); "
                                "an aid to reading the case, never the decision"} if diagnoses else {}),
        "output_tensors": list(output_tensors),
        "quantization": options.quantization,
        "temperature": cal["temperature"],
        **({"score_calibration": {**platt.to_dict(), "fitted_on": cal.get("chosen_on", "validation split")}}
           if platt else {}),
        "operating_points": {k: v.to_dict() for k, v in points.items()},
        "default_operating_point": calibration.DEFAULT_OPERATING_POINT,
        "operating_points_chosen_on": cal.get("chosen_on", "validation split"),
        "training": {"data": " + ".join(Path(d).name for d in config["data"].split(" + ")), "counts": config["counts"],
                     "sources": config.get("sources"), "notes": config.get("notes", []),
                     "seed": config["options"]["seed"],
                     "split_seed": config["options"].get("split_seed"), "command": config.get("command"),
                     "seconds": config.get("seconds"),
                     "options": {"model": config["options"]["model"], "fine_tune_from": config["options"]["fine_tune_from"]}},
        "checks": checks,
        "created": time.strftime("%Y-%m-%d"),
    }


def _calibration_data(splits, run: dict, size: int):
    """The images the operating points are chosen on: the same calibration
    pool that training used (older runs, without one, the plain split)."""
    qualities = run["calibration"].get("calibration_qualities", [])
    if qualities:
        return calibration_pool(splits.val, size, tuple(qualities))
    return sets.load_images(splits.val, size), np.array([s.label for s in splits.val])


def _raw_scores(tflite: bytes, x: np.ndarray, names: list[str], diagnoses) -> dict:
    """The new file's own outputs, through the very runtime an app would use: "malignant" (raw
    scores), and "diagnosis" and "out_of_domain" (probabilities) where the file has those heads."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.tflite"
        probe.write_bytes(metadata.embed_json(tflite, {"labels": list(sets.LABELS), "diagnoses": list(diagnoses),
                                                       "output_tensors": names}))
        classifier = Classifier(probe, num_threads=os.cpu_count())
        heads = [classifier.raw_heads(v) for v in x]
    return {key: np.array([h[key] for h in heads]) for key in heads[0] if heads[0][key] is not None}


def _check(p_float, p_raw, y, options: ExportOptions):
    """Compare with the float model; fit the Platt map and the operating points on the exported outputs."""
    from sklearn.metrics import roc_auc_score

    platt = calibration.fit_platt(p_raw, y) if options.platt else None
    p_new = platt.apply(p_raw) if platt else p_raw
    float_auc, auc = float(roc_auc_score(y, p_float)), float(roc_auc_score(y, p_new))
    float_points = calibration.choose_operating_points(p_float, y)
    points = calibration.choose_operating_points(p_new, y)
    d = calibration.DEFAULT_OPERATING_POINT
    agreement = float(np.mean((p_float >= float_points[d].threshold) == (p_new >= points[d].threshold)))
    checks = {"calibration_images": len(y), "float_auc": float_auc, "auc": auc,
              f"{d}_decision_agreement": agreement, "max_auc_drop": options.max_auc_drop,
              "passed": auc >= float_auc - options.max_auc_drop,
              "ece_before_platt": calibration.expected_calibration_error(p_raw, y),
              "ece_after_platt": calibration.expected_calibration_error(p_new, y)}
    return checks, points, platt


def _pool_dx_index(splits, run: dict, diagnoses) -> np.ndarray:
    """The diagnosis index of every calibration pool image (-1 where it has none)."""
    copies = max(1, len(run["calibration"].get("calibration_qualities", [])))
    return np.array([diagnoses.index(s.dx) if s.dx in diagnoses else -1 for s in splits.val] * copies)


def _diagnosis_prior(serving, outputs, splits, run: dict, diagnoses, log):
    """Fold the training prior's chosen weight into the diagnosis logits (report.diagnosis_prior_weight)."""
    counts = np.array([sum(1 for s in splits.train if s.dx == d) for d in diagnoses], dtype=np.float64)
    log_prior = np.where(counts > 0, np.log(np.maximum(counts / max(counts.sum(), 1.0), 1e-12)), 0.0)
    a, fit = diagnosis_prior_weight(outputs[1], _pool_dx_index(splits, run, diagnoses), log_prior)
    log(f"diagnosis head: {a:.2f} x log(training prior) added to its logits (calibration pool balanced accuracy "
        f"{fit['balanced_accuracy_without']:.3f} -> {fit['balanced_accuracy']:.3f})")
    if a:
        model_lib.shift_diagnosis_logits(serving, (a * log_prior).astype("float32"))
        z = np.log(np.clip(outputs[1], 1e-12, None)) + a * log_prior
        e = np.exp(z - z.max(axis=1, keepdims=True))
        outputs = [outputs[0], e / e.sum(axis=1, keepdims=True)]
    return outputs, {**fit, "log_prior": [float(v) for v in log_prior]}


def _diagnosis_checks(dx_float, dx_new, splits, run: dict, diagnoses, checks: dict, options: ExportOptions) -> dict:
    """How often the exported diagnosis head names the float model's top diagnosis (the export fails below
    options.min_diagnosis_agreement), and its balanced accuracy on the pool's images that have a diagnosis."""
    report = diagnosis_report(dx_new, _pool_dx_index(splits, run, diagnoses))
    agreement = float(np.mean(np.argmax(dx_float, 1) == np.argmax(dx_new, 1)))
    return {"diagnosis_top1_agreement": agreement, "min_diagnosis_agreement": options.min_diagnosis_agreement,
            "passed": checks["passed"] and agreement >= options.min_diagnosis_agreement,
            "diagnosis_balanced_accuracy": report["balanced_accuracy"], "diagnosis_top3_accuracy": report["top3_accuracy"]}


def _gate(source: Path, splits, size: int, log) -> dict:
    """The run's input-quality and domain gate: saved by train, or fitted here the same way for older runs."""
    from edgeskin.training import gate as gate_fit

    run_dir = source if source.is_dir() else source.parent
    saved = run_dir / run_lib.GATE_FILE
    if saved.is_file():
        return json.loads(saved.read_text())
    log("fitting the input gate on the run's splits (the run predates it)")
    gate, rates = gate_fit.fit_on_splits(splits.train, splits.val, size)
    return {**gate.to_dict(), "checks": {**rates, "fitted": "at export, from the run's splits.csv"}}


class _UsableHead:
    """The in-model gate through an export: its head, the model it is attached to, and the file's own limit."""

    # The pool's least usable images join the converter's representative set:
    # with in-domain images alone the score's int8 range ended near the limit,
    # and the out_of_domain probability could not rise far past 0.5 (0.805 was
    # the ceiling of an earlier export), whatever the image.
    RANGE_SHARE = 0.03

    def __init__(self, head, base, fitted: str):
        self.head, self.base, self.fitted, self.float_threshold = head, base, fitted, head.threshold
        self.attached, self.pass_rate_before = domain_lib.attach(base, head), None

    @classmethod
    def of(cls, source: Path, serving, splits, x_pool, log) -> "_UsableHead":
        """The run's head: saved by train, or fitted here the same way for older runs."""
        saved = (source if source.is_dir() else source.parent) / domain_lib.DOMAIN_FILE
        if saved.is_file():
            return cls(domain_lib.DomainHead.load(saved), serving, "at training time")
        log("fitting the in-model gate on the run's training images (the run predates it)")
        return cls(domain_lib.fit_on_images(serving, splits.train, x_pool)[0], serving, "at export, from the run's splits.csv")

    def range_images(self, x_pool, options: ExportOptions) -> np.ndarray:
        p = self.attached.predict(x_pool, batch_size=64, verbose=0)[-1][:, 1]
        count = max(1, int(round(self.RANGE_SHARE * options.representative_images)))
        return x_pool[np.sort(domain_lib.farthest(p, count))]

    def settle_on_file(self, tflite: bytes, heads: dict, convert, score, log, rounds: int = 2):
        """Move the graph's limit until the file itself lets DOMAIN_PASS of the pool through (domain.threshold_for_file)."""
        for _ in range(rounds):
            before = float(np.mean(heads["out_of_domain"] < 0.5))
            self.pass_rate_before = before if self.pass_rate_before is None else self.pass_rate_before
            moved = domain_lib.threshold_for_file(self.head, heads["out_of_domain"])
            if moved is None:
                break
            log(f"usable head: the file lets {before:.1%} of the pool through; its limit moves "
                f"{self.head.threshold:.4g} -> {moved.threshold:.4g}")
            self.head, self.attached = moved, domain_lib.attach(self.base, moved)
            tflite = convert(self.attached)
            heads = score(tflite)
        return tflite, heads


def _usable_entry(p_ood: np.ndarray, qualities, usable: _UsableHead) -> dict:
    """The usable head's metadata: its threshold on the out_of_domain probability, and its pass rates.

    The threshold stays 0.5, where the graph puts the limit, so a client that
    takes the larger of the two scores (MediaPipe) reads the same verdict.
    """
    passed = p_ood < 0.5
    blocks = np.array_split(passed, max(1, len(qualities)))
    per_quality = {f"q{q}": float(b.mean()) for q, b in zip(qualities, blocks)} if qualities else {}
    checks = {"calibration_pass_rate": float(passed.mean()), "calibration_pass_rate_by_quality": per_quality,
              "out_of_domain_ceiling": float(p_ood.max()), "calibration_images": int(len(p_ood)),
              "fitted": usable.fitted, "float_score_limit": usable.float_threshold, "score_limit": usable.head.threshold,
              "pass_rate_at_float_limit": usable.pass_rate_before if usable.pass_rate_before is not None
              else float(passed.mean())}
    return {"labels": list(domain_lib.USABLE_LABELS), "threshold": 0.5, "checks": checks}


def _representative(splits, size: int, options: ExportOptions) -> np.ndarray:
    """The images the converter calibrates its int8 ranges on: a seeded draw from the training split
    (with the usable head, a few of the pool's least usable images join them: _UsableHead.range_images)."""
    pick = np.random.default_rng(options.seed).permutation(len(splits.train))[: options.representative_images]
    return sets.load_images([splits.train[i] for i in sorted(pick)], size)


def export(source, out, options: ExportOptions = ExportOptions(), log=print) -> ExportResult:
    """Convert a run's calibrated model to out (.tflite) and check it on the calibration split."""
    source, out = Path(source), Path(out)
    if out.suffix != ".tflite":
        raise ExportError(f"{out}: the output file must end in .tflite")
    out.parent.mkdir(parents=True, exist_ok=True)
    serving, run, splits = _run_parts(source)
    size = int(serving.input_shape[1])
    representative = _representative(splits, size, options)
    x_val, y_val = _calibration_data(splits, run, size)
    diagnoses = run["calibration"].get("diagnoses", [])
    names = [metadata.PROBABILITIES] + ([metadata.DIAGNOSIS] if diagnoses else [])
    outputs, prior = serving.predict(x_val, batch_size=64, verbose=0), None
    if diagnoses:
        outputs, prior = _diagnosis_prior(serving, outputs, splits, run, diagnoses, log)
    usable = _UsableHead.of(source, serving, splits, x_val, log) if options.usable_head else None
    if usable:
        serving, names = usable.attached, names + [metadata.USABLE]
        representative = np.concatenate([representative, usable.range_images(x_val, options)])
    log(f"converting to {options.quantization} ({len(representative)} representative images)")
    tflite = _outputs_in_model_order(_convert(serving, options, representative))
    p_float = np.asarray(outputs[0] if isinstance(outputs, list) else outputs)[:, 1].astype(np.float64)
    heads = _raw_scores(tflite, x_val, names, diagnoses)
    if usable and options.quantization == "int8":
        tflite, heads = usable.settle_on_file(tflite, heads, lambda m: _outputs_in_model_order(
            _convert(m, options, representative)), lambda t: _raw_scores(t, x_val, names, diagnoses), log)
    checks, points, platt = _check(p_float, heads["malignant"], y_val, options)
    if "diagnosis" in heads:
        checks.update(_diagnosis_checks(outputs[1], heads["diagnosis"], splits, run, diagnoses, checks, options),
                      diagnosis_prior_weight=prior)
    info = {**build_info(run, options, size, points, checks, platt, names), "gate": _gate(source, splits, size, log)}
    if "out_of_domain" in heads:
        qualities = run["calibration"].get("calibration_qualities", [])
        info["usable"] = _usable_entry(heads["out_of_domain"], qualities, usable)
    final = metadata.embed_for_apps(tflite, info)
    # A failed model never replaces a good one: it is kept aside instead.
    target = out if checks["passed"] else out.with_name(out.stem + ".failed.tflite")
    metadata.write_model_pair(target, final, info)
    return ExportResult(target, info, checks["float_auc"], checks["auc"],
                        checks[f"{calibration.DEFAULT_OPERATING_POINT}_decision_agreement"], checks["passed"], len(final))
