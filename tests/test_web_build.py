"""edgeskin.web without a browser: what the static site holds, how it is served, what it refuses;
and scripts/web_batch1.py, which fixes a model's batch dimension for LiteRT.js."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeskin import web
from edgeskin.runtime import Classifier, default_model

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "web" / "node_modules" / "@mediapipe" / "tasks-vision"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not NODE_MODULES.is_dir():
        pytest.skip("web/node_modules is missing (npm ci --prefix web)")
    return web.build(default_model(), tmp_path_factory.mktemp("site"))


def test_site_holds_the_page_one_wasm_build_and_the_model(site):
    files = set(site.files)
    assert {"index.html", "app.js", "sw.js", "manifest.webmanifest", "model.tflite"} <= files
    assert [f for f in files if f.endswith(".wasm")] == ["mediapipe/wasm/vision_wasm_internal.wasm"]
    assert (site.folder / "model.tflite").read_bytes() == default_model().read_bytes()
    raw = sum((site.folder / f).stat().st_size for f in files)
    assert site.total_bytes == raw and 0 < site.gzip_bytes < raw


def test_every_local_reference_of_the_page_is_in_the_site(site):
    """The page, its manifest and the fileset point only at files the site holds: nothing from a CDN."""
    manifest = json.loads((site.folder / "manifest.webmanifest").read_text())
    assert manifest["display"] == "standalone" and manifest["name"]
    for icon in manifest["icons"]:
        assert icon["src"] in site.files
        with Image.open(site.folder / icon["src"]) as im:
            assert f"{im.width}x{im.height}" == icon["sizes"]
    own = [f for f in site.files if f.endswith((".html", ".js", ".css", ".webmanifest")) and "/" not in f]
    assert len(own) == len([f for f in web.PAGE_FILES])
    for name in own:  # no absolute URL anywhere in the page's own files
        assert "://" not in (site.folder / name).read_text(), name
    page = (site.folder / "classify.js").read_text()
    for name in ("mediapipe/wasm/vision_wasm_internal.js", "mediapipe/wasm/vision_wasm_internal.wasm",
                 "mediapipe/vision_bundle.mjs"):
        assert name.split("/", 1)[1] in page and name in site.files


def test_service_worker_precaches_every_file_under_a_content_version(site, tmp_path):
    sw = (site.folder / "sw.js").read_text()
    files = json.loads(sw.split("const FILES = ", 1)[1].split(";\n", 1)[0])
    assert sorted(files) == sorted(["./"] + [f for f in site.files if f != "sw.js"])
    version = sw.split("const VERSION = '", 1)[1].split("'", 1)[0]
    assert len(version) == 16
    # The same files, the same version; one byte changed, another version, so that the
    # new site replaces the old cache instead of mixing with it.
    again = web.build(default_model(), tmp_path / "same")
    assert f"const VERSION = '{version}'" in (again.folder / "sw.js").read_text()
    sources = tmp_path / "web"
    shutil.copytree(ROOT / "web", sources, ignore=shutil.ignore_patterns("node_modules"))
    (sources / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    (sources / "style.css").write_text((sources / "style.css").read_text() + "\n")
    changed = web.build(default_model(), tmp_path / "changed", web_root=sources)
    assert f"const VERSION = '{version}'" not in (changed.folder / "sw.js").read_text()


def test_server_types_wasm_manifest_and_model(site):
    server, url = web.serve_in_thread(site.folder)
    try:
        for name, mime in (("mediapipe/wasm/vision_wasm_internal.wasm", "application/wasm"),
                           ("manifest.webmanifest", "application/manifest+json"),
                           ("model.tflite", "application/octet-stream"), ("app.js", "text/javascript"),
                           ("index.html", "text/html")):
            with urllib.request.urlopen(url + name) as r:
                assert r.headers.get_content_type() == mime, name
        assert url.startswith("http://127.0.0.1:")
    finally:
        server.shutdown()
        server.server_close()


def test_refuses_a_missing_model_a_non_model_and_missing_packages(tmp_path):
    with pytest.raises(web.WebError, match="no such model file"):
        web.build(tmp_path / "nope.tflite", tmp_path / "out")
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    with pytest.raises(web.WebError, match="not a TFLite model"):
        web.build(text, tmp_path / "out")
    bare = tmp_path / "web"
    bare.mkdir()
    with pytest.raises(web.WebError, match="npm ci --prefix web"):
        web.build(default_model(), tmp_path / "out", web_root=bare)
    assert issubclass(web.WebError, ValueError)


def test_a_busy_port_is_a_clear_error(site):
    server, url = web.serve_in_thread(site.folder)
    try:
        with pytest.raises(web.WebError, match="cannot listen on 127.0.0.1"):
            web.make_server(site.folder, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_gzip_weight_is_what_gzip_makes(site):
    one = site.folder / "app.js"
    assert web.weigh(site.folder)[1] == site.gzip_bytes
    assert len(gzip.compress(one.read_bytes(), 9, mtime=0)) < one.stat().st_size


def batch1(model: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "web_batch1.py"), str(model), str(out)],
                          capture_output=True, text=True, timeout=120)


def test_batch1_copy_keeps_outputs_and_metadata(tmp_path):
    """Only the signature changes: the same outputs on an image, the same metadata, the same length."""
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "b1.tflite"
    run = batch1(default_model(), out)
    assert run.returncode == 0, run.stderr
    fixed = Interpreter(model_path=str(out))
    assert fixed.get_input_details()[0]["shape_signature"].tolist() == [1, 224, 224, 3]
    assert all(d["shape_signature"][0] == 1 for d in fixed.get_output_details())
    assert out.stat().st_size == default_model().stat().st_size
    pixels = np.asarray(Image.new("RGB", (224, 224), (190, 140, 120)), dtype=np.uint8)
    a, b = Classifier(default_model()), Classifier(out)
    assert a.info == b.info
    assert a.raw_outputs(pixels)[0] == b.raw_outputs(pixels)[0]
    assert np.array_equal(a.raw_outputs(pixels)[1], b.raw_outputs(pixels)[1])


def test_batch1_refuses_a_non_model(tmp_path):
    text = tmp_path / "x.tflite"
    text.write_text("hello")
    run = batch1(text, tmp_path / "o")
    assert run.returncode == 1 and "not a TFLite model" in run.stderr
