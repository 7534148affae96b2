#!/usr/bin/env bash
# Measures the runtime-only install: `pip install .` with no extras into a
# fresh virtual environment, its size on disk, that TensorFlow is absent, and
# the cold start of `edgeskin predict` (process start to first prediction).
#   bash scripts/measure_runtime_install.sh [/tmp/edgeskin-runtime]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/edgeskin-runtime}
rm -rf "$venv"
# setuptools reuses a stale build/ folder in the checkout; measure what a clean clone installs.
rm -rf "$here/build"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here"
echo "installed packages:"
"$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check | sed 's/^/  /'
if "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then echo "FAIL: tensorflow is importable"; exit 1; fi
echo "tensorflow: not installed"
echo "size of the environment: $(du -sm "$venv" | cut -f1) MB (site-packages $(du -sm "$venv"/lib/python3*/site-packages | cut -f1) MB, pip included)"
cd /tmp
"$venv/bin/edgeskin" predict "$here/data/samples/benign_1.jpg" >/dev/null 2>&1  # fill the page cache once
for i in 1 2 3 4 5; do
    /usr/bin/time -f "%e" -o /tmp/edgeskin_cold_start "$venv/bin/edgeskin" predict "$here/data/samples/benign_1.jpg" >/dev/null 2>&1
    cat /tmp/edgeskin_cold_start
done | sort -n | awk '{a[NR]=$1} END {printf "cold start, process start to first prediction (5 runs): median %.2f s, max %.2f s\n", a[3], a[5]}'
