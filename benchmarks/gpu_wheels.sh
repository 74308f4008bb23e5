#!/usr/bin/env bash
# Here (no GPU needed): fetch the wheels the GPU machine lacks into .whl/ (ignored by git), for
# benchmarks/gpu.sh there. Its image has torch 2.11, transformers 5.17 and torchvision, no torchao:
# dsvl needs transformers 5.2x, the typer it pins (<0.29: the --help row), and torchao for
# --quantize. TORCHAO (default 0.17.0) should be the release built for the torch there
# (`python3 -m pip show torch` in a first run tells).
set -e
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl "transformers==${TRANSFORMERS:-5.24.0}" "torchao==${TORCHAO:-0.17.0}" "typer==0.28.0"
ls -la .whl
