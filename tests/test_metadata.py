import json

import pytest

from edgeskin.runtime import metadata


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


@pytest.mark.slow
def test_standard_model_metadata(tiny_run):
    from edgeskin.runtime._vendor import metadata_schema_py_generated as md

    raw = tiny_run["tflite"].read_bytes()
    buf = metadata.entries(raw)[metadata.STANDARD_KEY]
    assert md.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    m = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    info = metadata.read(raw)
    assert m.name.decode() == "edgeskin" and m.version.decode() == info["version"]
    assert m.author and m.license and m.minParserVersion.decode() == "1.0.0"
    sub = m.subgraphMetadata[0]
    image = sub.inputTensorMetadata[0].content.contentProperties
    assert image.colorSpace == md.ColorSpaceType.RGB and image.defaultSize.width == 64
    out = sub.outputTensorMetadata[0]
    assert out.associatedFiles[0].name.decode() == metadata.LABEL_FILE
    assert out.associatedFiles[0].type == md.AssociatedFileType.TENSOR_AXIS_LABELS
    units = {u.optionsType: u.options for u in out.processUnits}
    threshold = units[md.ProcessUnitOptions.ScoreThresholdingOptions].globalScoreThreshold
    assert threshold == pytest.approx(info["operating_points"]["screening"]["threshold"], abs=1e-6)
    # The Platt map, as MediaPipe and the Task Library read it.
    assert units[md.ProcessUnitOptions.ScoreCalibrationOptions].scoreTransformation == md.ScoreTransformationType.INVERSE_LOGISTIC
    assert out.processUnits[-1].optionsType == md.ProcessUnitOptions.ScoreThresholdingOptions
    cal_file = out.associatedFiles[1]
    assert cal_file.name.decode() == metadata.CALIBRATION_FILE
    assert cal_file.type == md.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION
    files = metadata.associated_files(raw)
    assert files[metadata.LABEL_FILE].decode().split() == ["benign", "malignant"]
    assert json.loads(files[metadata.INFO_FILE]) == info
    lines = files[metadata.CALIBRATION_FILE].decode().split("\n")
    cal = info["score_calibration"]
    assert [tuple(map(float, line.split(","))) for line in lines] == [
        (1.0, cal["slope"], -cal["offset"]), (1.0, cal["slope"], cal["offset"])]


@pytest.mark.parametrize("bad", [{"slope": 0.0, "offset": 0.0}, {"slope": 1.0, "offset": float("nan")},
                                 {"slope": "1", "offset": 0.0}, {"offset": 0.0}, "platt"])
def test_bad_score_calibration_is_refused(bad):
    with pytest.raises(metadata.MetadataError, match="score_calibration"):
        metadata.validate({"score_calibration": bad})


@pytest.mark.slow
def test_re_embedding_does_not_grow_the_file(tiny_run):
    """`edgeskin calibrate` rewrites the metadata of a file that already has it:
    the replaced entries' payloads must not stay behind."""
    raw = tiny_run["tflite"].read_bytes()
    info = metadata.read(raw)
    once = metadata.embed_for_apps(raw, info)
    twice = metadata.embed_for_apps(once, {**info, "version": "9.9"})
    assert len(twice) - len(once) < 64
    assert metadata.read(twice)["version"] == "9.9"
