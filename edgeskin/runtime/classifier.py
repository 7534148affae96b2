"""The on-device runtime: a .tflite model, an image, a malignant probability.

This module is what a phone or an edge box runs, so it imports only numpy,
Pillow and a TFLite interpreter: ai_edge_litert, or the abandoned
tflite_runtime where only that is installed; never TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from edgeskin.runtime import calibration, metadata
from edgeskin.runtime import gate as gate_lib
from edgeskin.runtime.imageio import ImageError, open_rgb, to_model_input
from edgeskin.runtime.prediction import BENIGN, MALIGNANT, Failure, Prediction, as_rgb, decode_ahead

DEFAULT_MODEL_NAME = "edgeskin_int8.tflite"
TOP_DIAGNOSES = 3  # how many diagnoses predict --diagnosis lists


class RuntimeModelError(ValueError):
    """A model file the runtime cannot use."""


def _interpreter_class():
    """LiteRT's interpreter, or the abandoned tflite-runtime's where only that is installed; never TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeModelError("no TFLite interpreter installed: pip install ai-edge-litert") from exc
    return Interpreter


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what native code writes to stderr meanwhile (LiteRT's "INFO: Created TensorFlow Lite
    XNNPACK delegate" on every start). EDGESKIN_VERBOSE=1 (`edgeskin --verbose`) keeps it; Python's
    own errors are exceptions, not stderr, so none is lost."""
    if os.environ.get("EDGESKIN_VERBOSE"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr to hide
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def default_model(name: str = DEFAULT_MODEL_NAME) -> Path:
    """A shipped model file: installed beside the package, or in the checkout's models/."""
    package = Path(__file__).resolve().parent.parent  # edgeskin/
    for folder in (package / "models", package.parent / "models"):
        if (folder / name).is_file():
            return folder / name
    raise RuntimeModelError(f"no shipped model {name} found; pass --model FILE")


def _score_calibration(info: dict, path) -> "calibration.Platt | None":
    """The Platt map the metadata carries, applied exactly as MediaPipe applies it."""
    spec = info.get("score_calibration")
    if not spec:
        return None
    try:
        return calibration.Platt(float(spec["slope"]), float(spec["offset"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeModelError(f"{path}: unusable score calibration in its metadata ({exc})") from exc


class Classifier:
    """A .tflite benign / malignant model and what its metadata says about it."""

    def __init__(self, path=None, num_threads: int | None = None):
        path = Path(path) if path is not None else default_model()
        if not path.is_file():
            raise RuntimeModelError(f"{path}: no such model file")
        raw = path.read_bytes()
        try:
            self.info = metadata.validate(metadata.read(raw))
        except metadata.MetadataError as exc:
            raise RuntimeModelError(f"{path}: {exc}") from exc
        try:
            self._interpreter = _interpreter_class()(model_content=raw, num_threads=num_threads or 1)
            with quiet_native_stderr():
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeModelError(f"{path}: not a usable TFLite model ({str(exc).splitlines()[0]})") from exc
        self.path = path
        self._input = self._interpreter.get_input_details()[0]
        shape = self._input["shape"]
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise RuntimeModelError(f"{path}: expected a square RGB image input, got shape {list(shape)}")
        self.image_size = int(shape[1])
        self.labels = list(self.info.get("labels", [BENIGN, MALIGNANT]))
        self.diagnoses = tuple(self.info.get("diagnoses", ()))
        heads = self._outputs(path)
        self._output, self._diagnosis, self._usable = (heads.get(k) for k in (metadata.PROBABILITIES, metadata.DIAGNOSIS,
                                                                              metadata.USABLE))
        self._names = {o["index"]: name for name, o in heads.items()}
        # The in-model gate's threshold on its out_of_domain probability (calibrate --refit-gate moves it).
        self.usable_threshold = float(self.info.get("usable", {}).get("threshold", 0.5))
        n_out = int(np.prod(self._output["shape"]))
        if n_out not in (1, len(self.labels)) or (n_out > 1 and MALIGNANT not in self.labels):
            raise RuntimeModelError(f"{path}: output of {n_out} values does not match labels {self.labels}")
        self._malignant = self.labels.index(MALIGNANT) if n_out > 1 else 0
        self.score_calibration = _score_calibration(self.info, path)
        try:
            self.gate = gate_lib.Gate.from_dict(self.info["gate"]) if self.info.get("gate") else None
        except ValueError as exc:
            raise RuntimeModelError(f"{path}: {exc}") from exc

    def _outputs(self, path) -> dict:
        """The output tensors by head name: probabilities, and diagnosis and usable where the model has them.

        A file that lists its heads (output_tensors, in the file's order, as
        edgeskin's export writes them) is read by position; an older one by
        size, since converters order a model's outputs as they please.
        """
        outputs = self._interpreter.get_output_details()
        listed = self.info.get("output_tensors")
        if listed and len(listed) == len(outputs):
            return dict(zip(listed, outputs))
        if len(outputs) == 1 and not self.diagnoses:
            return {metadata.PROBABILITIES: outputs[0]}
        sizes = [int(np.prod(o["shape"])) for o in outputs]
        wanted = [len(self.labels), len(self.diagnoses)]
        if len(outputs) != 2 or sorted(sizes) != sorted(wanted) or wanted[0] == wanted[1]:
            raise RuntimeModelError(f"{path}: outputs of {sizes} values do not match labels {self.labels} "
                                    f"and diagnoses {list(self.diagnoses)}")
        first = sizes.index(wanted[0])
        return {metadata.PROBABILITIES: outputs[first], metadata.DIAGNOSIS: outputs[1 - first]}

    def output_names(self) -> list[str]:
        """The model's output tensors in the file's order, by the names the metadata gives them."""
        return [self._names[o["index"]] for o in self._interpreter.get_output_details()]

    @property
    def has_usable_head(self) -> bool:
        return self._usable is not None

    # Thresholds -----------------------------------------------------------
    @property
    def operating_points(self) -> dict[str, float]:
        return {k: float(v["threshold"]) for k, v in self.info.get("operating_points", {}).items()}

    def threshold(self, threshold: float | None = None, operating_point: str | None = None) -> float:
        """The threshold to apply: an explicit value, a named operating point, or the default one."""
        if threshold is not None and operating_point is not None:
            raise ValueError("give a threshold or an operating point, not both")
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
            return float(threshold)
        points = self.operating_points
        name = operating_point or self.info.get("default_operating_point", "screening")
        if name not in points:
            if operating_point is None and not points:
                return 0.5  # a model without metadata: the uncalibrated midpoint
            known = ", ".join(points) or "none"
            raise ValueError(f"model has no operating point {name!r} (it has: {known})")
        return points[name]

    # Inference ------------------------------------------------------------
    def classify(self, image, threshold: float | None = None, operating_point: str | None = None,
                 gate: bool = True) -> Prediction:
        """One image in (a path, a PIL image, or an RGB uint8 array of any size), a Prediction out.

        The image is prepared exactly as `edgeskin predict` prepares a file;
        the threshold defaults to the model's screening operating point, and
        a model with a diagnosis head adds its most probable diagnoses.

        Example:
            >>> import edgeskin
            >>> result = edgeskin.Classifier().classify("data/samples/malignant_1.jpg")
            >>> result.label, result.usable
            ('malignant', True)
        """
        if isinstance(image, (str, os.PathLike)):
            name, im = str(image), open_rgb(image)
        else:
            name, im = "<image>", as_rgb(image)
        pixels = to_model_input(im, self.image_size)
        p, dx, reasons = self.judge(im.size, pixels, gate=gate)
        top = (() if reasons else self.top_diagnoses(dx)) if dx is not None else None
        return Prediction(name, p, self.threshold(threshold, operating_point), reasons, top)

    def malignant_probability(self, pixels: np.ndarray, tta: bool = False) -> float:
        """One (size, size, 3) uint8 image in, the malignant probability out.

        With tta, the mean over the image and its three flips (left-right,
        up-down, both): a dermoscopic lesion has no 'up', so each is an
        equally valid view, and averaging smooths out orientation noise at
        four times the cost.
        """
        return self.scores(pixels, tta)[0]

    def scores(self, pixels: np.ndarray, tta: bool = False) -> tuple[float, np.ndarray | None]:
        """The malignant probability and the diagnosis probabilities (None
        without a diagnosis head), both from the same invocations."""
        return self._heads(pixels, tta)[:2]

    def judge(self, original_size: tuple[int, int], pixels: np.ndarray, tta: bool = False, gate: bool = True):
        """(malignant probability, diagnosis probabilities or None, reasons it cannot judge the image), one pass."""
        p, dx, ood = self._heads(pixels, tta)
        return p, dx, (self._reasons(original_size, pixels, ood) if gate else ())

    def _heads(self, pixels: np.ndarray, tta: bool):
        """Every head from the same invocations; the usable head from the image as it is (flips add nothing there)."""
        views = (pixels, pixels[:, ::-1], pixels[::-1], pixels[::-1, ::-1]) if tta else (pixels,)
        malignant, diagnosis, ood = [], [], None
        for view in views:
            self._run(view)
            raw = float(self._read(self._output)[self._malignant])
            malignant.append(float(self.score_calibration.apply(raw)) if self.score_calibration else raw)
            if self._diagnosis is not None:
                diagnosis.append(self._read(self._diagnosis))
            if self._usable is not None and ood is None:
                ood = float(self._read(self._usable)[1])
        if not diagnosis:
            return float(np.mean(malignant)), None, ood
        p = np.mean(diagnosis, axis=0)
        # int8 steps can leave the sum a step or two away from 1.
        return float(np.mean(malignant)), p / p.sum() if p.sum() > 0 else p, ood

    def top_diagnoses(self, probabilities: np.ndarray, k: int = TOP_DIAGNOSES) -> tuple[tuple[str, float], ...]:
        """The k most probable diagnoses as (dx, probability), most probable first."""
        order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
        return tuple((self.diagnoses[i], float(probabilities[i])) for i in order)

    def _run(self, pixels: np.ndarray) -> None:
        x = pixels[None].astype(np.float32)
        dtype = self._input["dtype"]
        scale, zero = self._input["quantization"]
        if dtype in (np.uint8, np.int8):
            if scale and (scale, zero) != (1.0, 0):
                x = np.round(x / scale + zero)
            info = np.iinfo(dtype)
            x = np.clip(x, info.min, info.max).astype(dtype)
        else:
            x = x.astype(dtype)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()

    def _read(self, output) -> np.ndarray:
        y = self._interpreter.get_tensor(output["index"]).reshape(-1).astype(np.float64)
        scale, zero = output["quantization"]
        if output["dtype"] in (np.uint8, np.int8) and scale:
            y = (y - zero) * scale
        return np.clip(y, 0.0, 1.0)

    def raw_score(self, pixels: np.ndarray) -> float:
        """The model's own malignant output, before the score calibration in its metadata."""
        return self.raw_outputs(pixels)[0]

    def raw_outputs(self, pixels: np.ndarray) -> tuple[float, np.ndarray | None]:
        """The raw malignant output and the diagnosis output (None without that head) of one invocation."""
        heads = self.raw_heads(pixels)
        return heads["malignant"], heads["diagnosis"]

    def raw_heads(self, pixels: np.ndarray) -> dict:
        """One invocation's raw malignant score (before the score calibration), diagnosis probabilities
        and out_of_domain probability; None for a head the model does not have."""
        self._run(pixels)
        read = {"diagnosis": self._diagnosis, "out_of_domain": self._usable}
        out = {k: (self._read(o) if o is not None else None) for k, o in read.items()}
        if out["out_of_domain"] is not None:
            out["out_of_domain"] = float(out["out_of_domain"][1])
        return {"malignant": float(self._read(self._output)[self._malignant]), **out}

    def reasons(self, original_size: tuple[int, int], pixels: np.ndarray) -> tuple[str, ...]:
        """Why this image cannot be judged; () when it can, or when the model has no gate."""
        return self._reasons(original_size, pixels, self.raw_heads(pixels)["out_of_domain"] if self._usable else None)

    def _reasons(self, original_size, pixels, out_of_domain: float | None) -> tuple[str, ...]:
        """The pixel gate's quality checks, and out_of_domain from the model's own usable head when it has
        one (else from the pixel gate's colour-and-texture distance, as older models do)."""
        reasons = self.gate.reasons(original_size, pixels, domain=out_of_domain is None) if self.gate else []
        if (out_of_domain is not None and out_of_domain >= self.usable_threshold and "too_small" not in reasons
                and gate_lib.OUT_OF_DOMAIN not in reasons):
            reasons = [*reasons, gate_lib.OUT_OF_DOMAIN]
        return tuple(reasons)

    def predict(self, paths, threshold: float, workers: int | None = None, tta: bool = False, gate: bool = True,
                diagnosis: bool = False):
        """Yield a Prediction or a Failure per path, in order.

        Images are decoded in a thread pool while the interpreter runs, so a
        folder keeps both cores busy; one bad file never stops the others.
        With gate, an image the model cannot judge still gets its
        malignant_probability, but its label is "unusable" and its reasons say why.
        With diagnosis, each Prediction carries the top diagnoses too.
        """
        if diagnosis and self._diagnosis is None:
            raise RuntimeModelError(f"{self.path}: this model has no diagnosis head (it was trained without diagnoses)")
        paths = [str(p) for p in paths]

        for path, decoded in decode_ahead(paths, self.image_size, workers or min(4, os.cpu_count() or 1)):
            if isinstance(decoded, ImageError):
                yield Failure(path, str(decoded))
                continue
            size, pixels = decoded
            p, dx, reasons = self.judge(size, pixels, tta, gate)
            # No diagnosis for an image the model cannot judge: the key stays, empty.
            top = (() if reasons else self.top_diagnoses(dx)) if diagnosis else None
            yield Prediction(path, p, threshold, reasons, top)
