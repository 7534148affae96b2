"""Print the README's result tables from an evaluation's metrics.json (the shipped model against its comparison).

Every number in the README's results section is pasted from this script's
output, so none is typed by hand.

    python scripts/results_tables.py models/metrics.json [models/benchmarks/isic2017_whole/metrics.json ...]

Further metrics files (the ISIC 2017 benchmark manifests, each further set
evaluated as the primary for its robustness table) each get a short table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeskin.reporting.card_results import diagnosis_section, robustness_rows, sets_section  # noqa: E402


def _ci(e) -> str:
    return f"{e['value']:.3f} ({e['ci95'][0]:.3f}–{e['ci95'][1]:.3f})"


def headline(result: dict) -> list[str]:
    new, old = result["metrics"], result.get("compare", {}).get("metrics")
    names = [f"`{result['model']['name']}` (new)"] + ([f"`{result['compare']['model']['name']}` (previous)"] if old else [])
    rows = [("ROC AUC", lambda m: _ci(m["roc_auc"])), ("PR AUC", lambda m: _ci(m["pr_auc"])),
            ("ECE, 15 bins", lambda m: _ci(m["ece"])), ("Brier", lambda m: _ci(m["brier"]))]
    for name in new["thresholds"]:
        for key in ("sensitivity", "specificity"):
            rows.append((f"`{name}` {key}", lambda m, n=name, k=key: _ci(m["thresholds"][n][k]) if n in m["thresholds"] else "n/a"))
        rows.append((f"`{name}` threshold", lambda m, n=name: f"{m['thresholds'][n]['threshold']:.4f}" if n in m["thresholds"] else "n/a"))
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(m) for m in ([new, old] if old else [new])) + " |")
    return lines


def further(path: Path) -> list[str]:
    """A further evaluation: its set, the headline figures of both models, and its robustness table if any."""
    result = json.loads(path.read_text())
    d, m = result["data"], result["metrics"]
    lines = [f"\n### {path.parent.name}: {d['evaluated']} of {d['images']} images ({m['n_malignant']} malignant); "
             f"{d['near_duplicates_left_out']} left out ({d['rule']})\n"]
    lines += headline(result)
    if "robustness" in result:
        lines += ["", f"Robustness, `{result['model']['name']}`:", ""] + robustness_rows(result["robustness"])
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("more", type=Path, nargs="*")
    args = ap.parse_args()
    result = json.loads(args.metrics.read_text())
    d = result["data"]
    print(f"Evaluated: {d['evaluated']} of {d['images']} test images ({d['near_duplicates_left_out']} near-duplicates of "
          f"training images left out; {result['metrics']['n_malignant']} malignant, {result['metrics']['n_benign']} benign)\n")
    print("\n".join(headline(result)))
    if "robustness" in result:
        print(f"\nRobustness, `{result['model']['name']}`:\n")
        print("\n".join(robustness_rows(result["robustness"])))
    if "robustness" in result.get("compare", {}):
        print(f"\nRobustness, `{result['compare']['model']['name']}`:\n")
        print("\n".join(robustness_rows(result["compare"]["robustness"])))
    if len(result.get("sets", {})) > 1:
        print("\n" + "\n".join(sets_section(result)[2:]))
    for name, entry in result.get("sets", {}).items():
        if "diagnosis" in entry:
            print(f"\nDiagnosis head on {name}:\n")
            print("\n".join(line for line in diagnosis_section(entry, "figures") if not line.startswith("![")))
    for path in args.more:
        print("\n".join(further(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
