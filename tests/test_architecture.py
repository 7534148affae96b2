"""The layout's rules, checked on the source: which package may import which.

- edgeskin.runtime is what a device carries: it imports nothing else of edgeskin, and none of
  the training stack (TensorFlow, Keras, scikit-learn, OpenCV, matplotlib), not even lazily.
- Nothing imports the command line (edgeskin.cli): it is the outermost layer.
- Reporting reads a run through the run-folder module, edgeskin.training.run, never through
  training's internals.
- Data is below training: it never imports it.

The rules read every import statement, function-level ones included, with ast; the last test
plants a forbidden import in a copy of the package and shows that the check catches it.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeskin"
TRAINING_STACK = {"tensorflow", "keras", "sklearn", "cv2", "matplotlib", "streamlit"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package (vendored code aside) -> the modules it imports, anywhere in its body."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "_vendor" in path.parts:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                # "from edgeskin.training import run" imports the module edgeskin.training.run
                names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module.startswith("edgeskin"))
        found[_module_name(path, root)] = names
    return found


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path = PACKAGE) -> list[str]:
    """Each forbidden arrow, as 'importer -> imported: rule'."""
    out = []
    graph = imports(root)
    for module, names in graph.items():
        for name in sorted(names):
            top = name.split(".")[0]
            if _inside(module, "edgeskin.runtime"):
                if top == "edgeskin" and name != "edgeskin" and not _inside(name, "edgeskin.runtime"):
                    out.append(f"{module} -> {name}: the runtime imports only the runtime")
                if top in TRAINING_STACK:
                    out.append(f"{module} -> {name}: the runtime never loads the training stack")
            if _inside(name, "edgeskin.cli") and module != "edgeskin.cli":
                out.append(f"{module} -> {name}: nothing imports the command line")
            if (_inside(module, "edgeskin.reporting") and _inside(name, "edgeskin.training")
                    and name != "edgeskin.training" and not _inside(name, "edgeskin.training.run")):
                out.append(f"{module} -> {name}: reporting reads runs through edgeskin.training.run only")
            if _inside(module, "edgeskin.data") and _inside(name, "edgeskin.training"):
                out.append(f"{module} -> {name}: data never imports training")
    return out


def test_the_layout_has_its_packages():
    graph = imports()
    for package in ("edgeskin.runtime", "edgeskin.data", "edgeskin.training", "edgeskin.reporting"):
        assert any(_inside(m, package) for m in graph), package
    assert "edgeskin.runtime.classifier" in graph and "edgeskin.training.run" in graph


def test_no_forbidden_import():
    assert violations() == []


def test_a_planted_forbidden_import_is_caught(tmp_path):
    copy = tmp_path / "edgeskin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "models"))
    assert violations(copy) == []
    target = copy / "runtime" / "imageio.py"
    # Inside a function, as the lazy imports are: the check must still see it.
    target.write_text(target.read_text() + "\n\ndef _planted():\n    from edgeskin.training import model\n    import keras\n")
    report = copy / "reporting" / "metrics.py"
    report.write_text(report.read_text() + "\n\ndef _planted():\n    from edgeskin.training.train import train\n")
    found = violations(copy)
    assert "edgeskin.runtime.imageio -> edgeskin.training.model: the runtime imports only the runtime" in found
    assert "edgeskin.runtime.imageio -> keras: the runtime never loads the training stack" in found
    assert any(v.startswith("edgeskin.reporting.metrics -> edgeskin.training.train:") for v in found)
