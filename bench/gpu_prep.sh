#!/usr/bin/env bash
# Run HERE (needs COMFYUI_PATH and PyPI), before a GPU session: put in bench/.gpu/ what the device machine lacks:
# a ComfyUI copy (tar.gz) and the wheels of the ComfyUI imports its image does not hold (av, torchsde, trampoline).
# Then carry "bench/.gpu" in the device call and run bench/gpu_check.sh there (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMFYUI_PATH:?set COMFYUI_PATH to the ComfyUI checkout to benchmark against}"
PY=${PYTHON:-python3}
DEST=bench/.gpu
rm -rf "$DEST"
mkdir -p "$DEST/whl"
tar -czf "$DEST/ComfyUI.tar.gz" -C "$(dirname "$(realpath "$COMFYUI_PATH")")" \
    --exclude=.git --exclude=__pycache__ --exclude='*.pyc' --exclude=./models --exclude=./input --exclude=./output \
    --exclude=./temp --exclude=./user --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' \
    --transform "s,^$(basename "$(realpath "$COMFYUI_PATH")"),ComfyUI," "$(basename "$(realpath "$COMFYUI_PATH")")"
# versions as in the local venv; av's abi3 wheel serves every CPython >= 3.11 (the device has 3.12)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/whl" av==18.1.0 torchsde==0.2.6 trampoline==0.1.2
du -sh "$DEST" "$DEST"/* "$DEST"/whl/*
