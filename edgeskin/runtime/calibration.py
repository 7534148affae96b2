"""Turning scores into probabilities that mean what they say, and thresholds.

Pure numpy, so it is checked by hand-computed cases and shared by training,
export (which re-derives the operating points from the int8 model's own
outputs) and evaluation.

Decision rule everywhere: malignant when malignant_probability >= threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Named operating points and the rule that picks each on the calibration split.
SCREENING_SENSITIVITY = 0.95
SPECIFIC_SPECIFICITY = 0.90
OPERATING_POINT_NAMES = ("screening", "balanced", "specific")
DEFAULT_OPERATING_POINT = "screening"


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def logit(p, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    # log(1 + e^-z) for positives, log(1 + e^z) for negatives, without overflow.
    return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))


def fit_temperature(logits, labels, lo: float = 0.05, hi: float = 20.0, iterations: int = 100) -> float:
    """The temperature T that minimises the NLL of sigmoid(logit / T).

    One parameter cannot change the ranking, so AUC and every threshold's
    sensitivity are untouched; only the probabilities become honest. The NLL
    is unimodal in log T, so a golden-section search is enough.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(logits) == 0 or len(np.unique(labels)) < 2:
        raise ValueError("temperature scaling needs both classes in the calibration split")
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float
    sensitivity: float  # on the split it was chosen on
    specificity: float

    def to_dict(self) -> dict:
        return asdict(self)


def rates(probabilities, labels, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule p >= threshold."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    flagged = p >= threshold
    return float(flagged[y].mean()), float((~flagged[~y]).mean())


def _sweep(p: np.ndarray, y: np.ndarray):
    """Every distinct threshold worth trying, with its sensitivity and specificity.

    Thresholds are the observed scores themselves, plus one above them all, so
    ties (an int8 model has only 256 output levels) are never split.
    """
    t = np.unique(p)
    t = np.append(t, np.nextafter(t[-1], np.inf))
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    sens = 1.0 - np.searchsorted(pos, t, side="left") / len(pos)
    spec = np.searchsorted(neg, t, side="left") / len(neg)
    return t, sens, spec


def choose_operating_points(probabilities, labels,
                            screening_sensitivity: float = SCREENING_SENSITIVITY) -> dict[str, OperatingPoint]:
    """Pick the named operating points on one (calibration) split.

    screening: the highest threshold whose sensitivity is >= 0.95 (or
               screening_sensitivity), because a missed melanoma costs far
               more than a false alarm;
    balanced:  the threshold that maximises Youden's J (sens + spec - 1);
    specific:  the lowest threshold whose specificity is >= 0.90.

    Screening never sits above balanced, nor specific below it: on a small
    split the scores separate well, the screening rule could stop above a
    balanced threshold that catches more melanomas, and the points would read
    in the wrong order. There the balanced threshold serves both.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("choosing operating points needs both classes")
    t, sens, spec = _sweep(p, y)

    def point(name, i):
        return OperatingPoint(name, float(min(t[i], 1.0)), float(sens[i]), float(spec[i]))

    if not 0.0 < screening_sensitivity <= 1.0:
        raise ValueError(f"screening sensitivity must lie in (0, 1], got {screening_sensitivity}")
    screening = np.nonzero(sens >= screening_sensitivity)[0].max()  # t[0] has sensitivity 1
    specific = np.nonzero(spec >= SPECIFIC_SPECIFICITY)[0].min()  # the last t has specificity 1
    j = sens + spec - 1
    balanced = np.nonzero(j == j.max())[0].min()  # on a tie, the more sensitive one
    screening, specific = min(screening, balanced), max(specific, balanced)
    return {
        "screening": point("screening", screening),
        "balanced": point("balanced", balanced),
        "specific": point("specific", specific),
    }


def expected_calibration_error(probabilities, labels, bins: int = 15) -> float:
    """ECE with equal-width bins: the mean |accuracy - confidence| gap, weighted by bin size.

    For a binary model the 'confidence' is the malignant probability and the
    'accuracy' the fraction of malignant cases in the bin.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(p))


# Platt scaling, in the form TFLite Model Metadata carries it
# (ScoreCalibrationOptions, INVERSE_LOGISTIC): the model's probability x is
# mapped to scale / (1 + exp(-(slope * logit(x) + offset))). The clamped log
# below is MediaPipe's own, so that edgeskin and MediaPipe agree even on
# scores of exactly 0 or 1, which an int8 output does produce.
_LOG_MIN = 1e-16


def _clamped_log(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    low = x < _LOG_MIN
    # Each branch sees only arguments it can take the log of.
    return np.where(low, 2.0 * np.log(_LOG_MIN) - np.log(np.where(low, 2.0 * _LOG_MIN - x, 1.0)),
                    np.log(np.where(low, 1.0, x)))


def inverse_logistic(x) -> np.ndarray:
    """MediaPipe's INVERSE_LOGISTIC transformation: log(x) - log(1 - x), clamped."""
    x = np.asarray(x, dtype=np.float64)
    return _clamped_log(x) - _clamped_log(1.0 - x)


@dataclass(frozen=True)
class Platt:
    """p = sigmoid(slope * logit(x) + offset); Platt(1, 0) changes nothing."""

    slope: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (np.isfinite(self.slope) and np.isfinite(self.offset)) or self.slope <= 0:
            raise ValueError(f"a Platt map needs a finite positive slope and a finite offset, got {self.slope}, {self.offset}")

    def apply(self, x) -> np.ndarray:
        return sigmoid(self.slope * inverse_logistic(x) + self.offset)

    def invert(self, p) -> np.ndarray:
        """The model's own score that this map turns into p (up to MediaPipe's clamping at 0 and 1)."""
        return sigmoid((logit(p, eps=1e-12) - self.offset) / self.slope)

    def to_dict(self) -> dict:
        return {"type": "platt", "transformation": "inverse_logistic", "slope": self.slope, "offset": self.offset}


# An int8 output of exactly 0 or 1 has a clamped logit near -/+37.5, while
# its neighbour 1/256 sits near -5.5: fitted as they are, a handful of such
# scores would pull the slope. The fit sees exact 0s and 1s at half a step
# instead; the map is still applied to the true score, so 0 still maps to ~0.
_FIT_CLIP = 1.0 / 512
MAX_PLATT_SLOPE = 50.0


def _platt_nll(X, y, w) -> float:
    z = X @ w
    return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))


def _platt_targets(labels) -> np.ndarray:
    """Platt's targets, (n+ + 1) / (n+ + 2) for a malignant label and 1 / (n- + 2) for a benign one.

    On a set the scores separate perfectly, as a small site's can be, targets
    of 1 and 0 send the slope to infinity, and no finite set justifies
    probabilities of exactly 0 or 1 anyway.
    """
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("Platt scaling needs both classes in the calibration data")
    n_pos = float(y.sum())
    return np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (len(y) - n_pos + 2))


def fit_platt(scores, labels, iterations: int = 200) -> Platt:
    """The Platt map that minimises the NLL of the labels: damped Newton steps.

    scores are the model's probabilities (not logits). Two parameters: the
    slope fixes over- or under-confidence as a temperature would, and the
    offset fixes a shift of every probability up or down, which a
    temperature cannot (the prevalence or camera of a new site moves it).
    Each Newton step is halved until the NLL falls, so a badly over- or
    under-confident model converges instead of running away. The targets
    are Platt's own (_platt_targets), not 0 and 1.
    """
    x = np.asarray(scores, dtype=np.float64)
    t = inverse_logistic(np.where(x <= 0.0, _FIT_CLIP, np.where(x >= 1.0, 1.0 - _FIT_CLIP, x)))
    y = _platt_targets(labels)
    X = np.stack([t, np.ones_like(t)], axis=1)
    w = np.array([1.0, 0.0])
    loss = _platt_nll(X, y, w)
    for _ in range(iterations):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and _platt_nll(X, y, w - scale * step) > loss:
            scale /= 2
        w, new_loss = w - scale * step, _platt_nll(X, y, w - scale * step)
        done = abs(loss - new_loss) < 1e-12 or np.abs(scale * step).max() < 1e-10
        loss = new_loss
        if done:
            break
    if not w[0] > 0:
        raise ValueError("the scores rank the classes the wrong way round: no Platt map with a positive slope fits")
    if not w[0] <= MAX_PLATT_SLOPE:
        raise ValueError(f"the scores barely vary (Platt slope {w[0]:.3g}): they cannot be calibrated")
    return Platt(float(w[0]), float(w[1]))
