#!/usr/bin/env bash
# One command for a new user: set up a local virtual environment, then run edgeskin.
#   ./run.sh predict data/samples/ --threshold 0.4     predict with the shipped model
#   ./run.sh train ../shared/data/isic-binary ...      anything `edgeskin` takes
#   ./run.sh test                                      the test suite
# The first call installs what that command needs into .venv/: the light
# runtime for predict and calibrate, TensorFlow too for train, export, audit,
# evaluate and test.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
venv="$here/.venv"
python=${PYTHON:-python3}

# pip's output goes to a log, shown only when an install fails.
quiet_pip() {
    local py=$1; shift
    if ! "$py" -m pip install --quiet --disable-pip-version-check "$@" > "$venv/pip.log" 2>&1; then
        cat "$venv/pip.log" >&2
        echo "run.sh: pip install $* failed (log above)" >&2
        exit 1
    fi
}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    quiet_pip "$venv/bin/python" --upgrade pip
fi

cmd=${1:-predict}
case "$cmd" in
    predict|calibrate|web|--help|--version) extras="" ;;
    app) extras="train,app" ;;
    test) extras="train,app,test" ;;
    *) extras="train" ;;
esac
stamp="$venv/.installed-${extras:-runtime}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "run.sh: installing edgeskin${extras:+[$extras]} into .venv (first run only)" >&2
    quiet_pip "$venv/bin/python" -e ".${extras:+[$extras]}"
    touch "$stamp"
fi

# Keras looks for ImageNet weights in its cache; ../shared carries the file
# for machines with no internet.
weights=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
cache="${KERAS_HOME:-$HOME/.keras}/models"
if [ -f "../shared/weights/$weights" ] && [ ! -f "$cache/$weights" ]; then
    mkdir -p "$cache" && cp "../shared/weights/$weights" "$cache/"
fi

if [ "$cmd" = test ]; then
    shift
    # mediapipe pins opencv-contrib-python, which clashes with the training
    # stack's OpenCV, so its compatibility check gets an environment of its own.
    mp="$here/.venv-mediapipe"
    if [ ! -f "$mp/.installed" ] || [ pyproject.toml -nt "$mp/.installed" ]; then
        [ -x "$mp/bin/python" ] || "$python" -m venv "$mp"
        quiet_pip "$mp/bin/python" --upgrade pip
        quiet_pip "$mp/bin/python" "mediapipe==1.2.2" -e .
        touch "$mp/.installed"
    fi
    export EDGESKIN_MEDIAPIPE_PYTHON="$mp/bin/python"
    # The web app's tests need its npm packages (MediaPipe's wasm); without npm they skip.
    if command -v npm >/dev/null 2>&1 && { [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules ]; }; then
        npm ci --prefix web --no-audit --no-fund --loglevel=error >/dev/null
    fi
    # Two processes; the tiny training runs the tests share are built once (conftest.py).
    exec "$venv/bin/python" -m pytest -q -n 2 --dist worksteal "$@"
fi
if [ "$cmd" = web ] && [ ! -d web/node_modules ]; then
    npm ci --prefix web --no-audit --no-fund --loglevel=error >/dev/null
fi
exec "$venv/bin/edgeskin" "$@"
