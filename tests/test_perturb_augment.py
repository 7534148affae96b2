"""Perturbations and the compression-blind augmentation, on real JPEG bytes."""

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from edgeskin.data import audit, augment, perturb
from conftest import lesion


def _saved(im, **kw):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    buf.seek(0)
    return Image.open(buf)


def _chroma_detail(a: np.ndarray) -> float:
    """High-frequency energy of the Cb/Cr planes: what chroma subsampling removes."""
    ycc = np.asarray(Image.fromarray(a).convert("YCbCr"), dtype=np.float64)[..., 1:]
    return float(np.abs(np.diff(ycc, axis=0)).mean() + np.abs(np.diff(ycc, axis=1)).mean())


@pytest.fixture
def picture():
    rng = np.random.default_rng(3)
    base = np.asarray(lesion(rng, True, size=96)).astype(float)
    # Sharp one-pixel colour stripes: chroma detail that 4:2:0 cannot keep.
    base[:, ::2, 0] += 40
    base[:, 1::2, 2] += 40
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("quality,subsampling", [(95, "4:2:0"), (75, "4:2:0"), (60, "4:2:2"), (90, "4:4:4")])
def test_reencode_writes_the_quality_and_subsampling_asked_for(picture, quality, subsampling):
    out = perturb.reencode(picture, quality, subsampling)
    assert out.size == picture.size and out.mode == "RGB"
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality, subsampling=perturb.SUBSAMPLING[subsampling])
    buf.seek(0)
    with Image.open(buf) as ref:
        assert np.array_equal(np.asarray(ref.convert("RGB")), np.asarray(out))
        assert JpegImagePlugin.get_sampling(ref) == perturb.SUBSAMPLING[subsampling]
        assert abs(audit.jpeg_quality(ref.quantization) - quality) <= 1


def test_reencode_refuses_out_of_range_quality(picture):
    with pytest.raises(ValueError, match="quality"):
        perturb.reencode(picture, 0)


def test_robustness_perturbations_keep_the_size_and_change_the_pixels(picture):
    a = np.asarray(picture)
    for p in perturb.ROBUSTNESS:
        out = p.apply(picture)
        assert out.size == picture.size, p.name
        assert not np.array_equal(np.asarray(out), a), p.name
    assert np.asarray(perturb.BY_NAME["brighter_15"].apply(picture)).mean() > a.mean()
    warm = np.asarray(perturb.BY_NAME["warmer"].apply(picture)).astype(float)
    assert warm[..., 0].mean() > a[..., 0].mean() and warm[..., 2].mean() < a[..., 2].mean()


def test_deployment_pool_stacks_each_quality(picture):
    x = np.stack([np.asarray(picture)] * 3)
    pool = perturb.deployment_pool(x, (95, 50))
    assert pool.shape == (6, 96, 96, 3) and pool.dtype == np.uint8
    assert np.array_equal(pool[0], np.asarray(perturb.reencode(picture, 95)))
    assert np.array_equal(pool[3], np.asarray(perturb.reencode(picture, 50)))


def test_harmonize_erases_the_difference_between_full_and_subsampled_chroma(picture):
    """The isic-binary shortcut: benign files at q100 4:4:4, malignant ones at 4:2:0."""
    full = np.asarray(_saved(picture, quality=100, subsampling=0).convert("RGB"))
    sub = np.asarray(_saved(picture, quality=95, subsampling=2).convert("RGB"))
    before = abs(_chroma_detail(full) - _chroma_detail(sub))
    h = augment.harmonize(np.stack([full, sub]), augment.AugmentOptions(harmonize_quality=90))
    after = abs(_chroma_detail(h[0]) - _chroma_detail(h[1]))
    assert before > 5 * after
    assert _chroma_detail(h[0]) < 0.5 * _chroma_detail(full)


def test_augment_is_seeded_shape_preserving_and_random(picture):
    x = np.stack([np.asarray(picture)] * 4)
    a = augment.augment_batch(x, np.random.default_rng(0))
    b = augment.augment_batch(x, np.random.default_rng(0))
    c = augment.augment_batch(x, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({a[i].tobytes() for i in range(4)}) == 4  # every draw differs


def test_augment_off_keeps_the_image(picture):
    x = np.asarray(picture)
    out = augment.augment(x, np.random.default_rng(0), augment.AugmentOptions.off())
    # Only rotations and flips remain: the same pixels in another order.
    assert sorted(out.ravel().tolist()) == sorted(x.ravel().tolist())


@pytest.mark.parametrize("bad", [dict(jpeg_quality=(50, 20)), dict(jpeg_quality=(0, 90)), dict(subsampling=("4:1:1",)),
                                 dict(crop_scale=(0.0, 1.0)), dict(temperature=1.5), dict(harmonize_quality=101),
                                 dict(jpeg_probability=2.0)])
def test_augment_options_are_validated(bad):
    with pytest.raises(ValueError):
        augment.AugmentOptions(**bad)
