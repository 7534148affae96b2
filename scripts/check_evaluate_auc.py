"""Recompute the ROC AUC that `edgeskin evaluate` reported, independently.

Reads `edgeskin predict --json` output (one JSON object per line), keeps the
images that evaluate scored (its predictions.csv lists them), takes each
image's label from its folder name, and computes the AUC by the Mann-Whitney
rank formula in plain numpy: no scikit-learn, no edgeskin metrics code.

    edgeskin predict ../shared/data/isic-binary/test --json > /tmp/predict.jsonl
    python scripts/check_evaluate_auc.py models/metrics.json models/predictions.csv /tmp/predict.jsonl
"""

import csv
import json
import sys

import numpy as np


def mann_whitney_auc(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main(metrics_json, predictions_csv, predict_jsonl) -> int:
    reported = json.load(open(metrics_json))["metrics"]["roc_auc"]["value"]
    with open(predictions_csv) as f:
        evaluated = {row["path"] for row in csv.DictReader(f)}
    rows = [json.loads(line) for line in open(predict_jsonl) if line.strip()]
    rows = [r for r in rows if r["path"] in evaluated and "error" not in r]
    y = np.array([1 if "/malignant/" in r["path"] else 0 for r in rows])
    p = np.array([r["malignant_probability"] for r in rows])
    auc = mann_whitney_auc(y, p)
    diff = abs(auc - reported)
    print(f"images: {len(rows)} of {len(evaluated)} evaluated; evaluate AUC {reported:.5f}; "
          f"independent AUC from predict --json {auc:.5f}; |difference| {diff:.5f}")
    return 0 if len(rows) == len(evaluated) and diff <= 0.002 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
