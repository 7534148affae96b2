"""ROC AUC of `edgeskin predict --json` output over every image a manifest lists, none left out.

`evaluate` leaves out test images that near-duplicate a training image; a
published benchmark (ISIC 2017's 595 test images) is scored on all of them.

    python scripts/isic2017_benchmark.py ../shared/data/isic2017 --out models/benchmarks
    python -c "import csv,pathlib; m=pathlib.Path('models/benchmarks/isic2017_whole.csv'); \\
        print('\\n'.join(str((m.parent/r['path']).resolve()) for r in csv.DictReader(open(m))))" > /tmp/paths.txt
    xargs -a /tmp/paths.txt ./run.sh predict --json > /tmp/predictions.jsonl
    python scripts/manifest_auc.py models/benchmarks/isic2017_whole.csv /tmp/predictions.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("manifest", type=Path, help="CSV with path (relative to the manifest) and label")
    ap.add_argument("predictions", type=Path, help="the JSON lines `edgeskin predict --json` printed")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    with open(args.manifest, newline="") as f:
        label = {str((args.manifest.parent / r["path"]).resolve()): int(r["label"] in ("1", "malignant"))
                 for r in csv.DictReader(f)}
    scores = {}
    for n, line in enumerate(args.predictions.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            scores[str(Path(row["path"]).resolve())] = row["malignant_probability"]
        except (json.JSONDecodeError, KeyError, TypeError):
            sys.exit(f"{args.predictions}: line {n} is not a line of `edgeskin predict --json` output")
    keys = [k for k in label if k in scores]
    auc = roc_auc_score([label[k] for k in keys], [scores[k] for k in keys])
    print(f"{len(keys)} of {len(label)} images scored; ROC AUC {auc:.4f}")


if __name__ == "__main__":
    main()
