#!/usr/bin/env bash
# Turns a finished run folder into the shipped model in models/, and measures it.
#   bash scripts/ship_model.sh runs/NAME [COMPARE_MODEL [DATA ...]]
# DATA defaults to ../shared/data/isic-binary, ham10000 and isic2017 (the first is the primary set).
# 1. int8 and float32 exports (each checked against the float model on the calibration split);
# 2. the float Keras model and the run's records (config, calibration, history, splits, audit);
# 3. the evaluation on every DATA set's test split, leaving out test images that near-duplicate any
#    image the model trained on, with the robustness table on the primary set, and the int8 model
#    compared against COMPARE_MODEL (default: the float Keras model; give the previously shipped
#    .tflite to put old and new side by side): metrics.json, figures, MODEL_CARD.md;
# 4. the robustness table and gate report of every further DATA set, in models/benchmarks/NAME/;
#    the ISIC 2017 official test split as published (all 595 images, and the 504 that no model
#    trained on isic-binary has seen), in models/benchmarks/;
# 5. an independent recomputation of the AUC from `edgeskin predict --json`.
set -euo pipefail
run=${1:?usage: ship_model.sh RUN_DIR [COMPARE_MODEL [DATA ...]]}
compare=${2:-models/edgeskin.keras}
shift $(( $# < 2 ? $# : 2 ))
if [ $# -gt 0 ]; then sets=("$@"); else sets=(../shared/data/isic-binary ../shared/data/ham10000 ../shared/data/isic2017); fi
data=${sets[0]}
cd "$(dirname "$0")/.."
edgeskin=.venv/bin/edgeskin

# EXPORT_FLAGS passes options to the int8 export (for example --max-auc-drop 0.015); the
# model card records the check the export passed.
# shellcheck disable=SC2086
$edgeskin export "$run" --int8 ${EXPORT_FLAGS:-} --out models/edgeskin_int8.tflite
$edgeskin export "$run" --float32 --out models/edgeskin_float32.tflite
rm -f models/edgeskin_float32.json   # the int8 file's JSON is the one apps read
cp "$run/model.keras" models/edgeskin.keras
mkdir -p models/training
cp "$run/config.json" "$run/calibration.json" "$run/history.csv" models/training/
# The gates fitted at training time travel with the record, so the export can be re-made from models/training.
for f in gate.json domain.npz; do if [ -f "$run/$f" ]; then cp "$run/$f" models/training/; fi; done
rm -rf models/training/audit
if [ -d "$run/audit" ]; then
    mkdir -p models/training/audit
    cp "$run/audit/audit.json" "$run/audit/audit.png" models/training/audit/
fi
.venv/bin/python - "$run" <<'PY'
import sys
from edgeskin.data import sets
# Re-written relative to models/training, so the record of the split travels with the model.
splits = sets.discover(f"{sys.argv[1]}/splits.csv")
sets.write_manifest("models/training/splits.csv", {"train": splits.train, "val": splits.val})
PY
rm -rf models/figures
$edgeskin evaluate models/edgeskin_int8.tflite "${sets[@]}" --out models --compare "$compare" --run models/training
for d in "${sets[@]:1}"; do
    # The robustness table (and the gate report) of every further set, with that set as the primary.
    $edgeskin evaluate models/edgeskin_int8.tflite "$d" --run models/training --out "models/benchmarks/$(basename "$d")"
done
for d in "${sets[@]}"; do
    if [ -f "$d/labels.csv" ] && [ -f "$d/test_in_isic_binary.csv" ]; then
        .venv/bin/python scripts/isic2017_benchmark.py "$d" --out models/benchmarks
        # whole: all 595, unfiltered, as the challenge's table was computed; unseen: less the images any
        # isic-binary model trained on and, with --run, the near-duplicates of this model's own training images.
        $edgeskin evaluate models/edgeskin_int8.tflite models/benchmarks/isic2017_whole.csv --no-robustness \
            --compare "$compare" --out models/benchmarks/isic2017_whole
        $edgeskin evaluate models/edgeskin_int8.tflite models/benchmarks/isic2017_unseen.csv --no-robustness \
            --compare "$compare" --run models/training --out models/benchmarks/isic2017_unseen
    fi
done
$edgeskin predict "$data/test" --json > /tmp/edgeskin_predict_test.jsonl || true
.venv/bin/python scripts/check_evaluate_auc.py models/metrics.json models/predictions.csv /tmp/edgeskin_predict_test.jsonl
