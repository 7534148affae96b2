"""Write a copy of a .tflite model whose batch dimension is fixed at 1, without TensorFlow.

LiteRT.js (@litertjs/core) refuses a model whose input batch is open (-1 in
the tensor's shape_signature), which is how a Keras export leaves it. Every
tensor's shape already says 1; only the signature says -1. This rewrites
that one int32 in place, for every tensor whose signature opens the batch,
so the file keeps its length, its metadata and the ZIP of associated files
appended to it, byte for byte.

    .venv/bin/python scripts/web_batch1.py models/edgeskin_int8.tflite /tmp/edgeskin_int8_batch1.tflite
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

# Field numbers in the TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs).
MODEL_SUBGRAPHS = 2
SUBGRAPH_TENSORS = 0
TENSOR_SHAPE, TENSOR_SHAPE_SIGNATURE = 0, 7


def _u32(buf, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _field(buf, table: int, number: int) -> int | None:
    """Where a table's field is stored, or None when the field is absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * number
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _target(buf, table: int, number: int) -> int | None:
    """The table, vector or string a field points to."""
    at = _field(buf, table, number)
    return None if at is None else at + _u32(buf, at)


def _tables(buf, vector: int):
    for i in range(_u32(buf, vector)):
        at = vector + 4 + 4 * i
        yield at + _u32(buf, at)


def _int32s(buf, vector: int) -> tuple[int, list[int]]:
    n = _u32(buf, vector)
    return vector + 4, list(struct.unpack_from(f"<{n}i", buf, vector + 4))


def fix_batch(raw: bytes) -> tuple[bytes, int]:
    """The model with every open batch dimension (signature -1 where the shape says 1) set to 1,
    and how many tensors were changed."""
    if raw[4:8] != b"TFL3":
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    buf = bytearray(raw)
    model = _u32(buf, 0)
    changed = 0
    for subgraph in _tables(buf, _target(buf, model, MODEL_SUBGRAPHS)):
        for tensor in _tables(buf, _target(buf, subgraph, SUBGRAPH_TENSORS)):
            sig_vector = _target(buf, tensor, TENSOR_SHAPE_SIGNATURE)
            shape_vector = _target(buf, tensor, TENSOR_SHAPE)
            if sig_vector is None or shape_vector is None:
                continue
            at, signature = _int32s(buf, sig_vector)
            _, shape = _int32s(buf, shape_vector)
            if signature and shape and signature[0] == -1 and shape[0] == 1:
                struct.pack_into("<i", buf, at, 1)
                changed += 1
    return bytes(buf), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        fixed, changed = fix_batch(args.model.read_bytes())
    except (OSError, ValueError, struct.error) as exc:
        print(f"web_batch1: {args.model}: {exc}", file=sys.stderr)
        return 1
    args.out.write_bytes(fixed)
    print(f"wrote {args.out}: batch fixed at 1 in {changed} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
