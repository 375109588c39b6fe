"""Experiment tracking: tiny in-process runs logged to MLflow (local file store) and TensorBoard, read back."""

from __future__ import annotations


import pytest

from prunetune.errors import PrunetuneError
from prunetune.pipeline import run
from prunetune.recipe import load_recipe
from prunetune.tracking import Tracker, flatten, make_tracker, report_metrics

import warm_cli
from conftest import cli_env

TINY = ["name=tracked", "model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=2", "dense.lr=0.01",
        "finetune.epochs=3", "finetune.batch_size=16", "evaluate.latency=false", "evaluate.memory=false"]


def _recipe(*extra):
    return load_recipe(None, [*TINY, *extra])


@pytest.fixture
def mlflow_env(monkeypatch):
    import mlflow  # noqa: F401  (make test installs the track extra; a missing library must fail)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading a file store back needs it too (MLflow >= 3)


def _only_run(uri, experiment="tracked"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_logs_params_epochs_report_and_artifacts(tmp_path, mlflow_env):
    uri = (tmp_path / "store").as_uri()
    logs = []
    report = run(_recipe("prune.method=unstructured"), tmp_path / "r", log=logs.append, track="mlflow", track_uri=uri)
    client, r = _only_run(uri)
    rid = r.info.run_id
    assert r.info.status == "FINISHED" and r.info.run_name == "r"
    assert r.data.params["prune.method"] == "unstructured"
    assert r.data.params["finetune.epochs"] == "3" and r.data.params["prune.include"] == '["*"]'
    assert r.data.tags["prunetune.run_folder"] == str((tmp_path / "r").resolve())

    hist = report["finetune"]["history"]
    acc = client.get_metric_history(rid, "finetune/val_accuracy")
    assert len(acc) == report["finetune"]["epochs_run"] == len(hist) == 3
    assert [m.step for m in sorted(acc, key=lambda m: m.step)] == [1, 2, 3]
    assert [m.value for m in sorted(acc, key=lambda m: m.step)] == [row["val_accuracy"] for row in hist]
    for key in ("train_loss", "val_loss", "lr"):
        assert len(client.get_metric_history(rid, f"finetune/{key}")) == 3
    assert len(client.get_metric_history(rid, "dense/train_loss")) == 2

    m = r.data.metrics
    assert m["stages/finetuned/accuracy"] == report["stages"]["finetuned"]["accuracy"]
    for stage in ("dense", "pruned", "finetuned"):
        for key in ("params", "nonzero_params", "macs", "sparsity"):
            assert m[f"stages/{stage}/{key}"] == report["stages"][stage][key]
    assert m["speedup/finetuned/macs_ratio"] == report["speedup"]["finetuned"]["macs_ratio"]
    assert not any("latency" in k for k in m)  # evaluate.latency=false: nothing invented

    arts = {a.path for a in client.list_artifacts(rid)}
    assert {"report.json", "report.md", "report.html"} <= arts
    assert any(line.startswith("track: mlflow run ") for line in logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "store"]  # no temporary folder left


def test_mlflow_default_store_is_runs_mlruns(tmp_path, mlflow_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(_recipe("finetune.epochs=1"), "runs/a", log=lambda m: None, track="mlflow")
    assert (tmp_path / "runs" / "mlruns").is_dir() and (tmp_path / "runs" / "a" / "report.json").exists()
    _, r = _only_run((tmp_path / "runs" / "mlruns").as_uri())
    assert r.info.run_name == "a"
    # MLFLOW_TRACKING_URI wins over the default.
    other = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    run(_recipe("finetune.epochs=1"), "runs/b", log=lambda m: None, track="mlflow")
    assert _only_run(other)[1].info.run_name == "b"


def test_refine_is_tracked_beside_its_run(tmp_path, mlflow_env, monkeypatch):
    import tensorboard  # noqa: F401
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prunetune.refine import refine

    monkeypatch.chdir(tmp_path)
    run(_recipe("prune.method=unstructured", "finetune.epochs=1"), "runs/a", log=lambda m: None, track="mlflow")
    rep = refine("runs/a/model", ["finetune.epochs=2"], log=lambda m: None, data_path="new", track="mlflow")
    assert rep["folder"] == "runs/a/model-v2"
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())  # the run's store, not runs/a/mlruns
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tracked").experiment_id])}
    assert set(runs) == {"a", "a/model-v2"} and not (tmp_path / "runs" / "a" / "mlruns").exists()
    r = runs["a/model-v2"]
    assert r.info.status == "FINISHED"
    assert r.data.metrics["stages/after/new_data/accuracy"] == rep["stages"]["after"]["new_data"]["accuracy"]
    assert r.data.metrics["stages/after/original_test/accuracy"] == rep["stages"]["after"]["original_test"]["accuracy"]
    assert len(client.get_metric_history(r.info.run_id, "finetune/val_accuracy")) == 2
    assert "report.json" in {a.path for a in client.list_artifacts(r.info.run_id)}

    refine("runs/a/model", ["finetune.epochs=2"], log=lambda m: None, data_path="new", track="tensorboard")
    ea = EventAccumulator(str(tmp_path / "runs" / "a" / "model-v3" / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("finetune/val_accuracy")] == [1, 2]


def test_tensorboard_event_files_in_the_run_folder(tmp_path):
    import tensorboard  # noqa: F401
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = run(_recipe("prune.schedule.kind=iterative", "prune.schedule.steps=2"), tmp_path / "r",
                 log=lambda m: None, track="tensorboard")
    ea = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    n = report["finetune"]["epochs_run"]
    acc = ea.Scalars("finetune/val_accuracy")
    assert [e.step for e in acc] == list(range(1, n + 1))  # counted across the iterative phases
    assert [e.value for e in acc] == pytest.approx([row["val_accuracy"] for row in report["finetune"]["history"]])
    assert len(ea.Scalars("dense/val_loss")) == 2 and {"finetune/lr", "finetune/train_loss"} <= scalars
    assert ea.Scalars("stages/finetuned/accuracy")[0].value == pytest.approx(report["stages"]["finetuned"]["accuracy"])
    assert ea.Scalars("stages/finetuned/nonzero_params")[0].value == pytest.approx(report["stages"]["finetuned"]["nonzero_params"])
    texts = set(ea.Tags()["tensors"])
    assert {"report/text_summary", "recipe/text_summary"} <= texts
    md = ea.Tensors("report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert md == (tmp_path / "r" / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


class Broken(Tracker):
    name = "broken"

    def __init__(self):
        super().__init__()
        self.aborted = False

    def start(self, recipe, run_name, out_dir, *, folder=None):
        return "nowhere"

    def log_metrics(self, metrics, step):
        raise ConnectionError("server gone")

    def finish(self, report, folder):
        raise ConnectionError("server gone\nsecond line")

    def abort(self):
        self.aborted = True


def test_tracker_errors_after_start_are_warnings(tmp_path):
    logs, t = [], Broken()
    report = run(_recipe(), tmp_path / "r", log=logs.append, track=t)
    assert (tmp_path / "r" / "report.json").exists() and report["stages"]["finetuned"]["accuracy"] >= 0
    warnings = [m for m in logs if m.startswith("warning: --track broken")]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)  # one for the epochs, one for the report
    assert t.aborted


def test_bad_tracker_settings():
    with pytest.raises(PrunetuneError, match=r"--track: unknown tracker 'wandb'; choose one of: mlflow, tensorboard"):
        make_tracker("wandb")
    with pytest.raises(PrunetuneError, match="--track-uri: needs --track mlflow"):
        make_tracker(None, "file:///x")
    with pytest.raises(PrunetuneError, match="--track tensorboard takes no URI"):
        make_tracker("tensorboard", "file:///x")


def test_missing_library_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(PrunetuneError, match=r"pip install 'prunetune\[track\]'"):
        make_tracker("mlflow")


def test_flatten_and_report_metrics():
    assert flatten({"a": {"b": None, "c": [1]}, "d": {}, "e": "x"}) == {"a.b": "null", "a.c": "[1]", "d": "{}", "e": "x"}
    rep = {"stages": {"before": {"new_data": {"accuracy": 50.0, "threads": 2, "latency_ms": {"batch_1": {"p50": 1.5}}}}},
           "finetune": {"epochs_run": 2, "best_epoch": None}}
    assert report_metrics(rep) == {"stages/before/new_data/accuracy": 50.0,
                                   "stages/before/new_data/latency_p50_b1_ms": 1.5, "finetune/epochs_run": 2.0}


def test_cli_unknown_tracker_is_one_error_line(tmp_path):
    p = warm_cli.run(["run", "--track", "wandb", "--out", str(tmp_path / "x")], env=cli_env(tmp_path), timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --track: unknown tracker 'wandb'"), p.stderr
    assert "mlflow, tensorboard" in lines[0] and not (tmp_path / "x").exists()
