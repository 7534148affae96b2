"""edgeskin.web without a browser: what the static site holds, how it is served, what it refuses."""

from __future__ import annotations

import gzip
import json
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from edgeskin import web
from edgeskin.runtime import default_model

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
