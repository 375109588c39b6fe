from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from prunetune.data import build_data
from prunetune.data.base import balanced_subset, split_train_val
from prunetune.data.fashion_mnist import read_idx
from prunetune.data_spec import DataSpec
from prunetune.errors import PrunetuneError
from prunetune.registry import DATA_SOURCES, load_builtins

from conftest import FMNIST

load_builtins()


def write_idx(path, arr: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_idx_folder(folder, n_train=60, n_test=20, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), compress=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % classes, compress=True)
    return folder


def test_idx_round_trip_plain_and_gzip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (False, True):
        p = tmp_path / f"a{compress}.idx"
        write_idx(p, arr, compress)
        assert np.array_equal(read_idx(p), arr)


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b[:-5], "truncated or corrupt IDX"),
    (lambda b: b"\x01\x02" + b[2:], "bad magic"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: gzip.compress(b)[:-10], "corrupt or truncated gzip"),
])
def test_corrupt_idx_is_one_clear_error(tmp_path, mutate, needle):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.zeros((4, 28, 28)))
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(PrunetuneError, match=needle):
        read_idx(p)


def test_fashion_mnist_source_splits_and_limits(tmp_path):
    folder = make_idx_folder(tmp_path / "fm", n_train=200, n_test=50)
    b = DATA_SOURCES.get("fashion_mnist")(DataSpec(path=str(folder), limit=100, val_size=0.2), seed=3)
    assert (len(b.train), len(b.val), len(b.test)) == (80, 20, 50)
    assert torch.bincount(b.val.y, minlength=10).tolist() == [2] * 10  # stratified
    b2 = DATA_SOURCES.get("fashion_mnist")(DataSpec(path=str(folder), limit=100, val_size=0.2), seed=3)
    assert torch.equal(b.val.x, b2.val.x)  # seeded: identical split
    assert b.input_shape == (1, 28, 28) and abs(float(b.train.x.mean())) < 2


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(PrunetuneError, match="data.path: folder .* not found"):
        DATA_SOURCES.get("fashion_mnist")(DataSpec(path=str(tmp_path / "nope")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunetuneError, match="missing train-images-idx3-ubyte"):
        DATA_SOURCES.get("fashion_mnist")(DataSpec(path=str(tmp_path / "empty")), 0)


def test_labels_out_of_range(tmp_path):
    folder = make_idx_folder(tmp_path / "fm", classes=12)
    with pytest.raises(PrunetuneError, match="labels outside 0..9"):
        DATA_SOURCES.get("fashion_mnist")(DataSpec(path=str(folder)), 0)


def test_balanced_subset_and_split():
    y = torch.tensor([0] * 50 + [1] * 10)
    idx = balanced_subset(y, 20, seed=0)
    assert torch.bincount(y[idx]).tolist() == [10, 10]
    tr, va = split_train_val(y, 0.25, seed=1)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 60
    with pytest.raises(PrunetuneError, match="data.val_size"):
        split_train_val(y, 60, seed=0)


def test_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for c, colour in (("cat", 40), ("dog", 200)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 12), (colour, i * 10, 0)).save(d / f"{i}.png")
    b = DATA_SOURCES.get("image_folder")(DataSpec(source="image_folder", path=str(tmp_path), image_size=8, val_size=2), 0)
    assert b.class_names == ["cat", "dog"] and b.input_shape == (3, 8, 8)
    assert (len(b.train), len(b.val), len(b.test)) == (10, 2, 4)
    # Without data.image_size images keep their own size, which must be square.
    with pytest.raises(PrunetuneError, match=r"0.png: 10x12 image, not square; set data.image_size"):
        DATA_SOURCES.get("image_folder")(DataSpec(source="image_folder", path=str(tmp_path)), 0)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(PrunetuneError, match="broken.png: unreadable image"):
        DATA_SOURCES.get("image_folder")(DataSpec(source="image_folder", path=str(tmp_path), image_size=8), 0)


def test_training_data_with_a_single_class_is_refused(tmp_path):
    from PIL import Image

    from sequence_fixtures import write_sequences

    (tmp_path / "img" / "cat").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / "cat" / f"{i}.png")
    with pytest.raises(PrunetuneError) as e:
        DATA_SOURCES.get("image_folder")(DataSpec(source="image_folder", path=str(tmp_path / "img")), 0)
    assert str(e.value) == (f"{tmp_path / 'img'}: the training data has a single class ('cat'); a classifier needs two "
                            "or more: add examples of another class (image folders: one sub-folder per class)")
    seqs = write_sequences(tmp_path / "seq", n_train=20, n_test=6, classes=1)
    with pytest.raises(PrunetuneError, match=r"train\.npy: the training data has a single class \('0'\)"):
        build_data(DataSpec(source="sequences", path=str(seqs)), 0)
    # Two classes in the same shape train as before.
    two = write_sequences(tmp_path / "seq2", n_train=20, n_test=6, classes=2)
    assert build_data(DataSpec(source="sequences", path=str(two)), 0).num_classes == 2


def test_real_fashion_mnist_shapes():
    assert FMNIST.exists(), "install dataset-fashion-mnist (make test does)"
    b = DATA_SOURCES.get("fashion_mnist")(DataSpec(limit=1000), 0)
    assert (len(b.train), len(b.val), len(b.test)) == (900, 100, 10000)
    assert b.class_names[0] == "T-shirt/top" and b.num_classes == 10


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda dims, body: bytes([0, 0, 0x08, len(dims)]) + b"".join(
    d.to_bytes(4, "big") for d in dims) + body, st.lists(st.integers(0, 6), max_size=3), st.binary(max_size=40)))
def test_any_bytes_either_read_or_fail_with_our_error(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("idx") / "x-idx"
    p.write_bytes(raw)
    try:
        arr = read_idx(p)
    except PrunetuneError as e:
        assert "\n" not in str(e)
    else:
        assert arr.size * arr.itemsize == len(raw) - 4 - 4 * raw[3]
