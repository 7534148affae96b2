"""Metadata carried inside a .tflite file, so one file is enough for an app.

A TFLite model is a flatbuffer whose Model table has a `metadata` vector of
(name, buffer) pairs. An exported edgeskin model carries:
  - "TFLITE_METADATA": standard TFLite Model Metadata (schema M001), which
    MediaPipe Tasks, the TFLite Support library and Android Studio read:
    name, version, author, licence, RGB input size, the label file and the
    screening threshold as score thresholding;
  - "edgeskin": edgeskin's own JSON (labels, input, temperature, operating
    points, training summary, checks), for readers with no schema at hand;
  - a zip archive appended to the flatbuffer, as the metadata spec asks,
    holding the associated files labels.txt and edgeskin.json.

Reading is done here with a few lines of `struct`, not the flatbuffers
package, because the runtime may import nothing but numpy, Pillow and the
TFLite interpreter. Writing happens at export time, where TensorFlow's own
generated schema is at hand.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

KEY = "edgeskin"
STANDARD_KEY = "TFLITE_METADATA"
LABEL_FILE = "labels.txt"
DIAGNOSIS_LABEL_FILE = "diagnosis_labels.txt"
PROBABILITIES, DIAGNOSIS = "probabilities", "diagnosis"  # output tensor names, as MediaPipe reports its heads
USABLE = "usable"  # the in-model gate's output: [usable, out_of_domain]
USABLE_LABEL_FILE = "usable_labels.txt"
INFO_FILE = "edgeskin.json"
CALIBRATION_FILE = "score_calibration.txt"
AUTHOR = "edgeskin developers"
LICENSE = ("Code: Apache-2.0. Weights: trained on ISIC Archive images (CC-0, CC-BY and CC-BY-NC); "
           "research and non-commercial use. A screening aid, not a diagnosis.")

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


def validate(info) -> dict:
    """The metadata itself, if it has the shape the runtime relies on; else MetadataError.

    A threshold that is NaN would silently call every image benign, so every
    threshold must be a finite number in [0, 1].
    """
    import math

    if not isinstance(info, dict):
        raise MetadataError("edgeskin metadata is not a JSON object")
    labels = info.get("labels", ["benign", "malignant"])
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise MetadataError("edgeskin metadata: 'labels' must be a list of names")
    points = info.get("operating_points", {})
    if not isinstance(points, dict):
        raise MetadataError("edgeskin metadata: 'operating_points' must be an object")
    for name, point in points.items():
        t = point.get("threshold") if isinstance(point, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise MetadataError(f"edgeskin metadata: operating point {name!r} has no threshold in [0, 1]")
    diagnoses = info.get("diagnoses", [])
    if not (isinstance(diagnoses, list) and all(isinstance(x, str) for x in diagnoses)) or len(diagnoses) == 1:
        raise MetadataError("edgeskin metadata: 'diagnoses' must be a list of at least two names")
    cal = info.get("score_calibration")
    if cal is not None:
        ok = isinstance(cal, dict) and all(
            isinstance(cal.get(k), (int, float)) and not isinstance(cal.get(k), bool) and math.isfinite(cal[k])
            for k in ("slope", "offset"))
        if not ok or cal["slope"] <= 0:
            raise MetadataError("edgeskin metadata: 'score_calibration' needs a finite positive slope and a finite offset")
    default = info.get("default_operating_point", "screening")
    if not isinstance(default, str) or (points and default not in points):
        raise MetadataError("edgeskin metadata: 'default_operating_point' names no operating point")
    _validate_usable(info.get("usable"))
    return info


def _threshold_ok(t) -> bool:
    import math

    return not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t) and 0.0 <= t <= 1.0


def _validate_usable(usable) -> None:
    """The in-model gate's entry: its two labels and a threshold on the out_of_domain probability."""
    if usable is None:
        return
    if not (isinstance(usable, dict) and usable.get("labels") == ["usable", "out_of_domain"]
            and _threshold_ok(usable.get("threshold"))):
        raise MetadataError("edgeskin metadata: 'usable' needs the labels usable, out_of_domain and a threshold in [0, 1]")


def read(model: bytes) -> dict:
    """edgeskin's JSON metadata from a model's bytes; {} when it has none."""
    raw = entries(model).get(KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise MetadataError(f"edgeskin metadata is not valid JSON ({exc})") from exc


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number edgeskin accepts")


def tflite_schema():
    """TFLite's generated flatbuffer classes: LiteRT ships them, so rewriting
    metadata (`edgeskin calibrate`) needs no TensorFlow."""
    from ai_edge_litert import schema_py_generated as schema

    return schema


def embed(model: bytes, extra: dict[str, bytes]) -> bytes:
    """A copy of the model (without any appended zip) with metadata entries added or replaced."""
    import flatbuffers
    import numpy as np

    schema = tflite_schema()

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model), 0))
    replaced = [m for m in (obj.metadata or []) if m.name.decode() in extra]
    obj.metadata = [m for m in (obj.metadata or []) if m.name.decode() not in extra]
    obj.buffers = obj.buffers or []
    # A replaced entry's buffer is emptied rather than removed (removing would
    # renumber every tensor's buffer), so a re-calibrated file does not grow.
    in_use = {m.buffer for m in obj.metadata} | {t.buffer for g in (obj.subgraphs or []) for t in (g.tensors or [])}
    for m in replaced:
        if m.buffer not in in_use and m.buffer < len(obj.buffers):
            obj.buffers[m.buffer] = schema.BufferT()
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


def embed_for_apps(model: bytes, info: dict) -> bytes:
    """The model with standard metadata, edgeskin's JSON and the associated files zip."""
    import io
    import zipfile

    from edgeskin.runtime.standard_metadata import standard_metadata

    text = json.dumps(info, indent=2, sort_keys=True)
    flat = embed(model, {STANDARD_KEY: standard_metadata(info), KEY: text.encode("utf-8")})
    buf = io.BytesIO()
    buf.write(flat)
    # Appending a zip to the flatbuffer is how the metadata spec packs
    # associated files; stored, not deflated, so readers can map them.
    files = {LABEL_FILE: "\n".join(info["labels"]) + "\n"}
    if info.get("diagnoses"):
        files[DIAGNOSIS_LABEL_FILE] = "\n".join(info["diagnoses"]) + "\n"
    if info.get("usable"):
        files[USABLE_LABEL_FILE] = "\n".join(info["usable"]["labels"]) + "\n"
    files[INFO_FILE] = text + "\n"
    if info.get("score_calibration"):
        files[CALIBRATION_FILE] = calibration_lines(info)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, content in files.items():
            # A fixed date: the same model and metadata give the same bytes on every export.
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return buf.getvalue()


def calibration_lines(info: dict) -> str:
    """The TENSOR_AXIS_SCORE_CALIBRATION file: one 'scale,slope,offset' line per label.

    The benign output is 1 - malignant before and after, so its line has the
    same slope and the opposite offset. No trailing newline: MediaPipe reads
    every line, an empty last one included, as one category's parameters.
    """
    cal = info["score_calibration"]
    lines = []
    for label in info["labels"]:
        offset = cal["offset"] if label == "malignant" else -cal["offset"]
        lines.append(f"1.0,{cal['slope']!r},{offset!r}")
    return "\n".join(lines)


def associated_files(model: bytes) -> dict[str, bytes]:
    """The files packed in the zip appended to a model ({} when there is none)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            return {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def write_model_pair(target, model: bytes, info: dict) -> None:
    """Write a .tflite and its .json so that both are complete on disk before either replaces its old version."""
    target = Path(target)
    staged = [(target, model), (target.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())]
    for path, payload in staged:
        path.with_name(path.name + ".tmp").write_bytes(payload)
    for path, _ in staged:
        os.replace(path.with_name(path.name + ".tmp"), path)
