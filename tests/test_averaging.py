"""The weight average (EMA) that fine-tuning can score and keep in place of the weights as trained."""

from __future__ import annotations

import numpy as np
import pytest

from edgeskin.training.averaging import WeightAverage


class Var:
    """Just what the average touches of a Keras variable: numpy() and assign()."""

    def __init__(self, value):
        self.value = np.array(value, dtype=np.float32)

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        self.value = np.array(value, dtype=np.float32)


def test_the_average_follows_the_steps_by_its_momentum():
    v = Var([0.0, 10.0])
    average = WeightAverage([v], 0.5)
    for step in (2.0, 4.0):
        v.assign(v.value + step)
        average.update()
    # 0.5 * (0.5 * start + 0.5 * after step 1) + 0.5 * after step 2, by hand: start 0, then 2, then 6.
    assert np.allclose(average.values[0], [0.25 * 0 + 0.25 * 2 + 0.5 * 6, 0.25 * 10 + 0.25 * 12 + 0.5 * 16])


def test_applied_swaps_the_average_in_and_puts_the_weights_back():
    v = Var([1.0, 2.0])
    average = WeightAverage([v], 0.9, values=[np.array([5.0, 6.0])])
    with average.applied():
        assert np.array_equal(v.value, [5.0, 6.0])
    assert np.array_equal(v.value, [1.0, 2.0])
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("a failing score")
    assert np.array_equal(v.value, [1.0, 2.0])  # put back even when scoring fails


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.1])
def test_a_momentum_outside_the_open_interval_is_refused(momentum):
    with pytest.raises(ValueError, match="momentum"):
        WeightAverage([Var([0.0])], momentum)


def test_a_saved_average_must_match_the_variables():
    with pytest.raises(ValueError, match="cannot stand for"):
        WeightAverage([Var([0.0]), Var([1.0])], 0.9, values=[np.zeros(1)])


def test_the_options_refuse_a_bad_momentum():
    from edgeskin.training.options import TrainOptions

    assert TrainOptions(ema_momentum=0.999).ema_momentum == 0.999
    with pytest.raises(ValueError, match="ema_momentum"):
        TrainOptions(ema_momentum=1.0)
