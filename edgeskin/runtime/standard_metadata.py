"""TFLite Model Metadata (the M001 flatbuffer that MediaPipe, the TFLite Support library and Android Studio read) for an edgeskin model."""

from __future__ import annotations

from edgeskin.runtime.metadata import (AUTHOR, CALIBRATION_FILE, DIAGNOSIS, DIAGNOSIS_LABEL_FILE, INFO_FILE, LABEL_FILE,
                                       LICENSE, PROBABILITIES, USABLE, USABLE_LABEL_FILE)


def standard_metadata(info: dict) -> bytes:
    """TFLite Model Metadata (the M001 flatbuffer) describing an edgeskin model."""
    import flatbuffers

    from edgeskin.runtime._vendor import metadata_schema_py_generated as md

    image = _image_metadata(md, info)
    outputs = {PROBABILITIES: _probabilities_metadata, DIAGNOSIS: _diagnosis_metadata, USABLE: _usable_metadata}
    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    # One entry per output tensor, in the file's own output order: readers
    # pair them by position.
    subgraph.outputTensorMetadata = [outputs[name](md, info) for name in info.get("output_tensors", [PROBABILITIES])]
    extra = md.AssociatedFileT()
    extra.name = INFO_FILE
    extra.description = "edgeskin metadata: temperature, operating points, training data summary, export checks."
    extra.type = md.AssociatedFileType.DESCRIPTIONS
    model = md.ModelMetadataT()
    model.name = info["name"]
    model.description = info["description"]
    model.version = info["version"]
    model.author = AUTHOR
    model.license = LICENSE
    model.subgraphMetadata = [subgraph]
    model.associatedFiles = [extra]
    model.minParserVersion = "1.0.0"  # nothing newer than schema 1.0.0 is used
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), b"M001")
    return bytes(builder.Output())


def _image_metadata(md, info: dict):
    """The input: an RGB image of the model's size, raw 0-255 pixels."""
    size = int(info["input"]["size"])
    image = md.TensorMetadataT()
    image.name = "image"
    image.description = (f"RGB dermoscopic image, {size}x{size}, raw pixel values 0-255 "
                         f"({info['input']['resize']}); scaling to [-1, 1] is inside the model.")
    props = md.ImagePropertiesT()
    props.colorSpace = md.ColorSpaceType.RGB
    props.defaultSize = md.ImageSizeT()
    props.defaultSize.width = props.defaultSize.height = size
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = props
    if info["input"]["dtype"] != "uint8":
        # Float input: readers normalise as (x - mean) / std, and the model
        # wants raw pixels, so the normalisation is the identity.
        norm = md.NormalizationOptionsT()
        norm.mean, norm.std = [0.0], [1.0]
        unit = md.ProcessUnitT()
        unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
        unit.options = norm
        image.processUnits = [unit]
    image.stats = md.StatsT()
    image.stats.max, image.stats.min = [255.0], [0.0]
    return image


def _probability_tensor(md, name: str, description: str, label_file: str, label_description: str):
    """An output of probabilities in [0, 1] whose categories are named, one per line, in label_file."""
    out = md.TensorMetadataT()
    out.name = name
    out.description = description
    out.content = md.ContentT()
    out.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    out.content.contentProperties = md.FeaturePropertiesT()
    out.stats = md.StatsT()
    out.stats.max, out.stats.min = [1.0], [0.0]
    labels = md.AssociatedFileT()
    labels.name = label_file
    labels.description = label_description
    labels.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    out.associatedFiles = [labels]
    return out


def _diagnosis_metadata(md, info: dict):
    """The second head: diagnosis probabilities with their label file, no threshold."""
    return _probability_tensor(
        md, DIAGNOSIS,
        f"Probabilities of the diagnoses {', '.join(info['diagnoses'])} (HAM10000 names). "
        "An aid to reading the case; the benign/malignant output is the decision.",
        DIAGNOSIS_LABEL_FILE, "Diagnosis labels, one per line, in output order.")


def _usable_metadata(md, info: dict):
    """The third head: can the model judge this image at all? [usable, out_of_domain], no calibration."""
    return _probability_tensor(
        md, USABLE,
        "Whether the model can judge this image, from its own features: probabilities of "
        f"{', '.join(info['usable']['labels'])}. Out of domain (not a dermoscopic image of a skin lesion) when "
        f"out_of_domain >= {info['usable']['threshold']:.2f}: show 'cannot judge this photo, retake it' instead of a result.",
        USABLE_LABEL_FILE, "Usability labels, one per line, in output order.")


def _probabilities_metadata(md, info: dict):
    """The primary head: [benign, malignant], its Platt map and its screening threshold."""
    point = info["operating_points"][info["default_operating_point"]]
    out = _probability_tensor(
        md, PROBABILITIES,
        f"Probabilities of {', '.join(info['labels'])}, calibrated by the Platt map in {CALIBRATION_FILE} when "
        f"present. Malignant when its probability >= {point['threshold']:.4f}, the "
        f"'{info['default_operating_point']}' operating point.",
        LABEL_FILE, "Output category labels, one per line, in output order.")
    out.processUnits = []
    if info.get("score_calibration"):
        # Platt scaling as standard metadata: MediaPipe Tasks and the Task
        # Library apply it themselves, before the score threshold below.
        score_cal = md.ScoreCalibrationOptionsT()
        score_cal.scoreTransformation = md.ScoreTransformationType.INVERSE_LOGISTIC
        score_cal.defaultScore = 0.0
        unit = md.ProcessUnitT()
        unit.optionsType = md.ProcessUnitOptions.ScoreCalibrationOptions
        unit.options = score_cal
        out.processUnits.append(unit)
        params = md.AssociatedFileT()
        params.name = CALIBRATION_FILE
        params.description = "Platt scaling per output category: scale,slope,offset (INVERSE_LOGISTIC)."
        params.type = md.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION
        out.associatedFiles.append(params)
    # Score thresholding: a classifier that honours it reports 'malignant'
    # exactly when the default operating point calls the image malignant.
    threshold = md.ScoreThresholdingOptionsT()
    threshold.globalScoreThreshold = float(point["threshold"])
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.ScoreThresholdingOptions
    unit.options = threshold
    out.processUnits.append(unit)
    return out
