"""The edgeskin command line: thin click wrappers over the library.

Each command turns flags into options, makes one library call and prints the
result. Training and export import TensorFlow lazily, inside the command, so
that `edgeskin predict` starts in a fraction of a second without it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from edgeskin import __version__
from edgeskin.cli_views import app, explain, friendly, quiet_tensorflow, show_run, small_data_hint, too_small, web

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group()
@click.version_option(__version__, prog_name="edgeskin")
@click.option("--verbose", is_flag=True, help="Also show TensorFlow's and LiteRT's own log lines.")
def main(verbose):
    """A calibrated benign / malignant dermoscopy classifier for phones.

    A screening aid, not a diagnosis. Run through ./run.sh (./run.sh predict
    data/samples/), or activate .venv first (source .venv/bin/activate) to
    call edgeskin directly.
    """
    import logging

    if verbose:
        os.environ["EDGESKIN_VERBOSE"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        # Before TensorFlow loads: its C++ INFO and WARNING lines (oneDNN, absl) are not ours to print.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


@main.command()
@click.argument("data", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(file_okay=False), default="runs/latest", show_default=True,
              help="Run folder to write.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue this stopped run from its last finished epoch, with its own data and options.")
@click.option("--start-from", "start_from", type=click.Path(exists=True, file_okay=False), default=None,
              help="Skip phase 1 and fine-tune on from this finished run's network (same data and split).")
@click.option("--int8-grid/--no-int8-grid", default=False, show_default=True,
              help="Put the layers that never train on the int8 file's weight grid first, so int8 loses little.")
@click.option("--seed", type=click.IntRange(0), default=42, show_default=True)
@click.option("--split-seed", type=click.IntRange(0), default=None,
              help="Draw the validation split with this seed instead, so that runs of other seeds share it.")
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
@click.option("--ema", "ema", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Score and keep an exponential moving average of the fine-tuned weights, updated after every "
                   "step with this momentum (e.g. 0.999), in place of the weights as trained.  [default: off]")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Minutes: stop fine-tuning before an epoch that would end later than this after the start.")
@click.option("--input", "input_mode", type=click.Choice(["auto", "memory", "stream"]), default="auto",
              show_default=True, help="Decode the training images into memory once, or stream them from disk "
                                      "batch by batch; auto streams sets over 4 GiB decoded.")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multi-worker"]), default=None,
              help="tf.distribute: every local GPU, or the machines TF_CONFIG names (docs/scale.md); "
                   "--batch-size is then the global batch.  [default: none, or the resumed run's own]")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@friendly
def train(data, out, resume_dir, start_from, overwrite, **flags):
    """Fine-tune MobileNetV2 on one or more DATA sets and calibrate its threshold.

    Each DATA is a folder with train/ (and optional val/, test/) holding
    benign/ and malignant/, a folder holding just benign/ and malignant/, a
    HAM10000 folder (images/, metadata.csv), an ISIC 2017 folder (images/,
    labels.csv), or a CSV manifest with path,label[,dx][,group][,split][,source].
    Test splits are never read. When the data names diagnoses, a diagnosis
    head is trained beside the benign/malignant one.

    The shipped model's one run (three sets) took 59 min on 2 CPU cores
    (models/training/config.json). The calibration (validation) split
    needs 20 images of each class: --val-fraction x images of each class >= 20.

    Example: ./run.sh train ../shared/data/isic-binary ../shared/data/ham10000 --out runs/multi --seed 42

    A stopped run goes on with: ./run.sh train --resume runs/multi

    A finished run goes on, made ready for int8, with the same data, seed and options (phase 1 skipped):
    ./run.sh train ../shared/data/isic-binary ../shared/data/ham10000 --out runs/multi-int8 --seed 42 --start-from runs/multi --int8-grid --fine-tune-epochs 3 --fine-tune-lr 2e-5
    """
    quiet_tensorflow()
    from edgeskin.training.train import resume, train as run_training

    if bool(data) == bool(resume_dir):
        raise click.UsageError("give DATA to start a run, or --resume RUN to continue one (not both)")
    if resume_dir and start_from:
        raise click.UsageError("--start-from starts a new run; a resumed run goes on from its own checkpoint")
    if resume_dir:
        given = _given(flags, "fine_tune_epochs", "time_budget")
        result = resume(resume_dir, log=click.echo, fine_tune_epochs=given.get("fine_tune_epochs"),
                        time_budget_minutes=given.get("time_budget"), distribute_as=flags["distribute"])
    else:
        command = "edgeskin " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
        try:
            result = run_training(data, out, _train_options(**flags), overwrite=overwrite, log=click.echo, command=command,
                                  start_from=start_from)
        except ValueError as exc:
            raise type(exc)(f"{exc}; {small_data_hint(data, flags['val_fraction'])}") if too_small(exc) else exc
    show_run(result)


def _given(flags: dict, *names: str) -> dict:
    """The flags typed on this command line: only they change a stopped run's schedule; the rest are its own."""
    ctx = click.get_current_context()
    return {k: flags[k] for k in names if ctx.get_parameter_source(k).name == "COMMANDLINE"}


def _train_options(seed, split_seed, weights, image_size, alpha, val_fraction, batch_size, head_epochs, fine_tune_epochs,
                   fine_tune_from, fine_tune_lr, train_image_size, diagnosis_loss, label_smoothing,
                   diagnosis_in_fine_tuning, dx_loss_weight, select_on, patience, loss, class_weights, augment,
                   head_copies, ema, time_budget, input_mode, distribute, int8_grid):
    from edgeskin.data.augment import AugmentOptions
    from edgeskin.training.model import ModelOptions
    from edgeskin.training.options import TrainOptions

    return TrainOptions(
        model=ModelOptions(image_size=image_size, alpha=float(alpha), weights=weights),
        seed=seed, split_seed=split_seed, val_fraction=val_fraction, batch_size=batch_size, head_epochs=head_epochs,
        fine_tune_epochs=fine_tune_epochs, fine_tune_from=fine_tune_from, fine_tune_learning_rate=fine_tune_lr,
        train_image_size=train_image_size, diagnosis_loss=diagnosis_loss, label_smoothing=label_smoothing,
        diagnosis_in_fine_tuning=diagnosis_in_fine_tuning, diagnosis_loss_weight=dx_loss_weight, select_on=select_on,
        patience=patience, loss=loss, class_weights=class_weights,
        augmentation=AugmentOptions() if augment else AugmentOptions.off(), head_copies=head_copies,
        ema_momentum=ema, time_budget_minutes=time_budget, input=input_mode, distribute=distribute or "none", int8_grid=int8_grid,
    )


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), default="runs/audit", show_default=True,
              help="Folder for audit.json, properties.csv and audit.png.")
@click.option("--split", type=click.Choice(["all", "train", "val", "test"]), default="all", show_default=True,
              help="Audit only this split's images.")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@friendly
def audit(data, out, split, bootstrap):
    """Find shortcuts in one or more DATA sets: file and pixel properties that predict the label on their own.

    Flagged properties (marked !) need an answer before training: remove the
    cue, or make training blind to it. Near-duplicates within and across
    splits are counted too. Several sets are audited as the mixture `train`
    would make of them, with the source as a property and each source alone.

    Example: ./run.sh audit ../shared/data/isic-binary ../shared/data/ham10000 --split train --out runs/audit
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
@friendly
def export(source, quantization, out, representative_images, max_auc_drop, min_diagnosis_agreement):
    """Export a trained run to a TFLite model that carries its own metadata.

    SOURCE is a run folder written by `edgeskin train` (or a .keras model
    inside one). The exported model is checked against the float model on
    the run's calibration split; the command fails if the int8 AUC drops by
    more than --max-auc-drop, or if its diagnosis head agrees with the float
    one on less than --min-diagnosis-agreement of the images.

    Example (runs/multi is the run `train`'s example writes; the model goes
    beside it, never over the shipped one in models/):

      ./run.sh export runs/multi --int8 --out runs/multi/edgeskin_int8.tflite
    """
    from pathlib import Path

    quiet_tensorflow()
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
        raise click.ClickException(f"the {quantization} model's {result.failure(options)}; kept aside as {result.path}")
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
@friendly
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

    Example: ./run.sh predict data/samples/ --threshold 0.4 --diagnosis --json
    """
    from edgeskin.runtime import Classifier
    from edgeskin.runtime.imageio import scan_images

    classifier = Classifier(model, num_threads=threads)
    cut = classifier.threshold(threshold, operating_point)
    images, skipped = scan_images(paths)
    if not images:
        raise click.ClickException("no images found in " + ", ".join(paths))
    failed = 0
    for result in classifier.predict(images, cut, tta=tta, gate=not no_gate, diagnosis=diagnosis):
        failed += not hasattr(result, "label")
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            click.echo(result.readable(), err=not hasattr(result, "label"))
    if skipped:
        many = len(skipped) > 1
        click.echo(f"skipped {len(skipped)} file{'s' * many} that {'are' if many else 'is'} not {'images' if many else 'an image'}",
                   err=True)
    if failed:
        raise click.ClickException(f"{failed} of {len(images)} image(s) could not be read")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The new .tflite file (never MODEL itself).")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="Sensitivity the screening operating point must reach on DATA.")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True, help="Folds of the cross-validated report.")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@click.option("--refit-gate", is_flag=True,
              help="Also move the in-model gate's threshold so that 99.5% of DATA passes, for a site whose images it flags.")
@friendly
def calibrate(model, data, out, target_sensitivity, folds, bootstrap, refit_gate):
    """Calibrate MODEL for a site on its own labelled images, without TensorFlow.

    Fits a Platt map on the model's outputs over DATA (any layout `train`
    accepts, every image used) and re-chooses the operating points, then
    writes a new model carrying both as standard metadata, with its JSON,
    a model card and a reliability figure beside it. MODEL is never changed.
    The before/after figures are cross-validated.

    DATA is your site's own labelled images; below, isic-binary's test split
    stands in for them (calibrating on a set leaves it no use as a test set).

    Example: ./run.sh calibrate models/edgeskin_int8.tflite ../shared/data/isic-binary/test --out runs/site/site.tflite
    """
    from edgeskin.reporting.site import SiteOptions, calibrate as run_calibration, summary

    def progress(items, n):
        yield from _progress(items, n, f"scoring {data} ({n} images)")

    options = SiteOptions(target_sensitivity=target_sensitivity, folds=folds, n_boot=bootstrap, refit_gate=refit_gate)
    result = run_calibration(model, data, out, options, progress)
    click.echo(summary(result))
    click.echo(f"wrote {result.path}, {result.path.with_suffix('.json')} and its model card")


@main.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Also report this threshold.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/evaluation", show_default=True,
              help="Folder for metrics.json, MODEL_CARD.md, predictions.csv and figures/.")
@click.option("--compare", type=click.Path(exists=True), default=None, help="A second model to put side by side.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The model's run folder: its history.csv gives the training curves, its splits.csv "
                   "the training images kept out of every test figure.  [default: training/ beside MODEL, if it has "
                   "a splits.csv]")
@click.option("--bootstrap", type=click.IntRange(100, 100000), default=1000, show_default=True)
@click.option("--robustness/--no-robustness", default=True, show_default=True,
              help="Also score the set re-encoded, rescaled, relit, rotated and flipped (one pass each).")
@friendly
def evaluate(model, data, threshold, out, compare, run_dir, bootstrap, robustness):
    """Evaluate MODEL (.tflite, .keras or run folder) on one or more DATA sets, with CIs, figures and a model card.

    Each DATA is any layout `train` accepts. Its test split is used when there
    is one, leaving out test images that near-duplicate a train or val image
    of that set or any image the model was trained on (its run record: --run,
    or a training/ folder with splits.csv beside the model file, as the
    shipped model has in models/training); otherwise every image is. Without
    a run record the report says the model's training images were not
    checked. The first DATA is the primary set (figures, robustness, gate,
    predictions.csv); every set gets a row in the card's "Results by test
    set" and its own diagnosis report.

    Example: ./run.sh evaluate models/edgeskin_int8.tflite ../shared/data/isic-binary ../shared/data/ham10000 --out runs/evaluation
    """
    from pathlib import Path

    from edgeskin.reporting.evaluate import evaluate as run_evaluation
    from edgeskin.reporting.tables import table

    result = run_evaluation(model, list(data), out, threshold, compare, bootstrap, _progress, run_dir, robustness)
    click.echo(table(result))
    click.echo(f"wrote {Path(out) / 'metrics.json'}, {Path(out) / 'MODEL_CARD.md'} and {Path(out) / 'figures'}/")


def _progress(items, n, label="scoring"):
    """A progress bar on stderr that says what it counts (the library names the set and its size)."""
    with click.progressbar(items, length=n, label=label, file=sys.stderr) as bar:
        yield from bar


main.add_command(explain)
main.add_command(app)
main.add_command(web)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
