import pytest

from edgeskin import metadata


@pytest.mark.slow
def test_embedded_json_reads_back_without_flatbuffers(tiny_run):
    raw = tiny_run["tflite"].read_bytes()
    info = metadata.read(raw)
    assert info["labels"] == ["benign", "malignant"]
    assert info["input"]["size"] == 64
    assert set(info["operating_points"]) == {"screening", "balanced", "specific"}
    assert info["temperature"] > 0 and info["version"]
    # Re-embedding replaces the entry rather than adding a second one.
    again = metadata.embed_json(raw, {**info, "version": "9.9"})
    assert metadata.read(again)["version"] == "9.9"
    assert list(metadata.entries(again)).count(metadata.KEY) == 1


@pytest.mark.slow
def test_reader_agrees_with_tensorflows_schema(tiny_run):
    from tensorflow.lite.python import schema_py_generated as schema

    raw = tiny_run["tflite"].read_bytes()
    model = schema.Model.GetRootAsModel(raw, 0)
    names = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    ours = metadata.entries(raw)
    assert set(ours) == set(names)
    for name, index in names.items():
        assert ours[name] == model.Buffers(index).DataAsNumpy().tobytes()


@pytest.mark.parametrize("blob", [b"", b"not a model at all", b"\xff\xff\x00\x00TFL3" + b"\xff" * 8])
def test_garbage_is_a_metadata_error(blob):
    with pytest.raises(metadata.MetadataError):
        metadata.read(blob)
