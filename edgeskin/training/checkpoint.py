"""A checkpoint after every fine-tuning epoch, so that a stopped run resumes where it stopped.

checkpoint/ in the run folder holds the network's weights and the
optimizer's state after the last finished epoch, the best weights so far,
the weight average when the run keeps one (averaging.py), and
state.json: the phase, the epoch, the early-stopping state, the history
and the minutes spent. Each file is written to a temporary name and moved
into place, state.json last, so a run killed mid-write resumes from the
epoch before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


def _save_arrays(path: Path, arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, *[np.asarray(a) for a in arrays])
    os.replace(tmp, path)


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


class Checkpoint:
    def __init__(self, run_dir):
        self.dir = Path(run_dir) / CHECKPOINT_DIR

    def state(self) -> dict | None:
        """The last saved state, or None when there is none."""
        path = self.dir / STATE_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, state: dict, weights, optimizer_variables=(), best_weights=None, **named) -> None:
        """named: more arrays to keep (e.g. ema=[...]), each read back by weights(name)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _save_arrays(self.dir / "last.npz", weights)
        _save_arrays(self.dir / "optimizer.npz", optimizer_variables)
        if best_weights is not None:
            _save_arrays(self.dir / "best.npz", best_weights)
        for name, arrays in named.items():
            _save_arrays(self.dir / f"{name}.npz", arrays)
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.dir / STATE_FILE)

    def has(self, name: str) -> bool:
        return (self.dir / f"{name}.npz").is_file()

    def weights(self, name: str = "last") -> list[np.ndarray]:
        return _load_arrays(self.dir / f"{name}.npz")

    def restore_optimizer(self, optimizer, variables) -> None:
        """Build the optimizer for these variables and put back its saved state (step count included)."""
        optimizer.build(variables)
        saved = _load_arrays(self.dir / "optimizer.npz")
        if len(saved) != len(optimizer.variables):
            raise ValueError(f"the checkpoint's optimizer has {len(saved)} variables, this one {len(optimizer.variables)}")
        for variable, value in zip(optimizer.variables, saved):
            variable.assign(value)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
