import numpy as np
import pytest
from PIL import Image

from edgeskin.runtime.imageio import ImageError, find_images, load_rgb


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 image, left half black, stored with "rotate 90 CW to view" (6).
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    im = load_rgb(tmp_path / "sideways.jpg", 20)
    # Upright it is 20 wide and 40 tall: black on top, white below.
    assert im[:8].mean() < 40 and im[-8:].mean() > 215


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "I;16"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    Image.new("RGB", (30, 50), (200, 100, 50)).convert(mode).save(path)
    im = load_rgb(path, 16)
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8


def test_transparent_pixels_go_on_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png", 10).min() == 255


def test_centre_crop_keeps_the_middle(tmp_path):
    a = np.zeros((10, 30, 3), dtype=np.uint8)
    a[:, 10:20] = 255  # the central square is white, the sides black
    Image.fromarray(a).save(tmp_path / "wide.png")
    assert load_rgb(tmp_path / "wide.png", 10).min() == 255


@pytest.mark.parametrize("content", [b"", b"hello, I am text", b"\xff\xd8\xff\xe0" + b"\x00" * 50])
def test_bad_files_raise_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg"):
        load_rgb(path, 32)


def test_truncated_jpeg(tmp_path):
    Image.new("RGB", (200, 200), (10, 200, 30)).save(tmp_path / "full.jpg")
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError):
        load_rgb(tmp_path / "cut.jpg", 32)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_rgb(tmp_path / "nope.jpg", 32)


def test_find_images_recurses_and_keeps_named_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / "a", tmp_path / "a" / "notes.txt"])
    assert [p.name for p in found] == ["1.jpg", "2.PNG", "notes.txt"]


def test_sixteen_bit_greyscale_keeps_its_contrast(tmp_path):
    ramp = (np.linspace(0, 4000, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # uint16: mode I;16
    im = load_rgb(tmp_path / "deep.png", 64)
    assert im.min() == 0 and im.max() == 255 and 100 < im.mean() < 155
