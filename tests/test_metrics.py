import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

from edgeskin.runtime import calibration
from edgeskin.reporting import metrics


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.45
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.18), 0, 1)
    return y.astype(int), p


def test_at_threshold_hand_computed():
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.6]
    m = metrics.at_threshold(y, p, 0.6)
    assert m["confusion"] == {"tp": 2, "fn": 1, "fp": 2, "tn": 2}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(0.5)
    assert m["ppv"] == pytest.approx(0.5) and m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_at_threshold_agrees_with_sklearn():
    y, p = _data(300)
    m = metrics.at_threshold(y, p, 0.5)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5).ravel()
    assert m["confusion"] == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    assert m["f1"] == pytest.approx(f1_score(y, p >= 0.5))


def test_specificity_at_sensitivity_hand_computed():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1]
    # Sensitivity 1.0 needs t <= 0.3: negatives 0.6 and 0.4 flagged, specificity 0.5.
    assert metrics.specificity_at_sensitivity(y, p, 0.99) == pytest.approx(0.5)
    # Sensitivity 0.75 allows t = 0.7: no negative flagged.
    assert metrics.specificity_at_sensitivity(y, p, 0.75) == pytest.approx(1.0)


def test_report_point_estimates_match_sklearn():
    y, p = _data(400, seed=2)
    r = metrics.report(y, p, {"screening": 0.3}, temperature=1.5, n_boot=200)
    assert r["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert r["pr_auc"]["value"] == pytest.approx(average_precision_score(y, p))
    assert r["brier"]["value"] == pytest.approx(np.mean((p - y) ** 2))
    assert r["ece"]["value"] == pytest.approx(calibration.expected_calibration_error(p, y))
    before = calibration.expected_calibration_error(metrics.uncalibrated(p, 1.5), y)
    assert r["ece_before_temperature"]["value"] == pytest.approx(before)
    assert set(r["specificity_at_sensitivity"]) == {"0.90", "0.95", "0.99"}
    assert r["thresholds"]["screening"]["sensitivity"]["value"] == pytest.approx(np.mean(p[y == 1] >= 0.3))


def test_bootstrap_interval_contains_estimate_and_narrows():
    widths = []
    for n in (100, 2000):
        y, p = _data(n, seed=5)
        lo, hi = metrics.bootstrap(roc_auc_score, y, p, n=400, seed=1)
        assert lo <= roc_auc_score(y, p) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_uncalibrated_undoes_temperature():
    from edgeskin.runtime.calibration import sigmoid

    z = np.array([-3.0, 0.0, 2.0])
    assert metrics.uncalibrated(sigmoid(z / 2.0), 2.0) == pytest.approx(sigmoid(z))
