"""The edgeskin command line: thin click wrappers over the library.

Each command turns flags into options, makes one library call and prints the
result. Training and export import TensorFlow lazily, inside the command, so
that `edgeskin predict` starts in a fraction of a second without it.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys

import click

from edgeskin import __version__

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _friendly(fn):
    """Report expected failures as one line and a non-zero exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgeskin.runtime.imageio import ImageError

        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, ImageError) as exc:  # our errors all derive from ValueError
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except MemoryError as exc:
            raise click.ClickException("out of memory") from exc

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="edgeskin")
def main():
    """A calibrated benign / malignant dermoscopy classifier for phones.

    A screening aid, not a diagnosis.
    """


@main.command()
@click.argument("data", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(file_okay=False), default="runs/latest", show_default=True,
              help="Run folder to write.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue this stopped run from its last finished epoch, with its own data and options.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a path to backbone weights (.h5).")
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True)
@click.option("--alpha", type=click.Choice(["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"]), default="1.0", show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--head-epochs", type=click.IntRange(1), default=40, show_default=True)
@click.option("--fine-tune-epochs", type=click.IntRange(0), default=25, show_default=True)
@click.option("--fine-tune-from", default="block_11_expand", show_default=True, help="First backbone layer to unfreeze.")
@click.option("--fine-tune-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Peak learning rate of fine-tuning (after a one-epoch warm-up, then cosine decay).")
@click.option("--train-image-size", type=click.IntRange(32, 1024), default=None,
              help="Fine-tune at this size; validation, calibration and the device use --image-size.  [default: --image-size]")
@click.option("--diagnosis-loss", type=click.Choice(["weighted", "balanced_softmax"]), default="weighted", show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="On the diagnosis targets (balanced_softmax only).")
@click.option("--diagnosis-in-fine-tuning/--diagnosis-after-fine-tuning", default=False, show_default=True,
              help="Let the diagnosis loss into fine-tuning, or refit the diagnosis head on the fine-tuned features.")
@click.option("--dx-loss-weight", type=click.FloatRange(0), default=0.5, show_default=True)
@click.option("--select-on", type=click.Choice(["auc", "auc+dx"]), default="auc", show_default=True,
              help="What picks the best epoch: the AUC, or the AUC plus the diagnosis balanced accuracy.")
@click.option("--patience", type=click.IntRange(1), default=5, show_default=True,
              help="Epochs without a better validation AUC before a phase stops.")
@click.option("--loss", type=click.Choice(["bce", "focal"]), default="bce", show_default=True)
@click.option("--class-weights/--no-class-weights", default=True, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random crops, flips, colour and JPEG re-encodes; --no-augment keeps only the harmonizing re-encode.")
@click.option("--head-copies", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Augmented copies of the training set whose frozen features train the head.")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Minutes: stop fine-tuning before an epoch that would end later than this after the start.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@_friendly
def train(data, out, resume_dir, seed, weights, image_size, alpha, val_fraction, batch_size, head_epochs, fine_tune_epochs,
          fine_tune_from, fine_tune_lr, train_image_size, diagnosis_loss, label_smoothing, diagnosis_in_fine_tuning,
          dx_loss_weight, select_on, patience, loss, class_weights, augment, head_copies, time_budget, overwrite):
    """Fine-tune MobileNetV2 on one or more DATA sets and calibrate its threshold.

    Each DATA is a folder with train/ (and optional val/, test/) holding
    benign/ and malignant/, a folder holding just benign/ and malignant/, a
    HAM10000 folder (images/, metadata.csv), an ISIC 2017 folder (images/,
    labels.csv), or a CSV manifest with path,label[,dx][,group][,split][,source].
    Test splits are never read. When the data names diagnoses, a diagnosis
    head is trained beside the benign/malignant one.

    Example: edgeskin train ../shared/data/isic-binary ../shared/data/ham10000 --out runs/multi --seed 42

    A stopped run goes on with: edgeskin train --resume runs/multi
    """
    from edgeskin.data.augment import AugmentOptions
    from edgeskin.training.model import ModelOptions
    from edgeskin.training.options import TrainOptions
    from edgeskin.training.train import resume, train as run_training

    if bool(data) == bool(resume_dir):
        raise click.UsageError("give DATA to start a run, or --resume RUN to continue one (not both)")
    if resume_dir:
        result = resume(resume_dir, log=click.echo)
    else:
        options = TrainOptions(
            model=ModelOptions(image_size=image_size, alpha=float(alpha), weights=weights),
            seed=seed, val_fraction=val_fraction, batch_size=batch_size, head_epochs=head_epochs,
            fine_tune_epochs=fine_tune_epochs, fine_tune_from=fine_tune_from, fine_tune_learning_rate=fine_tune_lr,
            train_image_size=train_image_size, diagnosis_loss=diagnosis_loss, label_smoothing=label_smoothing,
            diagnosis_in_fine_tuning=diagnosis_in_fine_tuning, diagnosis_loss_weight=dx_loss_weight, select_on=select_on,
            patience=patience, loss=loss, class_weights=class_weights,
            augmentation=AugmentOptions() if augment else AugmentOptions.off(), head_copies=head_copies,
            time_budget_minutes=time_budget,
        )
        command = "edgeskin " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
        result = run_training(data, out, options, overwrite=overwrite, log=click.echo, command=command)
    click.echo(f"validation AUC {result.val_auc:.4f}, temperature {result.temperature:.3f}, {result.seconds / 60:.1f} min")
    for point in result.operating_points.values():
        click.echo(f"  {point.name:<10} threshold {point.threshold:.4f}  "
                   f"sensitivity {point.sensitivity:.3f}  specificity {point.specificity:.3f}")
    click.echo(f"run saved to {result.run_dir}")


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), default="audit", show_default=True,
              help="Folder for audit.json, properties.csv and audit.png.")
@click.option("--split", type=click.Choice(["all", "train", "val", "test"]), default="all", show_default=True,
              help="Audit only this split's images.")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@_friendly
def audit(data, out, split, bootstrap):
    """Find shortcuts in one or more DATA sets: file and pixel properties that predict the label on their own.

    Flagged properties (marked !) need an answer before training: remove the
    cue, or make training blind to it. Near-duplicates within and across
    splits are counted too. Several sets are audited as the mixture `train`
    would make of them, with the source as a property and each source alone.

    Example: edgeskin audit ../shared/data/isic-binary ../shared/data/ham10000 --split train --out audit
    """
    from edgeskin.data import audit as audit_lib
    from edgeskin.data import sets as data_lib

    ds = data_lib.discover_many(data)
    parts = {name: ds.split(name) for name in data_lib.SPLITS if split in ("all", name)}
    report = audit_lib.audit([s for part in parts.values() for s in part], out, n_boot=bootstrap, splits=parts)
    click.echo(audit_lib.table(report))
    click.echo(f"wrote {out}/{audit_lib.AUDIT_FILE}, {audit_lib.PROPERTIES_FILE} and {audit_lib.FIGURE_FILE}")


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--int8", "quantization", flag_value="int8", default=True, help="Full-integer model (the default).")
@click.option("--float16", "quantization", flag_value="float16", help="float16 weights, float input.")
@click.option("--float32", "quantization", flag_value="float32", help="Plain float32 model.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output .tflite file [default: SOURCE/edgeskin_<quantization>.tflite].")
@click.option("--representative-images", type=click.IntRange(1), default=300, show_default=True)
@click.option("--max-auc-drop", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="Fail if the exported model's calibration-split AUC falls further below the float model's.")
@click.option("--min-diagnosis-agreement", type=click.FloatRange(0.0, 1.0), default=0.9, show_default=True,
              help="Fail if the exported diagnosis head names the float model's top diagnosis on a smaller share "
                   "of the calibration split.")
@_friendly
def export(source, quantization, out, representative_images, max_auc_drop, min_diagnosis_agreement):
    """Export a trained run to a TFLite model that carries its own metadata.

    SOURCE is a run folder written by `edgeskin train` (or a .keras model
    inside one). The exported model is checked against the float model on
    the run's calibration split; the command fails if the int8 AUC drops by
    more than --max-auc-drop, or if its diagnosis head agrees with the float
    one on less than --min-diagnosis-agreement of the images.

    Example: edgeskin export runs/isic --int8 --out models/edgeskin_int8.tflite
    """
    from pathlib import Path

    from edgeskin.training.export import ExportOptions, export as run_export

    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    out = out or folder / f"edgeskin_{quantization}.tflite"
    options = ExportOptions(quantization=quantization, representative_images=representative_images,
                            max_auc_drop=max_auc_drop, min_diagnosis_agreement=min_diagnosis_agreement)
    result = run_export(source, out, options, log=click.echo)
    click.echo(f"calibration split AUC: float {result.float_auc:.4f}, {quantization} {result.auc:.4f}; "
               f"screening decisions agree on {result.agreement:.1%}")
    for name, point in result.info["operating_points"].items():
        click.echo(f"  {name:<10} threshold {point['threshold']:.4f}  sensitivity {point['sensitivity']:.3f}  "
                   f"specificity {point['specificity']:.3f}")
    if not result.passed:
        why = (f"AUC fell more than {options.max_auc_drop} below the float model's" if result.auc < result.float_auc - options.max_auc_drop
               else f"diagnosis head agreed with the float model's on less than {options.min_diagnosis_agreement:.0%} of images")
        raise click.ClickException(f"the {quantization} model's {why}; kept aside as {result.path}")
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB) and {result.path.with_suffix('.json')}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="A .tflite model [default: the shipped one].")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Malignant when malignant_probability >= threshold.")
@click.option("--operating-point", default=None, help="A named operating point from the model: screening, balanced, specific.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image, one per line.")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Interpreter threads [default: 1].")
@click.option("--tta", is_flag=True, help="Average over the image and its flips (4x the compute).")
@click.option("--no-gate", "no_gate", is_flag=True, help="Judge every image, even one the quality and domain gate would set aside.")
@click.option("--diagnosis", is_flag=True, help="Also list the three most probable diagnoses (models with a diagnosis head).")
@_friendly
def predict(paths, model, threshold, operating_point, as_json, threads, tta, no_gate, diagnosis):
    """Classify dermoscopic images (files or folders) with a TFLite model.

    Runs on the light runtime, with no TensorFlow. The threshold defaults to
    the model's screening operating point. An image the model cannot judge
    (too small, blurred, badly exposed, or not dermoscopy) is labelled
    "unusable" with its reasons: that is an answer, not an error, and the
    exit status stays 0. Exits non-zero only if an image could not be read.
    With --diagnosis, the three most probable of the seven HAM10000
    diagnoses follow the decision; the decision is still the
    benign/malignant one.

    Example: edgeskin predict data/samples/ --threshold 0.4 --diagnosis --json
    """
    from edgeskin.runtime.imageio import find_images
    from edgeskin.runtime import Classifier

    classifier = Classifier(model, num_threads=threads)
    cut = classifier.threshold(threshold, operating_point)
    images = find_images(paths)
    if not images:
        raise click.ClickException("no images found in " + ", ".join(paths))
    failed = 0
    for result in classifier.predict(images, cut, tta=tta, gate=not no_gate, diagnosis=diagnosis):
        failed += not hasattr(result, "label")
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            click.echo(_readable(result), err=not hasattr(result, "label"))
    if failed:
        raise click.ClickException(f"{failed} of {len(images)} image(s) could not be read")


def _readable(result) -> str:
    from edgeskin.runtime.gate import REASON_TEXT

    if not hasattr(result, "label"):
        return f"{result.path}: error: {result.error}"
    if not result.usable:
        # No diagnosis either (the JSON's list is empty): no one should read one off a photo the model cannot judge.
        why = "; ".join(REASON_TEXT.get(r, r) for r in result.reasons)
        return (f"{result.path}: cannot judge this image ({why}): retake it "
                f"(malignant_probability {result.malignant_probability:.3f}, not to be relied on)")
    line = (f"{result.path}: {result.label} (malignant_probability {result.malignant_probability:.3f}, "
            f"threshold {result.threshold:.3f})")
    if result.diagnosis:
        line += "; diagnosis " + ", ".join(f"{dx} {p:.2f}" for dx, p in result.diagnosis)
    return line


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The new .tflite file (never MODEL itself).")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="Sensitivity the screening operating point must reach on DATA.")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True, help="Folds of the cross-validated report.")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@_friendly
def calibrate(model, data, out, target_sensitivity, folds, bootstrap):
    """Calibrate MODEL for a site on its own labelled images, without TensorFlow.

    Fits a Platt map on the model's outputs over DATA (any layout `train`
    accepts, every image used) and re-chooses the operating points, then
    writes a new model carrying both as standard metadata, with its JSON,
    a model card and a reliability figure beside it. MODEL is never changed.
    The before/after figures are cross-validated.

    Example: edgeskin calibrate models/edgeskin_int8.tflite clinic_images/ --out clinic.tflite
    """
    from edgeskin.reporting.site import SiteOptions, calibrate as run_calibration, summary

    def progress(items, n):
        with click.progressbar(items, length=n, label="scoring", file=sys.stderr) as bar:
            yield from bar

    options = SiteOptions(target_sensitivity=target_sensitivity, folds=folds, n_boot=bootstrap)
    result = run_calibration(model, data, out, options, progress)
    click.echo(summary(result))
    click.echo(f"wrote {result.path}, {result.path.with_suffix('.json')} and its model card")


@main.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Also report this threshold.")
@click.option("--out", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--compare", type=click.Path(exists=True), default=None, help="A second model to put side by side.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The model's run folder: its history.csv gives the training curves, its splits.csv "
                   "the training images kept out of every test figure.")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@click.option("--robustness/--no-robustness", default=True, show_default=True,
              help="Also score the set re-encoded, rescaled, relit, rotated and flipped (one pass each).")
@_friendly
def evaluate(model, data, threshold, out, compare, run_dir, bootstrap, robustness):
    """Evaluate MODEL (.tflite, .keras or run folder) on one or more DATA sets, with CIs, figures and a model card.

    Each DATA is any layout `train` accepts. Its test split is used when there
    is one, leaving out test images that near-duplicate a train or val image
    of that set or, given --run, any image the model was trained on;
    otherwise every image is. The first DATA is the primary set (figures,
    robustness, gate, predictions.csv); every set gets a row in the card's
    "Results by test set" and its own diagnosis report.

    Example: edgeskin evaluate models/edgeskin_int8.tflite ../shared/data/isic-binary ../shared/data/ham10000 --out models
    """
    from pathlib import Path

    from edgeskin.reporting.evaluate import evaluate as run_evaluation, table

    def progress(items, n):
        with click.progressbar(items, length=n, label="scoring", file=sys.stderr) as bar:
            yield from bar

    result = run_evaluation(model, list(data), out, threshold, compare, bootstrap, progress, run_dir, robustness)
    click.echo(table(result))
    click.echo(f"wrote {Path(out) / 'metrics.json'}, {Path(out) / 'MODEL_CARD.md'} and {Path(out) / 'figures'}/")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A float Keras model (.keras) [default: the shipped models/edgeskin.keras].")
@click.option("--out", type=click.Path(file_okay=False), default="explanations", show_default=True)
@click.option("--opacity", type=click.FloatRange(0.0, 1.0), default=0.4, show_default=True,
              help="Heatmap opacity in the overlay.")
@_friendly
def explain(images, model, out, opacity):
    """Save Grad-CAM heatmaps and overlays showing what drove the malignant score.

    Example: edgeskin explain data/samples/malignant_1.jpg --out explanations
    """
    from pathlib import Path

    from edgeskin.training import explain as explain_lib
    from edgeskin.training import model as model_lib
    from edgeskin.runtime.imageio import ImageError, find_images
    from edgeskin.runtime import default_model

    keras_path = Path(model) if model else default_model("edgeskin.keras")
    paths = find_images(images)
    if not paths:
        raise click.ClickException("no images found in " + ", ".join(images))
    net = model_lib.load(keras_path)
    failed, stems = 0, set()
    for path in paths:
        try:
            result = explain_lib.explain(net, path, opacity)
        except ImageError as exc:
            failed += 1
            click.echo(f"{path}: error: {exc}", err=True)
            continue
        # a/x.jpg and b/x.png must not overwrite each other's output.
        stem, k = path.stem, 1
        while stem in stems:
            k += 1
            stem = f"{path.stem}_{k}"
        stems.add(stem)
        _, overlay = explain_lib.save(result, out, stem)
        click.echo(f"{path}: malignant_probability {result.malignant_probability:.3f} -> {overlay}")
    if failed:
        raise click.ClickException(f"{failed} image(s) could not be read")


@main.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A .tflite model [default: the shipped one].")
@click.option("--keras", "keras_model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Float Keras model for Grad-CAM [default: edgeskin.keras beside the .tflite].")
@click.option("--port", type=click.IntRange(1024, 65535), default=8501, show_default=True)
@_friendly
def app(model, keras_model, port):
    """Run the web app: upload images, move the threshold, see Grad-CAM.

    Needs the [app] extra (pip install ".[app]"). Uploads stay in memory.

    Example: edgeskin app --port 8501
    """
    import subprocess
    from pathlib import Path

    try:
        import streamlit  # noqa: F401
    except ImportError as exc:
        raise click.ClickException('the web app needs Streamlit: pip install ".[app]"') from exc
    from edgeskin import app as app_module

    extra = (["--model", model] if model else []) + (["--keras", keras_model] if keras_model else [])
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(app_module.__file__)), "--server.headless", "true",
           "--server.port", str(port), "--server.maxUploadSize", str(app_module.MAX_UPLOAD_MB),
           "--browser.gatherUsageStats", "false", "--", *extra]
    raise SystemExit(subprocess.call(cmd))


@main.command()
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="A .tflite model [default: the shipped one].")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--build", "build_dir", type=click.Path(file_okay=False), default=None,
              help="Write the static site to this folder and exit, instead of serving it.")
@_friendly
def web(model, port, build_dir):
    """Serve the offline web app on 127.0.0.1, or write it as a static site for any host.

    The model runs in the browser (MediaPipe); nothing is sent anywhere. Needs `npm ci --prefix web` once
    (./run.sh web does it).

    Example: ./run.sh web --port 8000   (then open http://127.0.0.1:8000/)
    """
    from edgeskin import web as web_lib

    if build_dir:
        site = web_lib.build(model, build_dir)
        click.echo(f"wrote {len(site.files)} files to {site.folder}: {site.total_bytes / 1e6:.1f} MB, "
                   f"{site.gzip_bytes / 1e6:.1f} MB gzipped")
    else:
        web_lib.serve(model, port, on_ready=click.echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
