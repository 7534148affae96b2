import numpy as np
import pytest
from sklearn.metrics import log_loss

from edgeskin.runtime import calibration as cal


def test_sigmoid_and_logit_are_inverse_and_stable():
    assert cal.sigmoid(0.0) == pytest.approx(0.5)
    assert cal.sigmoid(np.log(3.0)) == pytest.approx(0.75)
    assert cal.sigmoid(-1000.0) == pytest.approx(0.0) and cal.sigmoid(1000.0) == pytest.approx(1.0)
    assert cal.logit(cal.sigmoid(1.7)) == pytest.approx(1.7)


def test_nll_matches_sklearn_log_loss():
    z = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    y = np.array([1, 0, 0, 0, 1])
    assert cal.nll(z, y, 2.0) == pytest.approx(log_loss(y, cal.sigmoid(z / 2.0)))


def test_temperature_hand_computed():
    # Every logit is 2 and 3 of 4 cases are positive: the best probability is
    # 0.75, so sigmoid(2 / T) = 0.75 and T = 2 / ln 3.
    z = np.full(4, 2.0)
    y = np.array([1, 1, 1, 0])
    assert cal.fit_temperature(z, y) == pytest.approx(2.0 / np.log(3.0), rel=1e-4)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    y = rng.random(20000) < cal.sigmoid(true_logits)
    assert cal.fit_temperature(3.0 * true_logits, y) == pytest.approx(3.0, rel=0.05)


def test_temperature_needs_both_classes():
    with pytest.raises(ValueError):
        cal.fit_temperature([1.0, 2.0], [1, 1])


def test_operating_points_hand_computed():
    # Positives score 0.9, 0.8, 0.7, 0.6, 0.3; negatives 0.5, 0.4, 0.2, 0.1, 0.05.
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.5, 0.4, 0.2, 0.1, 0.05])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    points = cal.choose_operating_points(p, y)
    # Sensitivity >= 0.95 with five positives means all five: threshold 0.3,
    # which flags 0.5 and 0.4 too: specificity 3/5.
    assert points["screening"].threshold == 0.3
    assert (points["screening"].sensitivity, points["screening"].specificity) == (1.0, 0.6)
    # Youden's J is largest (0.8) at 0.6: sensitivity 4/5, specificity 5/5.
    assert points["balanced"].threshold == 0.6
    assert points["balanced"].sensitivity == pytest.approx(0.8) and points["balanced"].specificity == 1.0
    # Specificity >= 0.9 needs all five negatives below: the lowest such threshold is 0.6.
    assert points["specific"].threshold == 0.6


def test_operating_points_never_split_ties():
    # int8 outputs tie often; a threshold must treat equal scores equally.
    p = np.array([0.5, 0.5, 0.5, 0.25, 0.5, 0.25])
    y = np.array([1, 1, 1, 1, 0, 0])
    points = cal.choose_operating_points(p, y)
    for point in points.values():
        sens, spec = cal.rates(p, y, point.threshold)
        assert (sens, spec) == pytest.approx((point.sensitivity, point.specificity))
    assert points["screening"].threshold == 0.25


def test_screening_point_meets_its_sensitivity():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.4
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    point = cal.choose_operating_points(p, y)["screening"]
    assert cal.rates(p, y, point.threshold)[0] >= 0.95
    # ...and it is the highest threshold that does.
    higher = np.unique(p)[np.unique(p) > point.threshold][0]
    assert cal.rates(p, y, higher)[0] < 0.95


def test_ece_hand_computed():
    # Bin [0.2, 0.267) holds 0.2 x2 with one positive: gap 0.3, weight 2/4.
    # Bin [0.8, 0.867) holds 0.8 x2 with two positives: gap 0.2, weight 2/4.
    p = np.array([0.2, 0.2, 0.8, 0.8])
    y = np.array([1, 0, 1, 1])
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.25)
    assert cal.expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0


def test_platt_fit_on_a_hand_computed_saturated_case():
    """Two score levels, logits -1 and +1, with 1 of 4 and 2 of 3 malignant.
    Platt's targets put 4/5 for a malignant image (n+ = 3) and 1/6 for a benign
    one (n- = 4), so the levels' mean targets are (4/5 + 3/6) / 4 = 0.325 and
    (8/5 + 1/6) / 3 = 53/90; two parameters fit two points exactly, so
    sigmoid(a t + b) equals each, a = (logit(53/90) - logit(0.325)) / 2 and
    b = (logit(0.325) + logit(53/90)) / 2."""
    from edgeskin.runtime.calibration import fit_platt, sigmoid

    x1, x2 = float(sigmoid(-1.0)), float(sigmoid(1.0))
    scores = [x1] * 4 + [x2] * 3
    labels = [1, 0, 0, 0, 1, 1, 0]
    m = fit_platt(scores, labels)
    l1, l2 = np.log(0.325 / 0.675), np.log(53 / 37)
    assert m.slope == pytest.approx((l2 - l1) / 2, abs=1e-6)
    assert m.offset == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert m.apply([x1, x2]) == pytest.approx([0.325, 53 / 90], abs=1e-6)


def test_platt_fit_stays_finite_on_perfectly_separated_scores():
    """Hard targets would send the slope to infinity here (a small site's
    scores can separate its classes perfectly); Platt's targets, 31/32 and
    1/32 for 30 of each class, are met exactly instead."""
    from edgeskin.runtime.calibration import fit_platt

    x = [0.2] * 30 + [0.8] * 30
    m = fit_platt(x, [0] * 30 + [1] * 30)
    assert m.apply([0.2, 0.8]) == pytest.approx([1 / 32, 31 / 32], abs=1e-6)
    assert m.slope == pytest.approx(np.log(31) / np.log(4), abs=1e-6)


def test_platt_identity_and_mediapipe_clamping():
    from edgeskin.runtime.calibration import Platt, inverse_logistic

    x = np.array([0.01, 0.3, 0.5, 0.9])
    assert Platt().apply(x) == pytest.approx(x)
    # MediaPipe's ClampedLog: log(0) becomes 2 log(1e-16) - log(2e-16).
    assert inverse_logistic(0.0) == pytest.approx(np.log(1e-16) - np.log(2.0))
    assert inverse_logistic(1.0) == pytest.approx(-(np.log(1e-16) - np.log(2.0)))
    assert Platt(2.0, 0.5).apply([0.0, 1.0]) == pytest.approx([0.0, 1.0])


def test_platt_fit_recovers_a_known_map():
    from edgeskin.runtime.calibration import fit_platt, sigmoid

    rng = np.random.default_rng(0)
    t = rng.normal(0, 2, 20000)
    y = rng.random(20000) < sigmoid(0.5 * t - 0.7)
    m = fit_platt(sigmoid(t), y)
    assert m.slope == pytest.approx(0.5, abs=0.03) and m.offset == pytest.approx(-0.7, abs=0.05)


def test_platt_refuses_one_class_and_bad_parameters():
    from edgeskin.runtime.calibration import Platt, fit_platt

    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.2, 0.4], [1, 1])
    with pytest.raises(ValueError):
        Platt(-1.0, 0.0)
    with pytest.raises(ValueError):
        Platt(1.0, float("nan"))


@pytest.mark.parametrize("k", [3.0, 8.0])
def test_platt_fit_converges_on_overconfident_scores(k):
    """Newton's method without damping ran away on scores k times too confident."""
    from edgeskin.runtime.calibration import fit_platt, sigmoid

    rng = np.random.default_rng(1)
    t = rng.normal(0, 2, 4000)
    y = rng.random(4000) < sigmoid(t)
    m = fit_platt(sigmoid(k * t), y)
    assert m.slope == pytest.approx(1 / k, rel=0.1) and abs(m.offset) < 0.15


def test_platt_fit_is_not_pulled_by_saturated_int8_scores():
    from edgeskin.runtime.calibration import fit_platt, sigmoid

    rng = np.random.default_rng(2)
    t = rng.normal(0, 2.5, 600)
    y = (rng.random(600) < sigmoid(t)).astype(int)
    x = np.round(sigmoid(t) * 256) / 256  # an int8 output: 0 and 1 occur
    base = fit_platt(x, y)
    zeros = np.nonzero(x == 0)[0]
    assert len(zeros) >= 2
    y2 = y.copy()
    y2[zeros[:2]] = 1  # two surprising cases among the saturated scores
    assert fit_platt(x, y2).slope > 0.8 * base.slope


def test_coinciding_operating_points_are_explained():
    from edgeskin.reporting.site import coinciding

    # 9 benign at 0.1 and one at 0.7; 8 malignant at 0.6 and two at 0.8: at 0.6 sensitivity is 1 and
    # specificity 0.9, so the screening, balanced (J = 0.9) and specific points all land there.
    p = [0.1] * 9 + [0.7] + [0.6] * 8 + [0.8] * 2
    y = [0] * 10 + [1] * 10
    points = {k: v.to_dict() for k, v in cal.choose_operating_points(p, y).items()}
    notes = coinciding(points)
    assert len(notes) == 3 and notes[2].startswith("balanced and specific share the threshold 0.6000")
    assert "best sensitivity + specificity is also the lowest threshold with specificity >= 0.90" in notes[2]
    # Apart, nothing to explain.
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.4
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    apart = {k: v.to_dict() for k, v in cal.choose_operating_points(p, y).items()}
    assert len({v["threshold"] for v in apart.values()}) == 3 and coinciding(apart) == []


def test_platt_refuses_scores_that_barely_vary():
    """Scores 0.0004 apart in logit cannot be stretched into probabilities: the slope would pass 8,000."""
    from edgeskin.runtime.calibration import fit_platt

    with pytest.raises(ValueError, match="barely vary"):
        fit_platt([0.5] * 30 + [0.5001] * 30, [0] * 30 + [1] * 30)


def test_screening_never_sits_above_balanced_nor_specific_below_it():
    """On 40 well-separated scores the bare screening rule stops at 0.512 (sensitivity 0.95), above the
    balanced threshold 0.499 that catches every melanoma: the balanced threshold serves screening too."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)]
    p = np.clip(np.r_[rng.normal(0.35, 0.15, 20), rng.normal(0.65, 0.15, 20)], 0, 1)
    bare = np.sort(p[y == 1])[1]  # the bare rule's threshold: it misses one melanoma of 20
    assert cal.rates(p, y, bare)[0] == pytest.approx(0.95)
    points = cal.choose_operating_points(p, y)
    assert bare > points["balanced"].threshold
    assert points["screening"].threshold <= points["balanced"].threshold <= points["specific"].threshold
    assert points["screening"].threshold == points["balanced"].threshold
    assert (points["screening"].sensitivity, points["screening"].specificity) == (1.0, 0.9)
