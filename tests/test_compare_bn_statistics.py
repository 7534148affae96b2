"""scripts/compare_bn_statistics.py: batch-norm statistics re-estimated on the target images (AdaBN)."""

import numpy as np

from conftest import load_script


def test_the_statistics_become_the_mean_of_the_batches_and_the_momenta_come_back():
    import keras

    from edgeskin.training import model as model_lib

    keras.utils.set_random_seed(0)
    serving, _, _ = model_lib.build(model_lib.ModelOptions(image_size=32, alpha=0.35, weights="none"))
    backbone, pre = model_lib.backbone_of(serving), serving.get_layer("preprocess")
    norm = backbone.get_layer("bn_Conv1")
    momentum = norm.momentum
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (8, 32, 32, 3)).astype("float32") for _ in range(3)]
    conv = keras.Model(backbone.input, backbone.get_layer("Conv1").output)
    means = [np.asarray(conv(pre(x))).mean(axis=(0, 1, 2)) for x in batches]

    load_script("compare_bn_statistics").reestimate(keras, serving, iter(batches))

    # Batch k weighs 1/k in a running mean: after three batches, their plain average.
    np.testing.assert_allclose(np.asarray(norm.moving_mean), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(norm.moving_mean), means[-1], atol=1e-5)
    assert norm.momentum == momentum
