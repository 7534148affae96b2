"""Every `--help` example of a fresh clone runs, or names files that exist, and writes only where git ignores."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeskin.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def examples() -> dict[str, list[list[str]]]:
    """command -> the argument lists of its help's `./run.sh` examples (without ./run.sh and the command)."""
    found = {}
    for name in main.commands:
        text = CliRunner().invoke(main, [name, "--help"], terminal_width=400).output
        lines = [line.split("./run.sh", 1)[1].split("  (")[0] for line in text.splitlines() if "./run.sh " in line]
        found[name] = [shlex.split(line)[1:] for line in lines if shlex.split(line)[0] == name]
    return found


def _outputs(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"]


def _ignored(path: str) -> bool:
    probe = ROOT / path / "probe" if not Path(path).suffix else ROOT / path
    return subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT).returncode == 0


def test_every_command_has_an_example_through_run_sh():
    found = examples()
    assert all(found[name] for name in found), {k: v for k, v in found.items() if not v}
    assert "./run.sh" in CliRunner().invoke(main, ["--help"]).output


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_examples_read_files_that_exist_and_write_only_where_git_ignores():
    found = examples()
    written = {out for runs in found.values() for args in runs for out in _outputs(args)}
    for name, runs in found.items():
        for args in runs:
            outs = _outputs(args)
            for out in outs:
                assert _ignored(out), f"{name}: --out {out} is not ignored by git"
                assert not (ROOT / out).resolve().is_relative_to(ROOT / "models"), f"{name} would overwrite models/"
            for arg in args:
                if "/" in arg and arg not in outs and not arg.startswith("-"):
                    # An input: in the clone or ../shared, or what another example writes (train's run folder).
                    assert (ROOT / arg).exists() or arg.rstrip("/") in written, f"{name}: {arg} does not exist"


def test_default_output_folders_are_ignored_by_git():
    for name in ("audit", "evaluate", "explain"):
        out = next(p for p in main.commands[name].params if p.name == "out")
        assert _ignored(out.default), f"{name} --out default {out.default}"


def test_the_predict_example_runs():
    (args,) = examples()["predict"]
    r = CliRunner().invoke(main, ["predict", *[str(ROOT / a) if "/" in a else a for a in args]])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == len(list((ROOT / "data" / "samples").glob("*.jpg"))) and all(len(row["diagnosis"]) == 3 for row in rows)


def test_predict_on_the_samples_prints_only_result_lines():
    """What ./run.sh predict data/samples/ runs: one line an image on stdout, nothing on stderr (no native log lines)."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edgeskin.cli", "predict", "data/samples/"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("data/samples/") for line in lines), lines
