"""Metadata carried inside a .tflite file, so one file is enough for an app.

A TFLite model is a flatbuffer whose Model table has a `metadata` vector of
(name, buffer) pairs. edgeskin stores its JSON (labels, input size,
temperature, operating points, version) under the name "edgeskin".

Reading is done here with a few lines of `struct`, not the flatbuffers
package, because the runtime may import nothing but numpy, Pillow and the
TFLite interpreter. Writing happens at export time, where TensorFlow's own
generated schema is at hand.
"""

from __future__ import annotations

import json
import struct

KEY = "edgeskin"

# Field indices in TFLite's schema.fbs.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class MetadataError(ValueError):
    """A model file whose metadata cannot be read."""


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of a table's field, or None when the field is absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return None
    rel = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + rel if rel else None


def _indirect(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _vector(buf: bytes, pos: int) -> tuple[int, int]:
    start = _indirect(buf, pos)
    return start + 4, struct.unpack_from("<I", buf, start)[0]


def entries(model: bytes) -> dict[str, bytes]:
    """Every metadata entry of a .tflite flatbuffer, by name."""
    buf = bytes(model)
    try:
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise MetadataError("not a TFLite model (no TFL3 identifier)")
        root = _indirect(buf, 0)
        meta = _field(buf, root, _MODEL_METADATA)
        buffers = _field(buf, root, _MODEL_BUFFERS)
        if meta is None or buffers is None:
            return {}
        buffers_start, n_buffers = _vector(buf, buffers)
        start, n = _vector(buf, meta)
        out = {}
        for i in range(n):
            entry = _indirect(buf, start + 4 * i)
            name_pos, index_pos = _field(buf, entry, _METADATA_NAME), _field(buf, entry, _METADATA_BUFFER)
            if name_pos is None or index_pos is None:
                continue
            name_start, name_len = _vector(buf, name_pos)
            name = buf[name_start : name_start + name_len].decode("utf-8")
            index = struct.unpack_from("<I", buf, index_pos)[0]
            if index >= n_buffers:
                raise MetadataError(f"metadata {name!r} points past the buffer table")
            out[name] = _buffer_bytes(buf, _indirect(buf, buffers_start + 4 * index))
        return out
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise MetadataError(f"corrupt TFLite flatbuffer ({exc})") from exc


def _buffer_bytes(buf: bytes, table: int) -> bytes:
    data = _field(buf, table, _BUFFER_DATA)
    if data is not None:
        start, n = _vector(buf, data)
        return buf[start : start + n]
    # Models over 2 GB keep buffers after the flatbuffer, addressed by offset.
    off, size = _field(buf, table, _BUFFER_OFFSET), _field(buf, table, _BUFFER_SIZE)
    if off is not None and size is not None:
        o, s = struct.unpack_from("<Q", buf, off)[0], struct.unpack_from("<Q", buf, size)[0]
        return buf[o : o + s]
    return b""


def read(model: bytes) -> dict:
    """edgeskin's JSON metadata from a model's bytes; {} when it has none."""
    raw = entries(model).get(KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"edgeskin metadata is not valid JSON ({exc})") from exc


def embed(model: bytes, extra: dict[str, bytes]) -> bytes:
    """A copy of the model with metadata entries added or replaced (needs TensorFlow)."""
    import flatbuffers
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model), 0))
    obj.metadata = [m for m in (obj.metadata or []) if m.name.decode() not in extra]
    obj.buffers = obj.buffers or []
    for name, payload in extra.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, dtype=np.uint8)
        obj.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(obj.buffers) - 1
        obj.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def embed_json(model: bytes, info: dict) -> bytes:
    return embed(model, {KEY: json.dumps(info, sort_keys=True).encode("utf-8")})
