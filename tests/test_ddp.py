"""One fine-tuning on two CPU processes with torchrun (DDP, gloo): masks and final weights agree across ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import FMNIST, ROOT

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist")


def test_two_process_fine_tuning_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNETUNE_CACHE": str(tmp_path / "cache")}
    common = ["--set", "data.limit=800", "--set", "data.val_size=200", "--set", "data.test_limit=200",
              "--set", "dense.epochs=1", "--set", "finetune.epochs=2", "--set", "prune.method=unstructured",
              "--set", "prune.importance=taylor", "--set", "prune.sparsity=0.8",
              "--set", "prune.schedule.kind=gradual", "--set", "evaluate.latency=false", "--set", "evaluate.memory=false"]
    # The dense model once, single process (cached), then the fine-tuning on two processes.
    warm = subprocess.run([sys.executable, "-m", "prunetune.cli", "run", *common, "--set", "finetune.epochs=0",
                           "--set", "prune.schedule.kind=oneshot", "--out", str(tmp_path / "warm")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert warm.returncode == 0, warm.stderr[-2000:]
    out = tmp_path / "ddp"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "prunetune.cli", "run", *common, "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    other = tmp_path / "ddp.rank1"
    for name in ("model.safetensors", "masks.safetensors"):
        a, b = load_file(str(out / "model" / name)), load_file(str(other / "model" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    masks = load_file(str(out / "model" / "masks.safetensors"))
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.15 < kept < 0.25  # pruned to 80 % during the two-process fine-tuning
    import json

    rep = json.loads((out / "report.json").read_text())
    assert rep["distributed"] == {"world_size": 2, "backend": "gloo"}
