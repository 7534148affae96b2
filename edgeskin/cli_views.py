"""The commands that show a model to a person: Grad-CAM heatmaps, the Streamlit app and the offline web app.

And `friendly`, the one-line error handling every command shares, with the hint train adds to a too-small
calibration split.
"""

from __future__ import annotations

import functools
import sys

import click


def friendly(fn):
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


def quiet_tensorflow():
    """Load TensorFlow with its start-up lines (absl's, oneDNN's) hidden, unless --verbose asked for them.

    TensorFlow prints them from C++ before any log level applies, so the
    only way to hide them is to hide the process's stderr while it loads.
    """
    from edgeskin.runtime.classifier import quiet_native_stderr

    with quiet_native_stderr():
        import tensorflow  # noqa: F401


def show_run(result) -> None:
    """What `train` prints when a run is saved: its validation AUC, time and operating points."""
    click.echo(f"validation AUC {result.val_auc:.4f}, temperature {result.temperature:.3f}, {result.seconds / 60:.1f} min")
    for point in result.operating_points.values():
        click.echo(f"  {point.name:<10} threshold {point.threshold:.4f}  "
                   f"sensitivity {point.sensitivity:.3f}  specificity {point.specificity:.3f}")
    # A multi-worker run's other workers write nothing: the chief's --out holds the run.
    click.echo(f"run saved to {result.run_dir}" if result.run_dir.is_dir() else "run saved by the chief worker, not here")


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A float Keras model (.keras) [default: the shipped models/edgeskin.keras].")
@click.option("--out", type=click.Path(file_okay=False), default="runs/explanations", show_default=True)
@click.option("--opacity", type=click.FloatRange(0.0, 1.0), default=0.4, show_default=True,
              help="Heatmap opacity in the overlay.")
@friendly
def explain(images, model, out, opacity):
    """Save Grad-CAM heatmaps and overlays showing what drove the malignant score.

    Grad-CAM needs the float Keras model's gradients, so the probabilities it
    prints are the float model's: they differ a little from the int8 model's
    that `predict` runs (and the thresholds are the int8 model's).

    Example: ./run.sh explain data/samples/malignant_1.jpg --out runs/explanations
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
    click.echo(f"scored by the float Keras model {keras_path}; the int8 model `predict` runs differs a little")
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
        click.echo(f"{path}: float model's malignant_probability {result.malignant_probability:.3f} -> {overlay}")
    if failed:
        raise click.ClickException(f"{failed} image(s) could not be read")


@click.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A .tflite model [default: the shipped one].")
@click.option("--keras", "keras_model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Float Keras model for Grad-CAM [default: edgeskin.keras beside the .tflite].")
@click.option("--port", type=click.IntRange(1024, 65535), default=8501, show_default=True)
@friendly
def app(model, keras_model, port):
    """Run the web app: upload images, move the threshold, see Grad-CAM.

    Needs the [app] extra (pip install ".[app]"). Uploads stay in memory.

    Example: ./run.sh app --port 8501
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


@click.command()
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="A .tflite model [default: the shipped one].")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--build", "build_dir", type=click.Path(file_okay=False), default=None,
              help="Write the static site to this folder and exit, instead of serving it.")
@friendly
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


def too_small(exc: Exception) -> bool:
    """Whether train failed for a calibration split too small to choose operating points on."""
    return str(exc).startswith("calibration (validation) split: only")


def small_data_hint(data, val_fraction: float) -> str:
    """Which --val-fraction, or how many more images, would give the calibration split its 20 images of each class."""
    import math

    from edgeskin.data import sets

    ds = sets.discover_many(data)
    if ds.val:
        return f"add images to the val/ split, to at least {sets.MIN_PER_CLASS} of each class"
    counts = ds.counts()["train"]
    fewest = min(counts.values())
    # Each class gives about fraction x its images to the split (whole lesions at a time).
    fraction = math.ceil(100 * sets.MIN_PER_CLASS / fewest) / 100 if fewest else 1.0
    need = math.ceil(sets.MIN_PER_CLASS / val_fraction)
    more = " and ".join(f"{need - n} more {name}" for name, n in counts.items() if n < need)
    raise_to = f"--val-fraction {fraction:.2f} would work, or " if fraction <= 0.5 else ""
    return f"{raise_to}at --val-fraction {val_fraction:g} the data needs {more} images"
