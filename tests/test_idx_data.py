"""The generic IDX source (issue 17): any MNIST-family folder, labels numbered by value, class names settable,
a held-out test split for a train-only folder, a test-only folder scored by a saved model; fashion_mnist
is a preset of it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_data import make_idx_folder, write_idx

from prunetune.data.base import build_data
from prunetune.data.fashion_mnist import CLASSES, MEAN, STD
from prunetune.data_spec import DataSpec
from prunetune.errors import PrunetuneError
from prunetune.evaluation import evaluate_model
from prunetune.artifacts import save_model
from prunetune.models import build_model
from prunetune.recipe import Recipe
from prunetune.session import open_session


def letters_folder(folder, n_train=120, n_test=40):
    """EMNIST-letters-like names and labels 1..4 (no class 0), 20x24 images."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(folder / f"emnist-letters-{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 20, 24)), compress=True)
        write_idx(folder / f"emnist-letters-{split}-labels-idx1-ubyte", np.arange(n) % 4 + 1)
    return folder


def test_idx_numbers_labels_by_value_and_names_them(tmp_path):
    folder = letters_folder(tmp_path / "letters")
    b = build_data(DataSpec(source="idx", path=str(folder), val_size=0.25), 0)
    assert b.class_names == ["1", "2", "3", "4"] and b.input_shape == (1, 20, 24)
    assert torch.bincount(b.test.y).tolist() == [10] * 4 and (len(b.train), len(b.val)) == (90, 30)
    assert b.preprocess["label_values"] == [1, 2, 3, 4] and b.preprocess["size"] == [20, 24]
    x = torch.cat([b.train.x, b.val.x])
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3  # the training pixels' own mean / std
    named = build_data(DataSpec(source="idx", path=str(folder), class_names=["a", "b", "c", "d"]), 0)
    assert named.class_names == ["a", "b", "c", "d"] and torch.equal(named.test.y, b.test.y)
    with pytest.raises(PrunetuneError, match=r"data\.class_names: 3 names for 4 label values \(1, 2, 3, 4\); give one "
                                             r"name per label value"):
        build_data(DataSpec(source="idx", path=str(folder), class_names=["a", "b", "c"]), 0)


def test_fashion_mnist_is_a_preset_of_idx(tmp_path):
    folder = make_idx_folder(tmp_path / "fm", n_train=200, n_test=50)
    fm = build_data(DataSpec(path=str(folder), val_size=0.2), 3)
    gen = build_data(DataSpec(source="idx", path=str(folder), val_size=0.2, class_names=CLASSES), 3)
    assert fm.class_names == gen.class_names == CLASSES
    assert fm.preprocess == {"kind": "image", "mean": [MEAN], "std": [STD], "size": [28, 28], "channels": 1}
    for a, b in ((fm.train, gen.train), (fm.val, gen.val), (fm.test, gen.test)):
        assert torch.equal(a.y, b.y)  # the same splits
        pixels = lambda d, m, s: d.x * s + m  # noqa: E731
        assert torch.allclose(pixels(a, MEAN, STD), pixels(b, gen.preprocess["mean"][0], gen.preprocess["std"][0]), atol=1e-5)


def test_a_train_only_folder_holds_out_a_test_split(tmp_path):
    folder = make_idx_folder(tmp_path / "fm", n_train=100, n_test=10)
    for f in folder.glob("t10k-*"):
        f.unlink()
    logged = []
    b = open_session(Recipe(), logged.append).load_data(DataSpec(source="idx", path=str(folder), test_size=0.3),
                                                        announce=True)
    assert logged[:2] == ["data: 63 train / 7 val / 30 test, 10 classes", f"data: {b.notes[0]}"]  # the run's summary
    assert len(b.test) == 30 and torch.bincount(b.test.y).tolist() == [3] * 10 and len(b.train) + len(b.val) == 70
    assert b.notes[0].startswith("no test split: 30 of 100 examples of ") and "(data.test_size 0.3, seeded, stratified)" in b.notes[0]


def test_a_test_only_folder_is_scored_by_a_saved_model_and_refused_for_a_run(tmp_path):
    folder = letters_folder(tmp_path / "letters", n_train=80, n_test=40)
    recipe = Recipe.model_validate({"model": {"name": "lenet300"}, "evaluate": {"latency": False, "memory": False},
                                    "data": {"source": "idx", "path": str(folder), "class_names": list("abcd")}})
    bundle = build_data(recipe.data, 0)
    torch.manual_seed(0)
    model = build_model(recipe.model, bundle.num_classes, bundle.input_shape)
    save_model(model, tmp_path / "model", {"task": "classification", "model": recipe.model.model_dump(mode="json"),
                                           "num_classes": 4, "class_names": bundle.class_names, "input_shape": [1, 20, 24],
                                           "preprocess": bundle.preprocess, "recipe": recipe.model_dump(mode="json")})
    full = evaluate_model(tmp_path / "model")
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    for f in folder.glob("*test*"):
        shutil.copy(f, test_only / f.name)
    res = evaluate_model(tmp_path / "model", [f"data.path={test_only}"])
    assert res["examples"] == full["examples"] == 40 and res["accuracy"] == full["accuracy"]
    assert res["per_class"].keys() == {"a", "b", "c", "d"}
    with pytest.raises(PrunetuneError, match=r"data\.path: .*test_only has only test files: that scores a saved model "
                                             r"\(prunetune eval\), but a run needs training IDX files"):
        build_data(DataSpec(source="idx", path=str(test_only)), 0)


def test_idx_file_errors_name_the_field(tmp_path):
    folder = make_idx_folder(tmp_path / "fm", n_train=20, n_test=10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PrunetuneError, match=r"data\.test_labels: .* has test images \(t10k-images-idx3-ubyte\.gz\) but "
                                             r"no test labels file; add it or set data\.test_labels"):
        build_data(DataSpec(source="idx", path=str(folder)), 0)
    write_idx(folder / "train-images-idx3-ubyte.copy", np.zeros((20, 28, 28)))
    with pytest.raises(PrunetuneError, match=r"data\.train_images: several train images files .*; set data\.train_images"):
        build_data(DataSpec(source="idx", path=str(folder)), 0)
