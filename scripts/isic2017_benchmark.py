"""Write the ISIC 2017 official test split as manifests for `edgeskin evaluate`.

    python scripts/isic2017_benchmark.py ../shared/data/isic2017 --out runs/isic2017

writes two manifests whose rows are all `test`, so evaluate reports on every
row (it leaves out only near-duplicates of a manifest's own train rows, and
these have none):
  isic2017_whole.csv    all 595 official test images, melanoma vs the rest:
                        the split the challenge's table was computed on;
  isic2017_unseen.csv   the same minus the test images that are also
                        isic-binary/train images (test_in_isic_binary.csv),
                        which any model trained on isic-binary (the
                        previously shipped one) has seen; evaluated with
                        --run, the near-duplicates of the evaluated model's
                        own training images leave too.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeskin.data import sets  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("isic2017", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    test = sets.discover(args.isic2017).test
    seen_ids = set()
    with open(args.isic2017 / "test_in_isic_binary.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["isic_binary_path"].startswith("isic-binary/train/"):
                seen_ids.add(row["isic2017_test_image_id"])
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("isic2017_whole", test),
                       ("isic2017_unseen", [s for s in test if Path(s.path).stem not in seen_ids])):
        samples = tuple(rows)
        sets.write_manifest(args.out / f"{name}.csv", {"test": samples})
        print(f"{args.out / (name + '.csv')}: {len(samples)} images, {sum(s.label for s in samples)} melanoma")
    return 0


if __name__ == "__main__":
    sys.exit(main())
