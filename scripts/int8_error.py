"""Where an int8 export parts from its float model: the error of every block's output, block by block.

Runs the run's Keras model and the exported file (through LiteRT, every tensor
kept) on the same calibration-pool images and prints, for each MobileNetV2
block, the int8 output's RMS error relative to the float output's spread,
and the correlation between the two. Quantization noise that a block adds
and the blocks after it amplify shows as a relative error that grows.

    python scripts/int8_error.py runs/multi-v2-s42 runs/multi-v2-s42/edgeskin_int8.failed.tflite
    python scripts/int8_error.py models/training models/edgeskin_int8.tflite --keras models/edgeskin.keras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The residual adds where a block has one, the projection where it has none, then the backbone's last activation.
ADDS = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)
BLOCKS = ["Conv1_relu", "expanded_conv_project_BN"] + [
    f"block_{k}_{'add' if k in ADDS else 'project_BN'}" for k in range(1, 17)] + ["out_relu"]


def _tensor(details, block: str) -> dict:
    suffix = {"add": "/Add", "BN": "/batchnorm/add_1", "relu": "/Relu6"}[block.rsplit("_", 1)[1]]
    for d in details:
        if len(d["shape"]) == 4 and d["name"].split(";")[0].endswith(f"/{block}_1{suffix}"):
            return d
    raise KeyError(f"no int8 tensor for {block}")


def _int8_outputs(tflite: Path, images: np.ndarray) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # XNNPACK reuses intermediate buffers; the builtin kernels keep every tensor.
    it = Interpreter(str(tflite), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    found = {b: _tensor(it.get_tensor_details(), b) for b in BLOCKS}
    out = {b: [] for b in BLOCKS}
    for image in images:
        it.set_tensor(it.get_input_details()[0]["index"], image[None].astype(np.uint8))
        it.invoke()
        for b, d in found.items():
            scale, zero = d["quantization"]
            out[b].append((it.get_tensor(d["index"]).astype(np.float32) - zero) * scale)
    return {b: np.concatenate(v) for b, v in out.items()}, {b: float(d["quantization"][0]) for b, d in found.items()}


def _float_outputs(serving, images: np.ndarray) -> list[np.ndarray]:
    import keras

    from edgeskin.training.model import backbone_of

    backbone = backbone_of(serving)
    inner = keras.Model(backbone.input, [backbone.get_layer(b).output for b in BLOCKS])
    return inner.predict(serving.get_layer("preprocess").predict(images, verbose=0), verbose=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the run folder (its splits.csv gives the calibration pool)")
    ap.add_argument("tflite", type=Path)
    ap.add_argument("--keras", type=Path, help="the float model [default: RUN/model.keras]")
    ap.add_argument("--images", type=int, default=24)
    args = ap.parse_args()
    from edgeskin.data import sets
    from edgeskin.training import model as model_lib

    serving = model_lib.load(args.keras or args.run / "model.keras")
    val = sets.discover(args.run / "splits.csv").val
    pick = np.random.default_rng(1).permutation(len(val))[: args.images]
    images = sets.load_images([val[i] for i in sorted(pick)], int(serving.input_shape[1]))
    (int8, steps), flt = _int8_outputs(args.tflite, images), _float_outputs(serving, images)
    print(f"{'block output':28s} {'rel. RMS error':>14s} {'correlation':>12s} {'int8 step':>10s}")
    for b, f in zip(BLOCKS, flt):
        q = int8[b]
        rel = float(np.sqrt(((q - f) ** 2).mean()) / f.std())
        print(f"{b:28s} {rel:14.3f} {np.corrcoef(q.ravel(), f.ravel())[0, 1]:12.4f} {steps[b]:10.4f}")


if __name__ == "__main__":
    main()
