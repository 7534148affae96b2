"""scripts/compare_diagnosis_losses.py: the class-balanced draw its sampling row trains on."""

from dataclasses import dataclass

import numpy as np

from conftest import load_script


@dataclass(frozen=True)
class _Arrays:  # the fields of training.arrays.Arrays the draw reads
    y_train: np.ndarray
    w_train: np.ndarray
    d_train: np.ndarray


def test_every_diagnosis_is_drawn_equally_often_and_images_without_one_keep_their_share():
    # 900 naevi, 90 melanomas, 10 dermatofibromas, 1,000 images with no diagnosis.
    dx = np.repeat([0, 1, 2, -1], [900, 90, 10, 1000])
    d = np.zeros((len(dx), 3), dtype=np.float32)
    d[dx >= 0, dx[dx >= 0]] = 1.0
    arrays = _Arrays(np.arange(len(dx)), np.ones(len(dx), np.float32), d)
    features = (np.arange(len(dx))[:, None].astype(np.float32), np.zeros((5, 1)))

    drawn, (f_train, f_cal) = load_script("compare_diagnosis_losses").balanced_draw(arrays, features, seed=0)

    assert len(drawn.y_train) == len(dx) and f_cal is features[1]
    # The rows stay together: targets, weights and features of one draw are the same image's.
    np.testing.assert_array_equal(f_train[:, 0].astype(int), drawn.y_train)
    np.testing.assert_array_equal(drawn.d_train, d[drawn.y_train])
    counts = drawn.d_train.sum(axis=0)
    assert np.all(np.abs(counts - 1000 / 3) < 60)  # about 333 each, where the data has 900, 90 and 10
    assert abs(int((drawn.d_train.sum(axis=1) == 0).sum()) - 1000) < 80
