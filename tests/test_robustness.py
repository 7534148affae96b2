"""The robustness table's arithmetic, on hand-made scores (no model needed)."""

import numpy as np
import pytest

from edgeskin.data import perturb
from edgeskin.reporting import robustness


def _fixed(shift):
    """A 'scorer' whose every perturbed score moves by shift (clipped to [0, 1])."""
    return lambda transform: np.clip(P + shift, 0, 1)


Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 0.8, 0.9])
POINTS = {"screening": 0.4, "specific": 0.75}


def test_unchanged_scores_flip_nothing():
    [row] = robustness.measure(_fixed(0.0), Y, P, POINTS, perturbations=perturb.ROBUSTNESS[:1], n_boot=50)
    assert row["screening_flip_rate"] == 0.0 and row["median_abs_delta"] == 0.0
    assert row["roc_auc"]["value"] == 1.0
    assert row["operating_points"]["screening"]["delta_specificity"] == 0.0


def test_shifted_scores_flip_what_crosses_the_screening_threshold():
    [row] = robustness.measure(_fixed(0.2), Y, P, POINTS, perturbations=perturb.ROBUSTNESS[:1], n_boot=50)
    # 0.2 -> 0.4 and 0.3 -> 0.5 cross 0.4; 0.45 was already above it.
    assert row["screening_flip_rate"] == pytest.approx(2 / 8)
    assert row["median_abs_delta"] == pytest.approx(0.2)
    sp = row["operating_points"]["screening"]
    assert sp["specificity"] == pytest.approx(1 / 4) and sp["delta_specificity"] == pytest.approx(-2 / 4)
    assert row["mean_probability_benign"] == pytest.approx(np.mean(P[:4] + 0.2))


def test_every_perturbation_is_applied_once():
    seen = []
    robustness.measure(lambda t: seen.append(t) or P, Y, P, POINTS, n_boot=20)
    assert seen == [p.apply for p in perturb.ROBUSTNESS]
