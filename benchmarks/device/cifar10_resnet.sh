#!/usr/bin/env bash
# The CIFAR-10 ResNet rows trained on a lent GPU machine (no network there): the Python packages its
# image lacks travel as wheels in .whl/, the CIFAR-10 archives in .gpu/cifar10/ (a copy of ../shared/data/cifar10, deleted after the run;
# both folders in .git/info/exclude);
# the results and every saved model come back in $OUT/cifar10_resnet.tgz (unpack in the repository root),
# to be timed on the CPU afterwards with
#   python benchmarks/cifar10_resnet.py --latency-only
# .whl: CPython 3.12 manylinux wheels of pydantic 2.14.4, pydantic-core 2.50.5, annotated-types,
# typing-inspection, typing-extensions, torch-pruning 1.6.1, optuna 5.0.0, alembic, sqlalchemy, mako,
# colorlog (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64).
# Run from the repository root:  DENSE=40 FT=15 BUDGET=470 bash benchmarks/device/cifar10_resnet.sh
# (more rows later from the same dense model: carry benchmarks/runs/cifar10_resnet/dense and set
#  EXTRA="--reuse-dense --only depth channels-same width-depth")
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PRUNETUNE_CACHE=/tmp/ptc PYTHONUNBUFFERED=1
mkdir -p ../shared/data && cp -r .gpu/cifar10 ../shared/data/
nvidia-smi -L; nproc
python3 -c "import torch, torch_pruning, pydantic, optuna; print('torch', torch.__version__, torch.cuda.is_available())"
timeout "${BUDGET:-470}" python3 benchmarks/cifar10_resnet.py --model "${MODEL:-resnet20}" --no-latency \
    --dense-epochs "${DENSE:-40}" --epochs "${FT:-15}" ${EXTRA:-} 2>&1 | tee "$OUT/log.txt"
stem=cifar10_resnet; [ "${MODEL:-resnet20}" = resnet20 ] || stem=cifar10_${MODEL}
tar czf "$OUT/$stem.tgz" --exclude="benchmarks/runs/$stem/*/dense" benchmarks/runs/$stem benchmarks/results/$stem.json \
    benchmarks/results/$stem.md
ls -la "$OUT"
