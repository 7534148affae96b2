"""The in-model gate: a third output, fitted on the network's own features, read by every client."""

from __future__ import annotations

import numpy as np
import pytest

from edgeskin.training import domain


def _features(rng, n, shift=0.0, d=64, rank=8):
    """Pooled-feature-like vectors: a low-rank structure plus a little noise, as a backbone's are."""
    basis = np.random.default_rng(99 + d).normal(size=(rank, d))
    return rng.normal(size=(n, rank)) @ basis * 0.3 + 1.0 + shift + rng.normal(0, 0.05, (n, d))


def _pair(rng, n, shift=0.0, off_subspace=0.0):
    early, late = _features(rng, n, shift, d=48, rank=4), _features(rng, n, shift, d=64)
    if off_subspace:
        early = early + np.random.default_rng(5).normal(0, off_subspace, early.shape)
    return early, late


def test_fit_lets_the_pool_through_and_sets_far_images_aside():
    rng = np.random.default_rng(0)
    head, rates = domain.fit(_pair(rng, 800), _pair(rng, 400))
    assert rates["calibration_pass_rate"] == pytest.approx(domain.DOMAIN_PASS, abs=0.01)
    unseen = head.out_of_domain_probability(*_pair(rng, 500))
    assert np.mean(unseen < 0.5) >= 0.97  # new images from the same distribution pass
    assert np.all(head.out_of_domain_probability(*_pair(rng, 200, shift=1.5)) >= 0.5)
    # The same means, but early features off the training images' subspace: the early branch catches it.
    assert np.mean(head.out_of_domain_probability(*_pair(rng, 200, off_subspace=0.5)) >= 0.5) >= 0.95


def test_a_head_saves_and_loads(tmp_path):
    rng = np.random.default_rng(1)
    head, _ = domain.fit(_pair(rng, 300), _pair(rng, 100))
    head.save(tmp_path / domain.DOMAIN_FILE)
    again = domain.DomainHead.load(tmp_path / domain.DOMAIN_FILE)
    x = _pair(rng, 20)
    assert np.allclose(head.score(*x), again.score(*x))
    assert not list(tmp_path.glob("*.tmp*"))


def test_the_limit_moves_to_where_the_file_lets_the_pool_through():
    rng = np.random.default_rng(4)
    head, _ = domain.fit(_pair(rng, 600), _pair(rng, 400))
    early, late = _pair(rng, 2000)
    scores = head.score(early, late)
    # A file whose scores spread wider than the float ones, as int8 features do: too much is set aside.
    noisy = scores * np.exp(rng.normal(0, 0.15, len(scores)))
    p_file = 1.0 / (1.0 + np.exp(-(noisy - head.threshold) * head.gain))
    p_file = np.round(p_file * 256) / 256  # the uint8 output's steps
    assert np.mean(p_file < 0.5) < domain.DOMAIN_PASS - 0.01
    assert np.allclose(domain.scores_of(head, p_file)[np.abs(p_file - 0.5) < 0.3],
                       noisy[np.abs(p_file - 0.5) < 0.3], rtol=0.01)
    moved = domain.threshold_for_file(head, p_file)
    assert moved.threshold > head.threshold and moved.gain * moved.threshold == pytest.approx(domain.GAIN_WIDTHS)
    p_moved = 1.0 / (1.0 + np.exp(-(noisy - moved.threshold) * moved.gain))
    assert np.mean(p_moved < 0.5) == pytest.approx(domain.DOMAIN_PASS, abs=0.002)
    assert domain.threshold_for_file(moved, p_moved) is None  # already there: nothing to move
    far = domain.farthest(p_file, 5)
    assert list(far) == list(np.argsort(-p_file, kind="stable")[:5]) and p_file[far[0]] == p_file.max()


@pytest.mark.slow
def test_the_graph_head_computes_what_numpy_does(tiny_run):
    from edgeskin.training import model as model_lib

    serving = model_lib.load(tiny_run["run"] / "model.keras")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    early, late = domain.features(serving, x)
    head, _ = domain.fit((early[:24], late[:24]), (early[24:], late[24:]))
    three = domain.attach(serving, head)
    out, before = three.predict(x, verbose=0), serving.predict(x, verbose=0)
    before = before if isinstance(before, list) else [before]
    assert len(out) == len(before) + 1
    assert np.allclose(out[-1][:, 1], head.out_of_domain_probability(early, late), atol=1e-4)
    for a, b in zip(out, before):  # the other heads are untouched
        assert np.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_the_exported_file_carries_the_usable_head(tiny_run):
    from PIL import Image

    from edgeskin.runtime import Classifier
    from edgeskin.runtime.imageio import to_model_input

    clf = Classifier(tiny_run["tflite"])
    assert clf.has_usable_head and clf.output_names()[0] == "probabilities" and clf.output_names()[-1] == "usable"
    assert clf._interpreter.get_input_details()[0]["shape_signature"][0] == 1  # batch fixed for strict clients
    checks = clf.info["usable"]["checks"]
    assert checks["calibration_pass_rate"] >= 0.95 and set(checks["calibration_pass_rate_by_quality"]) == {"q95", "q75", "q50"}
    # The limit is where the file itself lets the pool through, moved from the float fit's when needed.
    assert checks["calibration_pass_rate"] == pytest.approx(domain.DOMAIN_PASS, abs=0.02)
    assert checks["float_score_limit"] > 0 and checks["score_limit"] > 0 and 0 <= checks["pass_rate_at_float_limit"] <= 1
    # The runtime reads the head on every image; with the pixel gate's distance switched off, out_of_domain
    # comes from the head alone (the shipped model's behaviour on real junk: tests/test_shipped.py).
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    pixels = to_model_input(noise, clf.image_size)
    p = clf.raw_heads(pixels)["out_of_domain"]
    assert 0.0 <= p <= 1.0
    assert ("out_of_domain" in clf.reasons(noise.size, pixels)) == (p >= clf.usable_threshold)
    assert "out_of_domain" not in clf.gate.reasons(noise.size, pixels, domain=False)
