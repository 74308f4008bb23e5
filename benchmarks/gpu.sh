#!/usr/bin/env bash
# Run bench.py on the GPU machine (the `run` device tool), from the repository root there:
#     bash benchmarks/gpu.sh OUTNAME [bench.py options...]
# Installs the wheels carried in .whl/ (see benchmarks/README.md) into /tmp/site, puts them and the
# repository first on PYTHONPATH, and writes $OUT/OUTNAME.json and $OUT/OUTNAME.log.
set -o pipefail
name=${1:?usage: bash benchmarks/gpu.sh OUTNAME [bench.py options...]}; shift
out=${OUT:-/tmp/bench-out}; mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} DSVL_HOME=${DSVL_HOME:-/tmp/dsvl-home} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/$name.log"
python3 benchmarks/bench.py --device cuda --out "$out/$name.json" "$@" 2>&1 | tee -a "$out/$name.log"
