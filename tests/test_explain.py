import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeskin.training import explain
from edgeskin.training import model as model_lib
from edgeskin.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tiny_run):
    return model_lib.load(tiny_run["run"] / "model.keras")


def test_gradcam_map_has_the_image_size_and_range(net, tiny_run):
    image = next((tiny_run["data"] / "test" / "malignant").glob("*.jpg"))
    result = explain.explain(net, image)
    assert result.heatmap.shape == (64, 64)
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.overlay.shape == (64, 64, 3) and result.overlay.dtype == np.uint8
    assert 0.0 <= result.malignant_probability <= 1.0


def test_gradcam_changes_with_the_input(net):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = np.ascontiguousarray(a[::-1, ::-1])
    ha, _ = explain.gradcam(net, a)
    hb, _ = explain.gradcam(net, b)
    assert not np.allclose(ha, hb)


def test_overlay_opacity_bounds():
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    heat = np.ones((8, 8), dtype=np.float32)
    assert (explain.overlay(pixels, heat, 0.0) == 0).all()
    with pytest.raises(ValueError):
        explain.overlay(pixels, heat, 1.5)


def test_explain_cli_writes_pngs(tiny_run, tmp_path):
    image = next((tiny_run["data"] / "test" / "benign").glob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    r = CliRunner().invoke(main, ["explain", str(image), str(bad), "--model", str(tiny_run["run"] / "model.keras"),
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "1 image(s) could not be read" in r.output
    overlay = tmp_path / "out" / f"{image.stem}_overlay.png"
    heat = tmp_path / "out" / f"{image.stem}_heatmap.png"
    assert Image.open(overlay).size == (64, 64) and Image.open(heat).format == "PNG"
