"""Streaming image folders (`data.stream`): images are decoded per batch, never all at once.

The memory test evaluates a saved model on 3,000 PNGs (64x64 RGB: 147 MB once decoded as float32) in a
fresh child process: the high-water mark of its resident set (VmHWM, reset to the current RSS just
before `evaluate_model`) minus its RSS then. RSS counts every page the process has touched, torch's
and numpy's allocations included (tracemalloc sees neither), and a decoded image set is necessarily
written, hence resident: decoding the whole set raises the high-water mark by at least its size.
(`ru_maxrss` is not used: in a child it starts at the parent's RSS, inherited across exec, which
hid a 40 MB budget under pytest's 390 MB.) The same measurement with `data.stream=false` is the
negative control: it must exceed the budget, so the test can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.data import build_data
from prunetune.data import image_folder as IF
from prunetune.data.base import TensorData
from prunetune.measure import example_batch
from prunetune.data_spec import DataSpec
from prunetune.recipe import Recipe, load_recipe

from conftest import cli_env

N_IMAGES, SIDE = 3000, 64
DECODED_BYTES = N_IMAGES * 3 * SIDE * SIDE * 4  # 147,456,000
BUDGET_BYTES = 40 * 2**20  # above the child's baseline


def _folder(root: Path, per_class: int, side: int, classes: int = 3, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / f"c{c}" / f"{i:05d}.png", compress_level=1)
    return root


def test_streamed_folder_is_lazy_and_matches_in_memory(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", per_class=40, side=12)
    spec = dict(source="image_folder", path=str(root), image_size=8)
    mem = build_data(DataSpec(**spec, stream=False), 0)
    lazy = build_data(DataSpec(**spec, stream=True), 0)
    assert isinstance(mem.train.x, torch.Tensor)
    for split in ("train", "val", "test"):
        a, b = getattr(mem, split), getattr(lazy, split)
        assert isinstance(b.x, IF.ImageFiles) and len(b) == len(a) and torch.equal(a.y, b.y)
        torch.testing.assert_close(b.take(slice(None)), a.take(slice(None)), atol=1e-4, rtol=0)
    assert lazy.input_shape == mem.input_shape == (3, 8, 8)
    torch.testing.assert_close(torch.tensor(lazy.preprocess["mean"]), torch.tensor(mem.preprocess["mean"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(lazy.preprocess["std"]), torch.tensor(mem.preprocess["std"]), atol=1e-6, rtol=0)
    idx = torch.tensor([5, 0, 7, 5])
    torch.testing.assert_close(lazy.train.take(idx), mem.train.take(idx), atol=1e-4, rtol=0)
    assert lazy.train.head(3).shape == (3, 3, 8, 8) and lazy.train.x[2].shape == (3, 8, 8)
    sub = lazy.train.subset(torch.tensor([3, 1]))
    assert isinstance(sub, TensorData) and isinstance(sub.x, IF.ImageFiles) and len(sub) == 2
    torch.testing.assert_close(sub.take(slice(None)), mem.train.take(torch.tensor([3, 1])), atol=1e-4, rtol=0)
    assert example_batch(lazy.test, 50).shape == (50, 3, 8, 8)  # more than the test set: repeats
    with pytest.raises(IndexError):
        lazy.test.x[torch.tensor([len(lazy.test)])]
    # data.stream unset: decided by the decoded size (here made tiny), not by the source.
    monkeypatch.setattr(IF, "STREAM_AUTO_BYTES", 1000)
    assert isinstance(build_data(DataSpec(**spec), 0).train.x, IF.ImageFiles)
    monkeypatch.setattr(IF, "STREAM_AUTO_BYTES", 1 << 30)
    assert isinstance(build_data(DataSpec(**spec), 0).train.x, torch.Tensor)


def test_run_trains_on_streamed_folder_and_reports_peak_rss(tmp_path):
    from prunetune.pipeline import run

    root = _folder(tmp_path / "imgs", per_class=30, side=8)
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=image_folder", f"data.path={root}", "data.image_size=8", "data.stream=true",
        "dense.epochs=1", "finetune.epochs=1", "finetune.batch_size=16", "dense.batch_size=16",
        "evaluate.latency=false", "evaluate.memory=false", "dense.cache=false"])
    report = run(recipe, tmp_path / "run", log=lambda m: None)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["process_peak_rss_bytes"] == report["process_peak_rss_bytes"] > 10 * 2**20
    assert saved["recipe"]["data"]["stream"] is True
    assert len(saved["stages"]["finetuned"]["per_class_accuracy"]) == 3


CHILD = r"""
import gc, json, sys
import torch
torch.set_num_threads(1)
from PIL import Image, PngImagePlugin  # noqa: F401 - imported before the baseline
from prunetune.artifacts import load_model
from prunetune.evaluation import evaluate_model
import prunetune.data.image_folder  # noqa: F401


def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))


folder, stream = sys.argv[1], sys.argv[2]
model, _ = load_model(folder)
with torch.no_grad():  # warm-up: the allocator and kernels at the evaluation batch size
    model(torch.zeros(64, 3, 64, 64))
del model
gc.collect()
try:  # reset the high-water mark to the current RSS (Linux >= 4.0); without it the figure is an upper bound
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
result = evaluate_model(folder, [f"data.stream={stream}", "data.eval_batch_size=64"])
print(json.dumps({"before": before, "after": status("VmHWM"), "reset": reset,
                  "accuracy": result["accuracy"], "examples": result["examples"]}))
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """3,000 64x64 RGB noise PNGs (train/ 600, test/ 2,400: many evaluation batches) and a small saved
    model whose recipe points at them."""
    from prunetune.artifacts import save_model
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec

    base = tmp_path_factory.mktemp("stream_mem")
    root = base / "imgs"
    _folder(root / "train", per_class=N_IMAGES // 15, side=SIDE)
    _folder(root / "test", per_class=N_IMAGES * 4 // 15, side=SIDE, seed=1)
    torch.manual_seed(0)
    spec = ModelSpec(name="lenet300", kwargs={"hidden": [32, 16]})
    model = build_model(spec, 3, (3, SIDE, SIDE))
    recipe = Recipe.model_validate({"model": spec.model_dump(mode="json"),
                                    "data": {"source": "image_folder", "path": str(root), "image_size": SIDE}})
    save_model(model, base / "model", {
        "task": "classification", "model": spec.model_dump(mode="json"), "num_classes": 3,
        "class_names": ["c0", "c1", "c2"], "input_shape": [3, SIDE, SIDE],
        "preprocess": {"kind": "image", "mean": [0.5] * 3, "std": [0.25] * 3, "size": [SIDE, SIDE], "channels": 3},
        "recipe": recipe.model_dump(mode="json")})
    return base / "model"


def _measure(folder: Path, stream: bool, tmp_path: Path) -> dict:
    env = {**cli_env(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(stream).lower()], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_above_baseline"] = out["after"] - out["before"]
    print(f"stream={stream}: baseline {out['before'] / 2**20:.1f} MiB, peak {out['after'] / 2**20:.1f} MiB, "
          f"+{out['peak_above_baseline'] / 2**20:.1f} MiB; {out['examples']} test images, accuracy {out['accuracy']}")
    return out


def test_streamed_eval_holds_one_batch_of_pixels(big_model, tmp_path):
    streamed = _measure(big_model, True, tmp_path)
    assert streamed["examples"] == N_IMAGES * 4 // 5
    assert streamed["peak_above_baseline"] < BUDGET_BYTES, (
        f"peak {streamed['peak_above_baseline']:,} bytes above the baseline; the whole set decoded is {DECODED_BYTES:,}")


def test_in_memory_eval_exceeds_the_budget(big_model, tmp_path):
    """Negative control: the measurement sees a fully decoded set (so the test above can fail)."""
    whole = _measure(big_model, False, tmp_path)
    assert whole["peak_above_baseline"] > max(BUDGET_BYTES, DECODED_BYTES)
