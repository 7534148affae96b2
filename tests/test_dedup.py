import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from conftest import lesion
from edgeskin.data import dedup


def _scene(rng, size=224):
    """A different picture each time: several blobs of random size, place and shade."""
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 240, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(15, 60))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(20, 140, 3)))
    return im


def _save(im, path, **kw):
    im.save(path, **kw)
    return path


def test_copies_are_found_and_distinct_lesions_are_not(tmp_path):
    rng = np.random.default_rng(3)
    original = lesion(rng, True, size=224)
    variants = [
        _save(original, tmp_path / "orig.jpg", quality=95),
        _save(original, tmp_path / "reencoded.jpg", quality=40),
        _save(original.resize((150, 150)), tmp_path / "resized.png"),
        _save(ImageEnhance.Color(original).enhance(0.4), tmp_path / "recoloured.jpg"),
        _save(ImageEnhance.Brightness(original).enhance(1.15), tmp_path / "brighter.jpg"),
    ]
    others = [_save(_scene(rng), tmp_path / f"other{k}.jpg") for k in range(6)]
    h = np.array([dedup.phash(p) for p in variants + others])
    d = dedup.hamming(h, h)
    assert d[0, 1:5].max() <= dedup.DEFAULT_MAX_DISTANCE
    report = dedup.cluster(h)
    assert len(set(report.groups[:5])) == 1
    assert report.images_in_clusters >= 5
    flagged = dedup.near_duplicates_of(h[5:], h[:1])
    assert not flagged.any()


def test_hamming_matches_a_direct_count():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 256)) < 0.5, rng.random((7, 256)) < 0.5
    direct = np.array([[int((x != y).sum()) for y in b] for x in a])
    assert (dedup.hamming(a, b) == direct).all()


def test_clusters_are_transitive():
    base = np.zeros(256, dtype=bool)
    a, b, c = base.copy(), base.copy(), base.copy()
    b[:40] = True  # a-b: 40
    c[:80] = True  # b-c: 40, a-c: 80 (too far on its own)
    far = np.ones(256, dtype=bool)
    report = dedup.cluster(np.array([a, b, c, far]), max_distance=56)
    assert report.groups[0] == report.groups[1] == report.groups[2] != report.groups[3]
    assert report.pairs == 2 and report.clusters == 1
