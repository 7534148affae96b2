"""LiteRT.js (@litertjs/core, a dev dependency of web/) runs an edgeskin model in headless Chromium
and answers as `edgeskin predict` does, once the model's batch dimension is fixed at 1.

Skips as tests/test_web.py does without chromium, playwright or web/node_modules.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from edgeskin.runtime import default_model
from test_web import ROOT, TOLERANCE, _requirements, predict, screenshot_folder, split_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return screenshot_folder(tmp_path_factory)

# LiteRT.js (@litertjs/core, a dev dependency): the raw output tensors, dequantised with the
# scales the Python interpreter reports, then the Platt map of edgeskin.json applied here
# (calibration.Platt with MediaPipe's clamped log), as `edgeskin predict` does it.
LITERT_JS = """async ([model, files, quant]) => {
    const lrt = await import('./dist/index.js');
    const {decodeFile, toModelInput} = await import('./preprocess.js');
    const {readModelInfo} = await import('./modelzip.js');
    if (!window.liteRtLoaded) { await lrt.loadLiteRt('./wasm/'); window.liteRtLoaded = true; }
    const bytes = new Uint8Array(await (await fetch(model)).arrayBuffer());
    const {labels, info} = readModelInfo(bytes);
    const compiled = await lrt.loadAndCompile(bytes, {accelerator: 'wasm'});
    const LOG_MIN = 1e-16;
    const clampedLog = (x) => x < LOG_MIN ? 2 * Math.log(LOG_MIN) - Math.log(2 * LOG_MIN - x) : Math.log(x);
    const {slope, offset} = info.score_calibration;
    const platt = (x) => 1 / (1 + Math.exp(-(slope * (clampedLog(x) - clampedLog(1 - x)) + offset)));
    const out = [];
    for (const [name, data] of files) {
        const file = new File([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))], name);
        const input = new lrt.Tensor(toModelInput(await decodeFile(file), 224), [1, 224, 224, 3]);
        const outputs = await compiled.run(input);
        const values = outputs.map((t, i) => Array.from(t.toTypedArray(), (v) => (v - quant[i][1]) * quant[i][0]));
        input.delete();
        outputs.forEach((t) => t.delete());
        const head = values.find((v) => v.length === labels.length);
        out.push({name, raw: head[labels.indexOf('malignant')], p: platt(head[labels.indexOf('malignant')])});
    }
    return out;
}"""


def batch_dimension(model: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return int(Interpreter(model_path=str(model)).get_input_details()[0]["shape_signature"][0])


def litert_js_agrees(chromium, model: Path, tmp_path: Path, shots: Path, n: int = 4) -> None:
    """Run model through LiteRT.js on test images; each answer within 0.005 of `edgeskin predict --model`."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeskin import web

    folder = tmp_path / "litert"
    folder.mkdir()
    core = ROOT / "web" / "node_modules" / "@litertjs"
    for name, target in (("dist", core / "core" / "dist"), ("wasm", core / "core" / "wasm"),
                         ("wasm-utils", core / "wasm-utils" / "dist")):
        (folder / name).symlink_to(target)
    for name in ("preprocess.js", "modelzip.js"):
        shutil.copy(ROOT / "web" / name, folder / name)
    shutil.copy(model, folder / "model.tflite")
    (folder / "index.html").write_text('<!doctype html><title>LiteRT.js</title><script type="importmap">'
                                       '{"imports": {"@litertjs/wasm-utils": "./wasm-utils/index.js"}}</script>')
    quant = [list(d["quantization"]) for d in Interpreter(model_path=str(model)).get_output_details()]
    images = split_images(n // 2)
    server, url = web.serve_in_thread(folder)
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        files = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in images]
        got = page.evaluate(LITERT_JS, ["model.tflite", files, quant])
        page.screenshot(path=str(shots / "web_litert.png"))
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    reference = predict(images, model)
    assert [row["name"] for row in got] == [p.name for p in images]
    for path, row in zip(images, got):
        ref = reference[str(path)]
        assert abs(row["p"] - ref["malignant_probability"]) <= TOLERANCE, (path.name, row, ref)
        assert ("malignant" if row["p"] >= ref["threshold"] else "benign") == ref["label"] or ref["label"] == "unusable"


def test_litert_js_runs_the_shipped_model(chromium, shots, tmp_path):
    """LiteRT.js refuses an open batch dimension; the export fixes it at 1, so the shipped file runs there unchanged."""
    model = default_model()
    assert batch_dimension(model) == 1
    litert_js_agrees(chromium, model, tmp_path, shots, n=8)
