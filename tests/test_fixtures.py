"""The shared tiny models are the same in every test session, so a smoke bar they miss once they miss always."""

import random

import numpy as np

from conftest import _tiny_weights


def test_the_tiny_backbone_does_not_depend_on_the_session_s_random_state(tmp_path_factory):
    import keras

    weights = []
    for state in (1, 2):
        random.seed(state)  # what an earlier test, or a fresh process, leaves behind
        keras.utils.clear_session()
        backbone = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
        backbone.load_weights(_tiny_weights(tmp_path_factory))
        weights.append(backbone.get_weights())
    assert len(weights[0]) == len(weights[1]) > 100
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
