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


def test_every_module_and_script_the_docs_name_exists():
    """Paths in the README and docs go stale when code moves (the layout change left ten behind)."""
    docs = [ROOT / "README.md", ROOT / "web" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(doc.name, path) for doc in docs
             for path in re.findall(r"(?<![\w/.])((?:edgeskin|scripts|tests)/[\w/]+\.(?:py|sh))", doc.read_text())}
    assert len(named) > 10  # the pattern still finds what the docs name
    assert not sorted(p for p in named if not (ROOT / p[1]).is_file())


def _printed(*args: str) -> list[str]:
    """What `edgeskin predict ARGS` prints, run from the repository root as the README's examples are."""
    from click.testing import CliRunner

    from edgeskin.cli import main

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(main, ["predict", *args])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()


def test_the_readme_sample_output_is_what_predict_prints():
    """The first output a new user compares with: it went stale once when the shipped model was re-exported,
    and the diagnosis example once when the model was replaced."""
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"Output, one line per image.*?```\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert _printed("data/samples/", "--threshold", "0.4") == shown
    shown = re.search(r"\*\*Diagnosis\.\*\*.*?```\n(.*?)```", text, re.S).group(1).strip().splitlines()
    sample = "data/samples/malignant_1.jpg"
    assert shown == _printed(sample, "--diagnosis") + _printed(sample, "--diagnosis", "--json")
