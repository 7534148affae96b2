"""The web app as a static site: assemble it, or serve it on this machine.

The page (web/) runs the model in the browser with MediaPipe Tasks Vision,
so the site is nothing but static files: the page's own sources, the one
MediaPipe wasm build Chromium-class browsers use (SIMD), and the model as
model.tflite. Any static host serves it; `serve` is Python's http.server on
127.0.0.1 for trying it out. Nothing here runs a model.

    from edgeskin import web
    web.build("models/edgeskin_int8.tflite", "site/")       # deploy site/ anywhere
    web.serve(None, 8000, on_ready=print)                    # the shipped model, until Ctrl-C
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgeskin.runtime import Classifier, default_model

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
PAGE_FILES = ("index.html", "style.css", "app.js", "classify.js", "gate.js", "modelzip.js", "preprocess.js",
              "sw.js", "manifest.webmanifest")
# Only what the page loads: the ES module bundle and the SIMD wasm build
# (every browser with wasm SIMD, Chromium since 91, Safari since 16.4);
# the no-SIMD and module builds would double the download for nothing.
MEDIAPIPE = Path("node_modules/@mediapipe/tasks-vision")
MEDIAPIPE_FILES = ("vision_bundle.mjs", "wasm/vision_wasm_internal.js", "wasm/vision_wasm_internal.wasm")
MODEL_NAME = "model.tflite"
SW_FILES_MARK = "[/* filled in by edgeskin.web.build */]"
SW_VERSION_MARK = "const VERSION = 'dev';"
MIME_TYPES = {".wasm": "application/wasm", ".webmanifest": "application/manifest+json",
              ".tflite": "application/octet-stream", ".mjs": "text/javascript", ".js": "text/javascript",
              ".json": "application/json", ".png": "image/png"}


class WebError(ValueError):
    """A site that cannot be built: no model, not a model, no npm packages."""


@dataclass(frozen=True)
class Site:
    """A built site: its folder, its files (relative paths), and its weight in bytes, raw and gzipped."""

    folder: Path
    files: tuple[str, ...]
    total_bytes: int
    gzip_bytes: int


def check_model(model_path) -> Path:
    """The model file to ship, checked: it exists, is a TFLite flatbuffer and an edgeskin model."""
    path = Path(model_path) if model_path is not None else default_model()
    if not path.is_file():
        raise WebError(f"{path}: no such model file")
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise WebError(f"{path}: not a TFLite model (.tflite)")
    try:
        Classifier(path)  # the page reads the same metadata; refuse here what it would refuse there
    except ValueError as exc:
        raise WebError(str(exc)) from exc
    return path


def _mediapipe_dir(web_root: Path) -> Path:
    folder = web_root / MEDIAPIPE
    missing = [name for name in MEDIAPIPE_FILES if not (folder / name).is_file()]
    if missing:
        raise WebError(f"{folder} lacks {missing[0]}: run `npm ci --prefix web` first")
    return folder


def _copy_sources(web_root: Path, out: Path) -> None:
    for name in PAGE_FILES:
        shutil.copy2(web_root / name, out / name)
    shutil.copytree(web_root / "icons", out / "icons", dirs_exist_ok=True)


def _site_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _write_service_worker(out: Path) -> None:
    """Fill in sw.js's precache list and a version that changes with any file of the site."""
    files = [f for f in _site_files(out) if f != "sw.js"]
    digest = hashlib.sha256()
    for name in files + ["sw.js"]:
        digest.update(name.encode() + b"\0" + (out / name).read_bytes())
    sw = (out / "sw.js").read_text()
    if SW_FILES_MARK not in sw or SW_VERSION_MARK not in sw:
        raise WebError(f"{out / 'sw.js'}: the precache marks are missing")
    sw = sw.replace(SW_FILES_MARK, json.dumps(["./"] + files)).replace(
        SW_VERSION_MARK, f"const VERSION = '{digest.hexdigest()[:16]}';")
    (out / "sw.js").write_text(sw)


def weigh(folder) -> tuple[int, int]:
    """Total bytes of a site's files, raw and each gzipped (level 9, as `gzip -9` precompresses them)."""
    folder = Path(folder)
    raw = packed = 0
    for name in _site_files(folder):
        data = (folder / name).read_bytes()
        raw += len(data)
        packed += len(gzip.compress(data, compresslevel=9, mtime=0))
    return raw, packed


def build(model_path=None, out_dir="site", web_root=WEB_ROOT) -> Site:
    """Assemble the static site in out_dir (created or refreshed) and return what it holds."""
    model = check_model(model_path)
    web_root = Path(web_root)
    mediapipe = _mediapipe_dir(web_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _copy_sources(web_root, out)
    for name in MEDIAPIPE_FILES:
        target = out / "mediapipe" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mediapipe / name, target)
    shutil.copy2(model, out / MODEL_NAME)
    _write_service_worker(out)
    raw, packed = weigh(out)
    return Site(out, tuple(_site_files(out)), raw, packed)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self):
        # Revalidate every time: the service worker, not the HTTP cache, keeps the offline copy.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):  # one line per request would drown the URL
        pass


def make_server(folder, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for a built site (port 0: any free port); call serve_forever() or use in a thread."""
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise WebError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve_in_thread(folder, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve a built site from a background thread; returns the server (shutdown() it) and its URL."""
    server = make_server(folder, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, url_of(server)


def serve(model_path=None, port: int = 8000, on_ready=print) -> None:
    """Build the site into a temporary folder and serve it on 127.0.0.1 until interrupted.

    on_ready(message) is called once, with the URL, when the server listens.
    """
    with tempfile.TemporaryDirectory(prefix="edgeskin-web-") as tmp:
        site = build(model_path, tmp)
        server = make_server(site.folder, port)
        on_ready(f"edgeskin web: serving {url_of(server)} ({site.gzip_bytes / 1e6:.1f} MB gzipped; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
