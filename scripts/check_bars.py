"""Print the shipped model's figures against the recipe and in-model gate issues' bars, from the evaluation files.

    python scripts/check_bars.py models

Reads models/metrics.json (the three test sets, near-duplicates of any
training image left out), models/benchmarks/isic2017_whole/metrics.json (the
whole official split) and the int8 file's size. Latency comes from
scripts/bench_runtime.py, which times it against Google's reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _v(entry) -> str:
    return f"{entry['value']:.3f} ({entry['ci95'][0]:.3f}–{entry['ci95'][1]:.3f})"


def rows(models: Path) -> list[tuple[str, str, float, float, bool]]:
    """(bar, measured text, value, limit, met) for every bar this script can read."""
    sets = json.loads((models / "metrics.json").read_text())["sets"]
    out = []
    binary, ham = sets["isic-binary"]["metrics"], sets["ham10000"]
    out.append(("isic-binary test ROC AUC >= 0.95", _v(binary["roc_auc"]), binary["roc_auc"]["value"], 0.95, True))
    m = ham["metrics"]
    point = m["thresholds"]["screening"]
    out += [("ham10000 test ROC AUC >= 0.92", _v(m["roc_auc"]), m["roc_auc"]["value"], 0.92, True),
            ("ham10000 screening sensitivity >= 0.90", _v(point["sensitivity"]), point["sensitivity"]["value"], 0.90, True),
            ("ham10000 screening specificity >= 0.65", _v(point["specificity"]), point["specificity"]["value"], 0.65, True)]
    dx = ham["diagnosis"]
    mel = dx["per_class"]["mel"]["recall"]
    out += [("ham10000 diagnosis balanced accuracy >= 0.70", _v(dx["balanced_accuracy"]), dx["balanced_accuracy"]["value"],
             0.70, True),
            ("ham10000 diagnosis top-3 accuracy >= 0.93", _v(dx["top3_accuracy"]), dx["top3_accuracy"]["value"], 0.93, True),
            ("ham10000 melanoma recall >= 0.60", f"{mel:.3f}", mel, 0.60, True)]
    whole = models / "benchmarks" / "isic2017_whole" / "metrics.json"
    if whole.is_file():
        w = json.loads(whole.read_text())["metrics"]
        out.append((f"isic2017 official test ({w['n']} images) ROC AUC >= 0.85", _v(w["roc_auc"]), w["roc_auc"]["value"],
                    0.85, True))
    d = sets["isic2017"]["metrics"]
    out.append((f"isic2017 test less near-duplicates of training ({d['n']}) ROC AUC >= 0.85", _v(d["roc_auc"]),
                d["roc_auc"]["value"], 0.85, True))
    size = (models / "edgeskin_int8.tflite").stat().st_size / 1e6
    out.append(("int8 file <= 3.5 MB", f"{size:.2f} MB", size, 3.5, False))
    return out + _export_rows(models) + _gate_rows(sets)


def _export_rows(models: Path) -> list:
    """The export's own checks on the calibration pool, as the int8 file's metadata records them."""
    checks = json.loads((models / "edgeskin_int8.json").read_text())["checks"]
    drop = checks["float_auc"] - checks["auc"]
    out = [("export float -> int8 ROC AUC drop <= 0.005 (calibration pool)", f"{drop:.4f}", drop, 0.005, False)]
    if "diagnosis_top1_agreement" in checks:
        a = checks["diagnosis_top1_agreement"]
        out.append(("export int8 diagnosis top-1 agreement >= 0.90", f"{a:.3f}", a, 0.90, True))
    return out


def _gate_rows(sets: dict) -> list:
    """The share of each test split that the gate sets aside (predict's own reasons)."""
    out = []
    for name in ("isic-binary", "ham10000"):
        g = sets[name].get("gate")
        if g:
            out.append((f"{name} test set aside by the gate <= 2%", f"{g['share_set_aside']:.1%} ({g['set_aside']} of "
                        f"{g['images']})", g["share_set_aside"], 0.02, False))
    return out


def main() -> int:
    models = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    print("| bar | measured (95% CI) | |\n|---|---|---|")
    for bar, text, value, limit, at_least in rows(models):
        met = value >= limit if at_least else value <= limit
        print(f"| {bar} | {text} | {'met' if met else '**missed**'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
