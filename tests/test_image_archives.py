"""Image folders packed as .tar.gz / .tgz / .tar (issue 15): unpacked once into the cache, read like any
folder; damaged archives, mixed image sizes and a crash mid-unpack leave no cache behind; the
cifar10 source; one read of the real CIFAR-10 test archive."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunetune.data import build_data
from prunetune.dense import obtain_dense
from prunetune.recipe import Recipe
from prunetune.tasks.classification import Classification
from prunetune.data import archives as A
from prunetune.data.cifar10 import CLASSES as CIFAR_CLASSES
from prunetune.data_spec import DataSpec
from prunetune.errors import PrunetuneError

from conftest import make_bundle

CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test.tar.gz"


def _jpeg(colour: tuple[int, int, int], size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _pack(path: Path, members: dict[str, bytes]) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _split(split: str, classes=("cat", "dog"), n=4, size=(8, 8)) -> dict[str, bytes]:
    """`split/<class>/i.jpg`: class k is mostly red (k=0) or blue, so the per-channel means differ."""
    return {f"{split}/{c}/{i}.jpg": _jpeg((200, 20 * i, 0) if k == 0 else (0, 20 * i, 200), size)
            for k, c in enumerate(classes) for i in range(n)}


def _entries(cache: Path) -> list[str]:
    folder = cache / "archives"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_archive_of_train_and_test_folders_reads_like_the_folder_and_unpacks_once(tmp_path, cache, monkeypatch):
    archive = _pack(tmp_path / "pets.tar.gz", {**_split("pets/train"), **_split("pets/test", n=2)})
    spec = DataSpec(source="image_folder", path=str(archive), val_size=2)
    b = build_data(spec, 0)
    assert b.class_names == ["cat", "dog"] and b.input_shape == (3, 8, 8)  # the images' own size: no image_size
    assert (len(b.train), len(b.val), len(b.test)) == (6, 2, 4)
    # Per-channel statistics of the training pixels: red and blue channels both near 0.39 (half of 200/255).
    assert b.preprocess["size"] == [8, 8] and b.preprocess["mean"][0] == pytest.approx(100 / 255, abs=0.02)
    assert len(_entries(cache)) == 1 and _entries(cache)[0].startswith("pets-")
    # Read again: from the cache, tarfile not opened.
    monkeypatch.setattr(A.tarfile, "open", lambda *a, **k: pytest.fail("unpacked twice"))
    again = build_data(spec, 0)
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.test.y, b.test.y)


def test_a_folder_of_train_and_test_archives_and_every_suffix(tmp_path, cache):
    folder = tmp_path / "data"
    folder.mkdir()
    _pack(folder / "train.tgz", _split("train", n=5))
    _pack(folder / "test.tar", _split("test", n=2))
    b = build_data(DataSpec(source="image_folder", path=str(folder), image_size=4, val_size=2), 0)
    assert b.input_shape == (3, 4, 4) and (len(b.train), len(b.val), len(b.test)) == (8, 2, 4)
    assert len(_entries(cache)) == 2
    # A single archive of class folders (no test split): 20 % held out, as for a folder.
    one = _pack(tmp_path / "flat.tar.gz", _split("flat", n=5))
    b = build_data(DataSpec(source="image_folder", path=str(one), val_size=2), 0)
    assert (len(b.train), len(b.val), len(b.test)) == (6, 2, 2)


@pytest.mark.parametrize("damage", ["truncated", "not_an_archive", "unsafe_member"])
def test_a_damaged_archive_is_one_line_and_leaves_no_cache(tmp_path, cache, damage):
    archive = tmp_path / "images.tar.gz"
    if damage == "truncated":
        raw = _pack(tmp_path / "whole.tar.gz", {**_split("train", n=30), **_split("test")}).read_bytes()
        archive.write_bytes(raw[: len(raw) // 2])
        wanted = "images.tar.gz: truncated or not a tar archive"
    elif damage == "not_an_archive":
        archive.write_text("a plain text file named like an archive\n")
        wanted = "images.tar.gz: truncated or not a tar archive"
    else:  # tarfile's data filter refuses a member that escapes the folder
        _pack(archive, {**_split("train"), "../escape.jpg": _jpeg((1, 2, 3))})
        wanted = "images.tar.gz: refused to unpack member '../escape.jpg'"
    with pytest.raises(PrunetuneError) as e:
        build_data(DataSpec(source="image_folder", path=str(archive)), 0)
    assert wanted in str(e.value) and ("set data.path to the folder" in str(e.value) or "repack" in str(e.value))
    assert _entries(cache) == [] and not (tmp_path / "escape.jpg").exists()


def test_a_crash_mid_unpack_leaves_nothing_that_looks_complete(tmp_path, cache, monkeypatch):
    archive = _pack(tmp_path / "a.tar.gz", {**_split("train"), **_split("test")})

    def crash(self, *a, **k):
        (Path(a[0]) / "train").mkdir()  # something written, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", crash)
    with pytest.raises(KeyboardInterrupt):
        build_data(DataSpec(source="image_folder", path=str(archive)), 0)
    assert _entries(cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("PRUNETUNE_CACHE", str(cache))
    assert len(build_data(DataSpec(source="image_folder", path=str(archive), val_size=2), 0).test) == 8


def test_mixed_image_sizes_need_data_image_size(tmp_path, cache):
    members = {**_split("train"), **_split("test")}
    members["train/dog/9.jpg"] = _jpeg((0, 0, 90), size=(12, 12))
    archive = _pack(tmp_path / "mixed.tar.gz", members)
    with pytest.raises(PrunetuneError, match=r"9.jpg: 12x12 image among 8x8 ones \(.*train/cat/0.jpg\); set "
                                             r"data.image_size to resize all images to one size"):
        build_data(DataSpec(source="image_folder", path=str(archive)), 0)
    assert build_data(DataSpec(source="image_folder", path=str(archive), image_size=8), 0).input_shape == (3, 8, 8)
    # Streamed, the same check holds when a batch is read.
    with pytest.raises(PrunetuneError, match="12x12 image among 8x8 ones"):
        build_data(DataSpec(source="image_folder", path=str(archive), stream=True), 0)


def test_mean_and_std_may_be_given(tmp_path, cache):
    archive = _pack(tmp_path / "s.tar.gz", {**_split("train"), **_split("test")})
    spec = DataSpec(source="image_folder", path=str(archive), mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0], val_size=2)
    b = build_data(spec, 0)
    assert b.preprocess["mean"] == [0.5, 0.5, 0.5] and b.preprocess["std"] == [0.25, 0.5, 1.0]
    raw = np.asarray(Image.open(io.BytesIO(_split("test")["test/cat/0.jpg"])), dtype=np.float32) / 255
    first_cat = b.test.x[b.test.y == 0][0]
    assert torch.allclose(first_cat[0], (torch.from_numpy(raw[..., 0]) - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(PrunetuneError, match="data.mean: 2 values for 3-channel images; give one per channel"):
        build_data(DataSpec(source="image_folder", path=str(archive), mean=[0.5, 0.5], std=[1, 1, 1]), 0)
    with pytest.raises(PrunetuneError, match="data.std"):
        DataSpec(source="image_folder", path="x").with_options(std=[0.0, 1, 1])


def test_cifar10_source_reads_train_and_test_archives_and_checks_the_classes(tmp_path, cache):
    folder = tmp_path / "cifar"
    folder.mkdir()
    _pack(folder / "train.tar.gz", _split("train", classes=CIFAR_CLASSES, n=2))
    _pack(folder / "test.tar.gz", _split("test", classes=CIFAR_CLASSES, n=1))
    b = build_data(DataSpec(source="cifar10", path=str(folder), val_size=10), 0)
    assert b.class_names == CIFAR_CLASSES and (len(b.train), len(b.val), len(b.test)) == (10, 10, 10)
    other = _pack(tmp_path / "pets.tar.gz", {**_split("pets/train"), **_split("pets/test")})
    with pytest.raises(PrunetuneError, match="has classes cat, dog, not CIFAR-10's; use data.source image_folder"):
        build_data(DataSpec(source="cifar10", path=str(other)), 0)


def test_the_real_cifar10_test_archive(cache):
    """10,000 JPEGs (3 MB): unpacked once, 1,000 a class, 32x32 RGB, CIFAR-10's pixel statistics."""
    if not CIFAR_TEST.is_file():
        pytest.skip(f"{CIFAR_TEST} not found (the shared data folder beside the checkout)")
    # Streamed with the identity normalisation: only the images looked at below are decoded.
    spec = DataSpec(source="image_folder", path=str(CIFAR_TEST), stream=True, mean=[0, 0, 0], std=[1, 1, 1])
    b = build_data(spec, 0)
    assert b.class_names == CIFAR_CLASSES and b.input_shape == (3, 32, 32)
    labels = torch.cat([b.train.y, b.val.y, b.test.y])
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert [len(os.listdir(p)) for p in sorted((cache / "archives").glob("*/test/*"))] == [1000] * 10
    # CIFAR-10's test-set channel means are 0.494, 0.485, 0.450 (the JPEG re-encoding moves them little).
    pixels = b.train.x[torch.arange(0, len(b.train), 8)]
    assert pixels.shape[1:] == (3, 32, 32) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    assert pixels.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0.494, 0.485, 0.450], abs=0.015)


def test_a_cached_dense_model_for_other_inputs_is_not_reused(cache):
    """An unset data.image_size meant 32 before it meant the images' own size: the same recipe (the same
    cache key) can now give other inputs, and the cached model must not be fed them."""
    recipe = Recipe.model_validate({"model": {"name": "tiny_cnn"}, "dense": {"epochs": 1}})
    logs: list[str] = []
    small, info = obtain_dense(recipe, make_bundle(n=30, shape=(1, 8, 8)), Classification(), torch.device("cpu"),
                               logs.append)
    assert info["source"] == "train" and "cache" in info
    again, info = obtain_dense(recipe, make_bundle(n=30, shape=(1, 8, 8)), Classification(), torch.device("cpu"),
                               logs.append)
    assert info["source"] == "cache"
    bigger, info = obtain_dense(recipe, make_bundle(n=30, shape=(1, 12, 12)), Classification(), torch.device("cpu"),
                                logs.append)
    assert info["source"] == "train" and any("takes inputs [1, 8, 8], the data has [1, 12, 12]" in m for m in logs)
    x = make_bundle(n=30, shape=(1, 12, 12)).test.x[:2]
    assert bigger.eval()(x).shape == (2, 3)


def test_a_cached_dense_model_trained_on_another_split_is_replaced(cache):
    """Held-out splits once took equal counts per class, now the original proportions: a cached model
    trained on what is now validation data is trained anew and replaces the stale cache entry."""
    recipe = Recipe.model_validate({"model": {"name": "tiny_cnn"}, "dense": {"epochs": 1}})
    logs: list[str] = []
    bundle = make_bundle(n=30)
    _, info = obtain_dense(recipe, bundle, Classification(), torch.device("cpu"), logs.append)
    assert info["source"] == "train" and len(info["split"]) == 16
    swapped = dataclasses.replace(bundle, train=bundle.val, val=bundle.train)  # same data, other split
    _, again = obtain_dense(recipe, swapped, Classification(), torch.device("cpu"), logs.append)
    assert again["source"] == "train" and again["split"] != info["split"]
    assert any("trained on another train/validation split" in m for m in logs)
    _, third = obtain_dense(recipe, swapped, Classification(), torch.device("cpu"), logs.append)
    assert third["source"] == "cache" and third["split"] == again["split"]  # the entry was replaced
