#!/usr/bin/env bash
# Turns a finished run folder into the shipped model in models/, and measures it.
#   bash scripts/ship_model.sh runs/NAME [../shared/data/isic-binary [COMPARE_MODEL]]
# 1. int8 and float32 exports (each checked against the float model on the calibration split);
# 2. the float Keras model and the run's records (config, calibration, history, splits, audit);
# 3. the evaluation on the data set's test split, near-duplicates of training images left out,
#    with the robustness table, and the int8 model compared against COMPARE_MODEL (default: the
#    float Keras model; give the previously shipped .tflite to put old and new side by side):
#    metrics.json, figures, MODEL_CARD.md;
# 4. an independent recomputation of the AUC from `edgeskin predict --json`.
set -euo pipefail
run=${1:?usage: ship_model.sh RUN_DIR [DATA]}
data=${2:-../shared/data/isic-binary}
compare=${3:-models/edgeskin.keras}
cd "$(dirname "$0")/.."
edgeskin=.venv/bin/edgeskin

$edgeskin export "$run" --int8 --out models/edgeskin_int8.tflite
$edgeskin export "$run" --float32 --out models/edgeskin_float32.tflite
rm -f models/edgeskin_float32.json   # the int8 file's JSON is the one apps read
cp "$run/model.keras" models/edgeskin.keras
mkdir -p models/training
cp "$run/config.json" "$run/calibration.json" "$run/history.csv" models/training/
rm -rf models/training/audit
if [ -d "$run/audit" ]; then
    mkdir -p models/training/audit
    cp "$run/audit/audit.json" "$run/audit/audit.png" models/training/audit/
fi
.venv/bin/python - "$run" <<'PY'
import sys
from edgeskin import data
# Re-written relative to models/training, so the record of the split travels with the model.
splits = data.discover(f"{sys.argv[1]}/splits.csv")
data.write_manifest("models/training/splits.csv", {"train": splits.train, "val": splits.val})
PY
rm -rf models/figures
$edgeskin evaluate models/edgeskin_int8.tflite "$data" --out models --compare "$compare" --run models/training
$edgeskin predict "$data/test" --json > /tmp/edgeskin_predict_test.jsonl || true
.venv/bin/python scripts/check_evaluate_auc.py models/metrics.json models/predictions.csv /tmp/edgeskin_predict_test.jsonl
