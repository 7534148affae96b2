"""Scoring a model over labelled images: a .tflite through the runtime, as an app runs it, or a Keras model."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskin.runtime import calibration


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
        from edgeskin.training.run import load_model

        net = load_model(self.path)
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
    if source.is_dir() and (source / "config.json").is_file():
        from edgeskin.training.run import load_run

        load_run(source)  # a stopped run is never scored as if it were finished
    keras_path = source if source.is_file() else source / "model.keras"
    if keras_path.suffix != ".keras":
        raise EvaluationError(f"{source}: expected a .tflite or .keras model, or a run folder")
    cal_file = run_dir / "calibration.json"
    cal = json.loads(cal_file.read_text()) if cal_file.is_file() else {}
    points = {k: v["threshold"] for k, v in cal.get("operating_points", {}).items()}
    is_run = (run_dir / "history.csv").is_file()
    return Scorer(keras_path.name, keras_path, "keras", points, cal.get("temperature"), cal, run_dir if is_run else None,
                  diagnoses=tuple(cal.get("diagnoses", ())))
