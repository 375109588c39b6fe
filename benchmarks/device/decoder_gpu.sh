#!/usr/bin/env bash
# benchmarks/decoder_gpu.py on a lent GPU machine (no network there): the Python packages its image
# lacks travel as wheels in .whl/ (see benchmarks/device/cifar10_resnet.sh); the results come back in
# $OUT. Run from the repository root, carrying .whl:  bash benchmarks/device/decoder_gpu.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi -L
timeout "${BUDGET:-500}" python3 benchmarks/decoder_gpu.py 2>&1 | tee "$OUT/log.txt"
cp benchmarks/results/decoder_gpu.json benchmarks/results/decoder_gpu.md "$OUT/"
