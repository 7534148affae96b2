"""The README's Python snippet runs as written, from the project's root, on the shipped model."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_snippet_runs():
    code = _python_snippet()
    assert "edgeskin.Classifier" in code
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = out.getvalue().strip().splitlines()
    # What the snippet prints is what `edgeskin predict --json` says of the same image.
    from edgeskin.runtime import Classifier

    expected = Classifier().classify(ROOT / "data" / "samples" / "malignant_1.jpg")
    assert printed[0].split()[0] == expected.label
    assert abs(float(printed[0].split()[1]) - expected.malignant_probability) < 1e-3
