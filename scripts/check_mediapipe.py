"""Check that MediaPipe Tasks' ImageClassifier runs an edgeskin model unchanged.

Runs in its own environment (mediapipe pins opencv-contrib-python, which
clashes with the training stack's OpenCV): the light edgeskin runtime plus
the `mediapipe` package. For every image it compares MediaPipe's 'malignant'
score with edgeskin's runtime, and passes when they agree within 0.005.
MediaPipe applies the model's standard score-calibration metadata (the
Platt map) itself, so this checks that both read the same calibrated
probability, not only the same raw output.

    .venv-mediapipe/bin/python scripts/check_mediapipe.py models/edgeskin_int8.tflite data/samples
    .venv-mediapipe/bin/python scripts/check_mediapipe.py models/edgeskin_int8.tflite ../shared/data/isic-binary/test --limit 20
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--limit", type=int, default=None, help="Check only this many images, spread over the list.")
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args(argv)

    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    from edgeskin.runtime.imageio import find_images
    from edgeskin.runtime import Classifier

    ours = Classifier(args.model)
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=args.model),
        max_results=-1,
        # The C API reads any threshold <= 0 as "unset" and falls back on the
        # model's own (the screening point), which hides 'malignant' below it.
        # The smallest positive value keeps every category with a non-zero score.
        score_threshold=1e-9,
    )
    worst = 0.0
    paths = find_images(args.images)
    if args.limit and len(paths) > args.limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, args.limit).round().astype(int)]
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            worst = max(worst, _compare_one(mp, classifier, ours, path))
    calibrated = "with" if ours.score_calibration else "without"
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"{verdict}: largest difference {worst:.6f} over {len(paths)} images (tolerance {args.tolerance}; "
          f"model {calibrated} score calibration)")
    return 0 if verdict == "PASS" else 1


def _compare_one(mp, classifier, ours, path) -> float:
    """The largest difference between MediaPipe and edgeskin on one image, every head (probabilities, diagnosis, usable); printed."""
    from edgeskin.runtime.imageio import load_rgb

    pixels = load_rgb(path, ours.image_size)
    result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels)))
    heads = {h.head_name: h for h in result.classifications}
    # The decision is the head named "probabilities" (head 0); older
    # single-head files name no head, so fall back on the first.
    primary = heads.get("probabilities", result.classifications[0])
    categories = {c.category_name: c.score for c in primary.categories}
    ref, dx = ours.scores(pixels)
    raw = ours.raw_heads(pixels)
    worst = 0.0
    if dx is not None:
        # edgeskin renormalises the int8 steps to sum to 1; MediaPipe reports the raw outputs.
        worst = _diagnosis_difference(heads, ours, raw["diagnosis"], path)
    if raw["out_of_domain"] is not None:
        worst = max(worst, _usable_difference(heads, raw["out_of_domain"], path))
    if "malignant" not in categories:
        # MediaPipe drops a category whose score is exactly 0, whatever
        # the threshold; that is only a match if edgeskin also says 0.
        print(f"{path}: mediapipe malignant not returned (score 0)  edgeskin {ref:.6f}  |diff| {ref:.6f}")
        return max(worst, ref)
    diff = abs(categories["malignant"] - ref)
    print(f"{path}: mediapipe malignant {categories['malignant']:.6f}  edgeskin {ref:.6f}  |diff| {diff:.6f}")
    return max(worst, diff)


def _diagnosis_difference(heads: dict, ours, dx, path) -> float:
    """Largest difference between MediaPipe's diagnosis head and edgeskin's diagnosis probabilities."""
    if "diagnosis" not in heads:
        print(f"{path}: mediapipe returned no 'diagnosis' head (heads: {', '.join(heads)})")
        return 1.0
    theirs = {c.category_name: c.score for c in heads["diagnosis"].categories}
    diff = max(abs(theirs.get(name, 0.0) - float(p)) for name, p in zip(ours.diagnoses, dx))
    top = max(theirs, key=theirs.get) if theirs else "none"
    print(f"{path}: mediapipe diagnosis head top {top}, largest |diff| {diff:.6f}")
    return diff


def _usable_difference(heads: dict, out_of_domain: float, path) -> float:
    """Difference between MediaPipe's third head, usable, and edgeskin's out_of_domain probability."""
    if "usable" not in heads:
        print(f"{path}: mediapipe returned no 'usable' head (heads: {', '.join(heads)})")
        return 1.0
    theirs = {c.category_name: c.score for c in heads["usable"].categories}
    diff = abs(theirs.get("out_of_domain", 0.0) - out_of_domain)  # a score of exactly 0 is left out: read it as 0
    print(f"{path}: mediapipe usable head out_of_domain {theirs.get('out_of_domain', 0.0):.6f}  edgeskin "
          f"{out_of_domain:.6f}  |diff| {diff:.6f}")
    return diff


if __name__ == "__main__":
    sys.exit(main())
