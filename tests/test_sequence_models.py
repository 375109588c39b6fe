"""Sequence and embedding models (issue 8, part 2): LSTM / GRU / 1-D conv / embedding layer types, the
built-in conv1d_net, lstm_classifier and recommender, the `sequences` and `ratings` sources and the
`regression` task. The pruning contracts of these layers are in test_pruning_contracts.py
(test_sequence_contract); here: exactness of structural removal, the sources, and `prunetune run` /
`prunetune eval` end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import warm_cli
from conftest import cli_env
from prunetune.artifacts import load_model, save_model
from prunetune.data.base import build_data
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.pruning.importance import L2Magnitude
from prunetune.pruning.layers import layer_type_of, prunable_layers
from prunetune.pruning.masks import masked_tensors
from prunetune.pruning.pruners import Structured, Unstructured
from prunetune.pruning.sequence import gates
from prunetune.data_spec import DataSpec
from prunetune.recipe import ModelSpec, PruneSpec, Recipe
from prunetune.registry import LAYER_TYPES, TASKS
from sequence_fixtures import write_ratings, write_sequences

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- layer types and exact structural removal


class RNNNet(nn.Module):
    def __init__(self, cell=nn.LSTM, layers=1, bidirectional=False, hidden=8, features=5, read_h=False):
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 6)
        self.classifier = nn.Linear(6, 3)
        self.read_h = read_h

    def forward(self, x):
        out, h = self.rnn(x)
        if self.read_h:
            h = h[0] if isinstance(h, tuple) else h
            z = torch.cat([h[-2], h[-1]], 1) if self.rnn.bidirectional else h[-1]
        else:
            z = out.mean(1)
        return self.classifier(torch.relu(self.head(z)))


def test_layer_types_cover_every_gate_tensor():
    assert {"lstm", "gru", "rnn", "embedding", "conv1d"} <= set(LAYER_TYPES.names())
    lstm = nn.LSTM(4, 8, num_layers=2, bidirectional=True)
    names = layer_type_of(lstm).tensors(lstm)
    assert set(names) == {f"weight_{k}_l{i}{s}" for k in ("ih", "hh") for i in (0, 1) for s in ("", "_reverse")}
    m = build_model(ModelSpec(name="lstm_classifier", kwargs={"cell": "gru"}), 3, (10, 4))
    assert [n for n, _ in prunable_layers(m)] == ["rnn", "head.0", "classifier"]


def _zero_units(model: RNNNet, units: list[int]) -> None:
    """Make hidden units `units` of every layer and direction dead (always 0) and unread."""
    rnn, h = model.rnn, model.rnn.hidden_size
    rows = torch.tensor([g * h + u for g in range(gates(rnn)) for u in units])
    dirs = ["", "_reverse"] if rnn.bidirectional else [""]
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for s in dirs:
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(rnn, f"{name}_l{k}{s}")[rows] = 0
                getattr(rnn, f"weight_hh_l{k}{s}")[:, units] = 0
                if k + 1 < rnn.num_layers:
                    for d, _ in enumerate(dirs):
                        for s2 in dirs:
                            getattr(rnn, f"weight_ih_l{k + 1}{s2}")[:, [d * h + u for u in units]] = 0
        for d, _ in enumerate(dirs):
            model.head.weight[:, [d * h + u for u in units]] = 0


@pytest.mark.parametrize("cell,layers,bidirectional,read_h", [
    (nn.LSTM, 1, False, False), (nn.GRU, 2, False, True), (nn.LSTM, 2, True, False), (nn.GRU, 1, True, False),
    (nn.RNN, 1, False, True), (nn.LSTM, 3, False, True),
])
def test_removing_dead_hidden_units_leaves_outputs_unchanged(cell, layers, bidirectional, read_h):
    torch.manual_seed(0)
    model = RNNNet(cell, layers, bidirectional, read_h=read_h).eval()
    _zero_units(model, [1, 4, 6, 7])
    x = torch.randn(4, 7, 5)
    before = model(x)
    pruner = Structured(PruneSpec(sparsity=0.5), L2Magnitude(), ["rnn"])
    pruner.setup(model, x, [0.5])
    pruner.prune_to(model, 0.5)
    rnn, g, h = model.rnn, gates(model.rnn), 4
    assert rnn.hidden_size == h and rnn.input_size == 5
    for name, p in rnn.named_parameters():
        want = {"weight_ih": (g * h, 5 if "_l0" in name else h * (2 if bidirectional else 1)),
                "weight_hh": (g * h, h), "bias_ih": (g * h,), "bias_hh": (g * h,)}[name.rsplit("_", 1)[0].removesuffix("_l0").split("_l")[0]]
        assert tuple(p.shape) == want, name
    assert model.head.in_features == h * (2 if bidirectional else 1)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_embedding_dimension_is_pruned_with_its_consumers_and_rows_are_kept():
    torch.manual_seed(0)
    m = build_model(ModelSpec(name="recommender", kwargs={"dim": 8, "hidden": [12, 6]}), 0, (2,),
                    {"num_users": 15, "num_items": 9, "rating_mean": 3.5}).eval()
    dead = [0, 3, 5, 6]
    with torch.no_grad():
        m.user.weight[:, dead] = 0
        m.item.weight[:, dead] = 0
        m.mlp[0].weight[:, dead + [8 + d for d in dead]] = 0
    x = torch.stack([torch.randint(0, 15, (20,)), torch.randint(0, 9, (20,))], 1)
    before = m(x)
    pruner = Structured(PruneSpec(sparsity=0.5), L2Magnitude(), ["user", "item"])
    pruner.setup(m, x[:2], [0.5])
    pruner.prune_to(m, 0.5)
    assert (m.user.num_embeddings, m.user.embedding_dim) == (15, 4) and tuple(m.user.weight.shape) == (15, 4)
    assert (m.item.num_embeddings, m.item.embedding_dim) == (9, 4)
    assert m.mlp[0].in_features == 8 and m.mlp[0].out_features == 12  # not a target: its outputs stay
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-6)


def test_a_read_bidirectional_final_state_is_refused_for_structured_but_masks_work():
    torch.manual_seed(0)
    model = RNNNet(nn.LSTM, 1, True, read_h=True)
    x = torch.randn(3, 5, 5)
    with pytest.raises(PrunetuneError, match="reads the final hidden state h_n of the bidirectional rnn"):
        Structured(PruneSpec(sparsity=0.5), L2Magnitude(), ["rnn"]).setup(model, x, [0.5])
    model = RNNNet(nn.LSTM, 1, True, read_h=True)
    pruner = Unstructured(PruneSpec(sparsity=0.5, method="unstructured"), L2Magnitude(), ["rnn"])
    pruner.setup(model, x, [0.5])
    pruner.prune_to(model, 0.5)
    assert len(masked_tensors(model)) == 4 and torch.isfinite(model(x)).all()
    proj = nn.Module()
    proj.rnn = nn.LSTM(5, 8, proj_size=4, batch_first=True)
    with pytest.raises(PrunetuneError, match="proj_size"):
        Structured(PruneSpec(sparsity=0.5), L2Magnitude(), ["rnn"]).setup(proj, x, [0.5])


def test_sequence_models_take_any_number_of_steps():
    for name, kw in (("conv1d_net", {}), ("lstm_classifier", {"bidirectional": True, "num_layers": 2}),
                     ("lstm_classifier", {"cell": "gru", "pool": "last"})):
        m = build_model(ModelSpec(name=name, kwargs=kw), 4, (10, 3), {"features": 3}).eval()
        for t in (10, 3, 17):
            assert m(torch.randn(2, t, 3)).shape == (2, 4)
    with pytest.raises(PrunetuneError, match="cell must be lstm or gru"):
        build_model(ModelSpec(name="lstm_classifier", kwargs={"cell": "elman"}), 4, (10, 3))


# ---------------------------------------------------------------- the regression task


def test_regression_task_metrics_and_output_check():
    from prunetune.data.base import DataBundle, TensorData

    task = TASKS.get("regression")()
    assert (task.metric, task.higher_is_better, task.labels) == ("rmse", False, False)
    data = TensorData(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([1.0, 1.0, 4.0]))
    res = task.evaluate(nn.Identity(), data, 2, torch.device("cpu"), [])
    assert res["rmse"] == pytest.approx((5 / 3) ** 0.5) and res["mae"] == pytest.approx(1.0)
    assert task.score(res) == -res["rmse"] and task.drop({"rmse": 1.5}, {"rmse": 1.0}) == pytest.approx(0.5)
    bundle = DataBundle(data, data, data, [], (1,))
    with pytest.raises(PrunetuneError, match="outputs 3 values per example"):
        task.check_outputs(torch.zeros(2, 3), bundle, "model")
    with pytest.raises(PrunetuneError, match="regression needs numeric targets"):
        task.check_outputs(torch.zeros(2, 1), DataBundle(TensorData(data.x, torch.tensor([0, 1, 1])), data, data, [], (1,)), "model")


# ---------------------------------------------------------------- the sources


def test_sequences_npy_and_csv_give_the_same_data(tmp_path):
    a = build_data(DataSpec(source="sequences", path=str(write_sequences(tmp_path / "npy", n_train=30, n_test=9))), 0)
    b = build_data(DataSpec(source="sequences", path=str(write_sequences(tmp_path / "csv", n_train=30, n_test=9, fmt="csv"))), 0)
    assert a.input_shape == b.input_shape == (10, 4) and a.model_kwargs == b.model_kwargs == {"features": 4}
    assert a.class_names == b.class_names == ["0", "1", "2"]
    for s in ("train", "val", "test"):
        torch.testing.assert_close(getattr(a, s).x, getattr(b, s).x, atol=1e-4, rtol=0)
        assert torch.equal(getattr(a, s).y, getattr(b, s).y)
    assert a.preprocess["kind"] == "sequence" and len(a.preprocess["mean"]) == 4
    assert abs(float(a.train.x.mean())) < 0.3  # standardised with the training split's statistics
    held = build_data(DataSpec(source="sequences", path=str(write_sequences(tmp_path / "nt", n_train=40, n_test=0))), 0)
    assert len(held.test) == 8 and len(held.train) + len(held.val) == 32  # a seeded 20% held out


def test_sequence_files_that_disagree_are_refused(tmp_path):
    path = write_sequences(tmp_path / "w", n_train=12, n_test=6, test_features=3)
    with pytest.raises(PrunetuneError, match=r"test.npy: feature width 3 but the training file train.npy has 4"):
        build_data(DataSpec(source="sequences", path=str(path)), 0)
    ok = write_sequences(tmp_path / "ok", n_train=12, n_test=6)
    with pytest.raises(PrunetuneError, match=r"train.npy: feature width 4 but the model expects 8 features"):
        build_data(DataSpec(source="sequences", path=str(ok)), 0, ModelSpec(name="lstm_classifier", kwargs={"features": 8}))
    csv = write_sequences(tmp_path / "csv", n_train=6, n_test=3, fmt="csv")
    lines = (csv / "test.csv").read_text().splitlines()
    (csv / "test.csv").write_text("\n".join(lines[:-1] + [lines[-1].rsplit(",", 1)[0] + ",7"]) + "\n")
    with pytest.raises(PrunetuneError, match=r"test.csv:\d+: sequence 's2' has label '7' here but '2'"):
        build_data(DataSpec(source="sequences", path=str(csv)), 0)
    (csv / "test.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(PrunetuneError, match=r"test.csv:\d+: sequence 's\d' has 9 steps but the first has 10"):
        build_data(DataSpec(source="sequences", path=str(csv)), 0)
    np.save(ok / "test_labels.npy", np.full(6, 5))
    with pytest.raises(PrunetuneError, match=r"test.npy \(sequence 0\): label '5' is not among the training labels"):
        build_data(DataSpec(source="sequences", path=str(ok)), 0)


def test_ratings_ids_tables_and_unknown_ids(tmp_path):
    root = write_ratings(tmp_path / "r", users=12, items=7, n=80, test=["3,4,2.5", "11,6,4"])
    b = build_data(DataSpec(source="ratings", path=str(root)), 0)
    assert b.model_kwargs["num_users"] == 12 and b.model_kwargs["num_items"] == 7 and 1 <= b.model_kwargs["rating_mean"] <= 5
    assert b.train.x.dtype == torch.long and b.train.y.dtype == torch.float32 and len(b.test) == 2
    assert b.input_shape == (2,) and b.class_names == [] and torch.equal(b.test.x[1], torch.tensor([11, 6]))
    (root / "test.csv").write_text("user,item,rating\n3,4,2.5\n12,1,3\n")
    with pytest.raises(PrunetuneError, match=r"test.csv:3: user id '12' is beyond the table of 12 users \(ids 0..11"):
        build_data(DataSpec(source="ratings", path=str(root)), 0)
    (root / "test.csv").write_text("user,item,rating\n3,4,2.5\n")
    with pytest.raises(PrunetuneError, match=r"train.csv:\d+: user id '\d+' is beyond the model's table of 5 users"):
        build_data(DataSpec(source="ratings", path=str(root)), 0, ModelSpec(name="recommender", kwargs={"num_users": 5}))
    s = tmp_path / "s"
    s.mkdir()
    (s / "ratings.dat").write_text("ann::brazil::5::978300760\nbob::cuba::3::978300761\nann::cuba::4::1\n" * 4)
    (s / "test.tsv").write_text("bob\tbrazil\t2\ncyd\tcuba\t1\n")
    with pytest.raises(PrunetuneError, match=r"test.tsv:2: user id 'cyd' does not appear in the training file ratings.dat"):
        build_data(DataSpec(source="ratings", path=str(s)), 0)
    (s / "test.tsv").write_text("bob\tbrazil\t2\n")
    b = build_data(DataSpec(source="ratings", path=str(s), val_size=2), 0)
    assert (b.model_kwargs["num_users"], b.model_kwargs["num_items"]) == (2, 2) and b.preprocess["ids"]["users"] == "str"
    assert b.test.x.tolist() == [[1, 0]] and len(b.val) == 2
    (s / "test.tsv").write_text("bob\tbrazil\tgood\n")
    with pytest.raises(PrunetuneError, match=r"test.tsv:1: rating 'good' is not a number, and as a header"):
        build_data(DataSpec(source="ratings", path=str(s)), 0)
    (s / "test.tsv").write_text("bob\tbrazil\t2\nann\tcuba\tnan\n")
    with pytest.raises(PrunetuneError, match=r"test.tsv:2: rating 'nan' is not a finite number"):
        build_data(DataSpec(source="ratings", path=str(s)), 0)


# ---------------------------------------------------------------- fine-tuning methods on sequence models


def test_lora_on_a_masked_lstm_classifier_keeps_every_gate_mask(tmp_path):
    from prunetune.pipeline import run

    data = write_sequences(tmp_path / "d", n_train=60, n_test=15, time=6)
    recipe = Recipe.model_validate({
        "model": {"name": "lstm_classifier", "kwargs": {"hidden_size": 8, "hidden": 8}},
        "data": {"source": "sequences", "path": str(data)},
        "dense": {"epochs": 1, "batch_size": 16}, "prune": {"method": "unstructured", "sparsity": 0.5},
        "finetune": {"method": "lora", "epochs": 1, "batch_size": 16, "peft": {"r": 2}},
        "evaluate": {"latency": False, "memory": False}})
    report = run(recipe, out=tmp_path / "run", log=lambda m: None, checkpoint=False)
    merge = report["finetune"]["merge"]
    assert merge["pruned_weights_nonzero_after"] == 0 and merge["max_logit_diff"] < 1e-4
    model, _ = load_model(tmp_path / "run" / "model", keep_masks=True)
    masks = masked_tensors(model)
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.0.weight"} <= set(masks)
    assert all(torch.count_nonzero(getattr(dict(model.named_modules())[k.rpartition(".")[0]], k.rpartition(".")[2])[~m]) == 0
               for k, m in masks.items())


# ---------------------------------------------------------------- `prunetune run` and `prunetune eval`


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**cli_env(tmp_path), "OMP_NUM_THREADS": "1"}
    return warm_cli.run(list(args), env=env, cwd=tmp_path, timeout=600)


def test_cli_run_and_eval_on_sequences(tmp_path):
    data = write_sequences(tmp_path / "seq", n_train=240, n_test=60, time=8)
    out = tmp_path / "run"
    p = _cli(tmp_path, "run", "--out", str(out), "--set", "model.name=lstm_classifier",
             "--set", "model.kwargs={hidden_size: 16, hidden: 16}", "--set", "data.source=sequences",
             "--set", f"data.path={data}", "--set", "dense.epochs=10", "--set", "dense.batch_size=16", "--set", "dense.lr=0.01",
             "--set", "finetune.epochs=4", "--set", "finetune.batch_size=16", "--set", "finetune.lr=0.005",
             "--set", "evaluate.latency=false", "--set", "evaluate.memory=false")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert report["metric"] == "accuracy" and stages["finetuned"]["accuracy"] > 70  # chance is 33
    assert stages["finetuned"]["params"] < stages["dense"]["params"]
    # Shipping: the LSTM exports to ONNX (checked against PyTorch at export); predict, which reads
    # image files and text lines, refuses a sequence model in one line.
    onnx_file = tmp_path / "seq.onnx"
    e = _cli(tmp_path, "export", str(out / "model"), "--out", str(onnx_file))
    assert e.returncode == 0, e.stderr[-2000:]
    assert onnx_file.stat().st_size > 0
    exported = json.loads((tmp_path / "seq.export.json").read_text())
    assert exported["max_abs_diff"] < 1e-4
    (tmp_path / "x.txt").write_text("1 2 3\n")
    q = _cli(tmp_path, "predict", str(out / "model"), str(tmp_path / "x.txt"))
    assert q.returncode == 2 and q.stderr.count("\n") == 1 and "a sequence model takes feature sequences" in q.stderr
    rnn = next(r for r in report["plan"] if r["layer"] == "rnn")
    assert rnn["type"] == "LSTM" and rnn["shape_before"] == [16, 4] and rnn["shape_after"] == [8, 4]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["model_kwargs"] == {"features": 4} and manifest["input_shape"] == [8, 4]
    e = _cli(tmp_path, "eval", str(out / "model"))
    assert e.returncode == 0, e.stderr[-3000:]
    assert json.loads(e.stdout)["accuracy"] == stages["finetuned"]["accuracy"]


def test_cli_run_and_eval_on_ratings(tmp_path):
    data = write_ratings(tmp_path / "ratings", users=40, items=30, n=1500)
    out = tmp_path / "run"
    p = _cli(tmp_path, "run", "--out", str(out), "--set", "task=regression", "--set", "model.name=recommender",
             "--set", "model.kwargs={dim: 16, hidden: [32, 16]}", "--set", "data.source=ratings",
             "--set", f"data.path={data}", "--set", "dense.epochs=15", "--set", "dense.batch_size=64", "--set", "dense.lr=0.01",
             "--set", "finetune.epochs=4", "--set", "finetune.batch_size=64", "--set", "finetune.lr=0.005",
             "--set", "evaluate.latency=false", "--set", "evaluate.memory=false")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rmse dense" in p.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "rmse" and report["higher_is_better"] is False
    for cmd in (["export", str(out / "model"), "--out", str(tmp_path / "r.onnx")],
                ["predict", str(out / "model"), str(tmp_path / "ids.txt")]):
        (tmp_path / "ids.txt").write_text("1 2\n")
        q = _cli(tmp_path, *cmd)
        assert q.returncode == 2 and q.stderr.count("\n") == 1 and "ratings" in q.stderr, (cmd, q.stderr)
        assert not (tmp_path / "r.onnx").exists()
    assert all("rmse" in report["stages"][s] and "mae" in report["stages"][s] for s in ("dense", "pruned", "finetuned"))
    # The predict-the-mean baseline on the same test split.
    bundle = build_data(DataSpec.model_validate(report["recipe"]["data"]), report["recipe"]["seed"])
    baseline = float((bundle.test.y - bundle.train.y.mean()).pow(2).mean().sqrt())
    assert report["stages"]["finetuned"]["rmse"] < 0.6 * baseline
    plan = {r["layer"]: r for r in report["plan"]}
    assert plan["user"]["shape_before"] == [40, 16] and plan["user"]["shape_after"] == [40, 8]  # rows kept
    e = _cli(tmp_path, "eval", str(out / "model"))
    assert e.returncode == 0, e.stderr[-3000:]
    assert json.loads(e.stdout)["rmse"] == pytest.approx(report["stages"]["finetuned"]["rmse"], abs=1e-5)


@pytest.mark.parametrize("name,kwargs,data_kwargs", [
    ("lstm_classifier", {"cell": "gru", "hidden_size": 10, "num_layers": 2, "bidirectional": True}, {"features": 3}),
    ("conv1d_net", {"widths": [6, 10], "hidden": 8}, {"features": 3}),
    ("recommender", {"dim": 6, "hidden": [8]}, {"num_users": 7, "num_items": 5, "rating_mean": 3.0}),
])
def test_saved_structured_sequence_models_load_identically(tmp_path, name, kwargs, data_kwargs):
    """Structurally pruned built-in models survive save -> load (manifest shapes and data-decided kwargs)."""
    from prunetune.pruning.controller import PruningController
    from prunetune.pruning.targets import select_targets
    from sequence_fixtures import make_seq_bundle

    task = TASKS.get("regression" if name == "recommender" else "classification")()
    bundle = make_seq_bundle(features=3)
    if name == "recommender":
        from prunetune.data.base import DataBundle, TensorData

        x = torch.stack([torch.arange(40) % 7, torch.arange(40) % 5], 1)
        data = TensorData(x, torch.rand(40) * 4 + 1)
        bundle = DataBundle(data, data, data, [], (2,))
    spec = ModelSpec(name=name, kwargs=kwargs)
    dense = build_model(spec, bundle.num_classes, bundle.input_shape, data_kwargs)
    targets = select_targets(dense, ["*"], [], ["classifier"])
    ctl = PruningController(PruneSpec(sparsity=0.3), task, bundle, torch.device("cpu"), targets, 1, 0)
    model, _ = ctl.one_shot_copy(dense)
    model.eval()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    if name == "lstm_classifier":
        assert model.rnn.hidden_size == 7 and model.head[0].in_features == 14
    save_model(model, tmp_path / "m", {"task": task.name, "model": spec.model_dump(), "num_classes": bundle.num_classes,
                                       "class_names": bundle.class_names, "input_shape": list(bundle.input_shape),
                                       "preprocess": {}, "model_kwargs": data_kwargs})
    loaded, _ = load_model(tmp_path / "m")
    x = bundle.test.x[:6]
    assert torch.equal(loaded(x), model(x))
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("extra,after", [
    # every LSTM gate tensor masked by gradual events, a mid-epoch checkpoint
    (["model.name=lstm_classifier", "prune.method=unstructured", "prune.schedule.kind=gradual", "prune.schedule.end=1.0",
      "finetune.checkpoint_every_steps=3"], 2),
    # hidden units of a stacked bidirectional GRU removed between iterative phases
    (["model.name=lstm_classifier", "model.kwargs.cell=gru", "model.kwargs.bidirectional=true", "model.kwargs.num_layers=2",
      "prune.schedule.kind=iterative", "prune.schedule.steps=2"], 2),
])
def test_sequence_runs_resume_to_the_same_result(tmp_path, monkeypatch, extra, after):
    from prunetune.pipeline import resume_run, run
    from prunetune.recipe import load_recipe
    from test_checkpoint import _run_killed, assert_same_run

    data = write_sequences(tmp_path / "d", n_train=60, n_test=15, time=5)
    recipe = load_recipe(None, [f"data.path={data}", "data.source=sequences", "model.kwargs.hidden_size=8",
                                "model.kwargs.hidden=8", "dense.epochs=1", "dense.cache=false", "finetune.epochs=3",
                                "finetune.batch_size=16", "evaluate.latency=false", "evaluate.memory=false", *extra])
    run(recipe, tmp_path / "ref", log=lambda m: None)
    _run_killed(recipe, tmp_path / "x", after, monkeypatch)
    resume_run(tmp_path / "x", log=lambda m: None)
    assert_same_run(tmp_path / "ref", tmp_path / "x")


# ---------------------------------------------------------------- a saved model preprocesses new data as it was trained


def _saved(tmp_path, sets: list[str]) -> Path:
    from prunetune.pipeline import run
    from prunetune.recipe import load_recipe

    recipe = load_recipe(None, ["dense.epochs=3", "dense.cache=false", "finetune.epochs=1", "evaluate.latency=false",
                                "evaluate.memory=false", *sets])
    run(recipe, tmp_path / "run", log=lambda m: None)
    return tmp_path / "run" / "model"


def test_eval_standardises_new_sequence_files_with_the_saved_statistics(tmp_path):
    from prunetune.evaluation import evaluate_model

    data = write_sequences(tmp_path / "seq", n_train=90, n_test=30, time=5)
    model = _saved(tmp_path, [f"data.path={data}", "data.source=sequences", "model.name=lstm_classifier",
                              "model.kwargs.hidden_size=8", "model.kwargs.hidden=8"])
    # The same test file beside a training file on another scale: standardising with the new training
    # file's statistics would move every test input; the saved model's statistics must be used.
    other = tmp_path / "seq2"
    other.mkdir()
    np.save(other / "train.npy", np.load(data / "train.npy") * 10 + 5)
    for name in ("train_labels.npy", "test.npy", "test_labels.npy"):
        (other / name).write_bytes((data / name).read_bytes())
    manifest = json.loads((model / "manifest.json").read_text())
    spec = DataSpec(source="sequences", path=str(other))
    with_saved = build_data(spec, 0, saved=manifest["preprocess"])
    refit = build_data(spec, 0)
    original = build_data(DataSpec(source="sequences", path=str(data)), 0)
    assert torch.allclose(with_saved.test.x, original.test.x, atol=1e-5)  # the manifest keeps 8 decimals
    assert not torch.allclose(refit.test.x, original.test.x, atol=1e-2)  # the negative control: refitting moves the inputs
    assert evaluate_model(model, [f"data.path={other}"])["accuracy"] == evaluate_model(model)["accuracy"]


def test_eval_maps_string_ids_to_the_rows_the_model_was_trained_with(tmp_path):
    from prunetune.evaluation import evaluate_model

    data = write_ratings(tmp_path / "r", users=20, items=15, n=250)
    lines = (data / "train.csv").read_text().splitlines()
    named = ["user,item,rating"] + [f"u{u},i{i},{r}" for u, i, r in (ln.split(",") for ln in lines[1:])]
    (data / "train.csv").write_text("\n".join(named) + "\n")
    (data / "test.csv").write_text("\n".join(["user,item,rating", *named[1:51]]) + "\n")
    model = _saved(tmp_path, ["task=regression", "model.name=recommender", "model.kwargs.dim=8", "data.source=ratings",
                              f"data.path={data}"])
    manifest = json.loads((model / "manifest.json").read_text())
    assert len(manifest["preprocess"]["id_tables"]["users"]) == manifest["model_kwargs"]["num_users"]
    # The same triples with the training lines reversed: numbering ids by first appearance would give
    # every user and item another row.
    other = tmp_path / "r2"
    other.mkdir()
    (other / "train.csv").write_text("\n".join([named[0], *reversed(named[1:])]) + "\n")
    (other / "test.csv").write_text((data / "test.csv").read_text())
    spec = DataSpec(source="ratings", path=str(other))
    kept = build_data(spec, 0, saved=manifest["preprocess"])
    renumbered = build_data(spec, 0)
    original = build_data(DataSpec(source="ratings", path=str(data)), 0)
    assert torch.equal(kept.test.x, original.test.x)
    assert not torch.equal(renumbered.test.x, original.test.x)  # the negative control
    assert evaluate_model(model, [f"data.path={other}"])["rmse"] == evaluate_model(model)["rmse"]
