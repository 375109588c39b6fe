"""Experiment tracking (`--track tensorboard|mlflow`): parameters, per-epoch metrics, final report.

A tracker gets the resolved recipe (flattened to dotted keys) at `start`, one row per training epoch
(`log_epoch("dense" | "finetune", row)`: train_loss, val_loss, val_accuracy, lr, the step being the
epoch counted across phases), and the report at `finish`: every stage metric as
`stages/<stage>/<metric>`, speedups as `speedup/<stage>/<ratio>` (with `<batch>_low`, `_high`, `_noisy`
from the alternating timing), plus the report files.

`start` and `finish` are called with the run's temporary folder, which is renamed into place after
`finish`: TensorBoard event files are written to `<run>/tensorboard/` and so end up in the final
folder; MLflow copies the report files into its own artifact store before the rename.

The libraries are imported inside the methods, so `import prunetune` stays light; the pipeline wraps
a tracker in `Guarded`, which turns errors after `start` into one warning line.

Example:
    >>> flatten({"prune": {"method": "structured", "include": ["*"]}, "seed": 0})
    {'prune.method': 'structured', 'prune.include': '["*"]', 'seed': '0'}
    >>> epoch_metrics("dense", {"epoch": 1, "train_loss": 0.5, "val_accuracy": 80.0, "epoch_s": 1.2})
    {'dense/train_loss': 0.5, 'dense/val_accuracy': 80.0}
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from . import __version__
from .errors import PrunetuneError
from .registry import TRACKERS

EPOCH_KEYS = ("train_loss", "val_loss", "val_accuracy", "lr")
REPORT_FILES = ("report.json", "report.md", "report.html")
INSTALL = "pip install 'prunetune[track]'"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": value as text}; strings stay as they are, everything else is JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def epoch_metrics(prefix: str, row: dict[str, Any]) -> dict[str, float]:
    keys = [*EPOCH_KEYS, *(k for k in row if k.startswith("val_") and k not in EPOCH_KEYS)]  # e.g. val_perplexity
    return {f"{prefix}/{k}": x for k in keys if (x := _number(row.get(k))) is not None}


def _stage_record(rec: dict[str, Any], prefix: str, out: dict[str, float]) -> None:
    for k, v in rec.items():
        if k == "threads":
            continue
        if (x := _number(v)) is not None:
            out[f"{prefix}/{k}"] = x
    lat = rec.get("latency_ms") or {}
    for key, tag in (("batch_1", "b1"), ("batch_N", "bN")):
        if isinstance(lat.get(key), dict) and (x := _number(lat[key].get("p50"))) is not None:
            out[f"{prefix}/latency_p50_{tag}_ms"] = x
    mem = rec.get("peak_memory_bytes")
    if isinstance(mem, dict) and (x := _number(mem.get("bytes"))) is not None:
        out[f"{prefix}/peak_memory_bytes"] = x


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's final numbers as flat metric names (run and refine reports alike)."""
    out: dict[str, float] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        if "params" in node or "accuracy" in node:  # a stage record
            _stage_record(node, prefix, out)
        else:  # refine: stage -> {new_data, original_test} -> record
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}/{k}")

    for stage, rec in (report.get("stages") or {}).items():
        if isinstance(rec, dict):
            walk(rec, f"stages/{stage}")
    for stage, row in (report.get("speedup") or {}).items():
        for k, v in row.items():
            if (x := _number(v)) is not None:
                out[f"speedup/{stage}/{k.removeprefix('speedup_')}"] = x
        for key, rec in (row.get("measured") or {}).items():  # the alternating timing's interval (timing.py)
            for part in ("low", "high"):
                if (x := _number(rec.get(part))) is not None:
                    out[f"speedup/{stage}/{key}_{part}"] = x
            out[f"speedup/{stage}/{key}_noisy"] = float(bool(rec.get("noisy")))
    for k in ("epochs_run", "best_epoch", "wall_s"):
        if (x := _number((report.get("finetune") or {}).get(k))) is not None:
            out[f"finetune/{k}"] = x
    return out


def require(module: str, tracker: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PrunetuneError(f"--track {tracker}: the {module} package is not installed; run: {INSTALL}")


class Tracker:
    """Base class: subclasses implement `start`, `log_metrics`, `finish` (and `abort` if needed)."""

    name = "?"

    def __init__(self, uri: str | None = None) -> None:
        if uri is not None:
            raise PrunetuneError(f"--track-uri: --track {self.name} takes no URI; drop --track-uri")
        self._steps: dict[str, int] = {}

    def start(self, recipe: dict[str, Any], run_name: str, out_dir: Path, *, folder: Path | None = None) -> str:
        """Begin a run and say where it is logged. `out_dir` is the (temporary) run folder, renamed
        to `folder` (default: `out_dir`) after `finish`."""
        raise NotImplementedError

    def log_epoch(self, prefix: str, row: dict[str, Any]) -> None:
        """One training epoch's row of `Trainer.history`; step = epochs so far under `prefix`."""
        self._steps[prefix] = step = self._steps.get(prefix, 0) + 1
        self.log_metrics(epoch_metrics(prefix, row), step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, report: dict[str, Any], folder: Path) -> None:
        """Log the final report; `folder` holds report.json/.md/.html (still the temporary folder)."""
        raise NotImplementedError

    def abort(self) -> None:
        """The run failed after `start`: mark it so and release files (never raises)."""


class NoTracker(Tracker):
    """Tracking off: every call does nothing."""

    name = "none"

    def start(self, recipe, run_name, out_dir, *, folder=None) -> str:
        return ""

    def log_epoch(self, prefix, row) -> None:
        pass

    def finish(self, report, folder) -> None:
        pass


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files in <run>/tensorboard/ (scalars, recipe and report.md as text, hparams)."""

    name = "tensorboard"

    def __init__(self, uri: str | None = None) -> None:
        super().__init__(uri)
        require("tensorboard", self.name)
        self.writer = None
        self.params: dict[str, str] = {}

    def start(self, recipe, run_name, out_dir, *, folder=None) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.params = flatten(recipe)
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        table = "\n".join(["| parameter | value |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in self.params.items())])
        self.writer.add_text("recipe", table, 0)
        self.writer.flush()
        return f"tensorboard --logdir {Path(folder or out_dir) / 'tensorboard'}"

    def log_metrics(self, metrics, step) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self, report, folder) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = report_metrics(report)
        try:
            for summary in hparams(self.params, metrics):  # the HParams dashboard: recipe vs final metrics
                self.writer.file_writer.add_summary(summary)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, 0)
            md = Path(folder) / "report.md"
            if md.exists():
                self.writer.add_text("report", md.read_text(encoding="utf-8"), 0)
        finally:
            self.abort()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_store(run_folder: Path) -> Path:
    """`mlruns` beside the run folder; an output inside a run folder (refine's default) uses the run's."""
    root = Path(run_folder).resolve().parent
    if (root / "report.json").exists() or (root / "model" / "manifest.json").exists():
        root = root.parent
    return root / "mlruns"


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    """MLflow run (params, metrics, report files as artifacts); store: --track-uri, $MLFLOW_TRACKING_URI or runs/mlruns."""

    name = "mlflow"

    def __init__(self, uri: str | None = None) -> None:
        super().__init__()
        require("mlflow", self.name)
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.client = None
        self.run_id: str | None = None

    def start(self, recipe, run_name, out_dir, *, folder=None) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        folder = Path(folder or out_dir)
        if self.uri is None:
            self.uri = default_store(folder).as_uri()
        if urlparse(self.uri).scheme in ("", "file"):
            # MLflow >= 3.x refuses the file store unless asked to keep it (no database needed).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        name = recipe.get("name") or "prunetune"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(name)
            except Exception:  # created meanwhile by a parallel run
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        tags = {"prunetune.version": __version__, "prunetune.run_folder": str(folder.resolve())}
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(recipe).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return f"mlflow run {self.run_id} (experiment {name!r}) in {self.uri}"

    def log_metrics(self, metrics, step) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def finish(self, report, folder) -> None:
        self.log_metrics(report_metrics(report), 0)
        for name in REPORT_FILES:
            path = Path(folder) / name
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")


class Guarded:
    """What the pipeline holds: `start` errors stop the run (before training); later errors are warnings."""

    def __init__(self, tracker: Tracker, log: Callable[[str], None]) -> None:
        self.tracker, self.log = tracker, log
        self._warned = False

    def start(self, recipe: dict[str, Any], run_name: str, out_dir: Path, *, folder: Path | None = None) -> None:
        try:
            where = self.tracker.start(recipe, run_name, out_dir, folder=folder)
        except PrunetuneError:
            raise
        except ImportError as e:
            raise PrunetuneError(f"--track {self.tracker.name}: {e}; run: {INSTALL}") from None
        except Exception as e:
            raise PrunetuneError(f"--track {self.tracker.name}: could not start tracking "
                                 f"({e.__class__.__name__}: {_first_line(e)}); check --track-uri / MLFLOW_TRACKING_URI") from None
        if where:
            self.log(f"track: {where}")

    def log_epoch(self, prefix: str, row: dict[str, Any]) -> None:
        try:
            self.tracker.log_epoch(prefix, row)
        except Exception as e:
            if not self._warned:
                self._warned = True
                self.log(f"warning: --track {self.tracker.name}: epoch not logged ({e.__class__.__name__}: "
                         f"{_first_line(e)}); the run goes on, further epoch errors are not shown")

    def finish(self, report: dict[str, Any], folder: Path) -> None:
        try:
            self.tracker.finish(report, folder)
        except Exception as e:
            self.log(f"warning: --track {self.tracker.name}: final report not logged ({e.__class__.__name__}: "
                     f"{_first_line(e)}); the run folder is complete")
            self.abort()

    def abort(self) -> None:
        try:
            self.tracker.abort()
        except Exception:
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= 200 else line[:199] + "…"


def make_tracker(track: str | Tracker | None, uri: str | None = None,
                 log: Callable[[str], None] = print) -> Guarded:
    """`--track NAME [--track-uri URI]` -> a guarded tracker; unknown names and missing libraries fail here."""
    if isinstance(track, Tracker):
        return Guarded(track, log)
    if not track:
        if uri:
            raise PrunetuneError("--track-uri: needs --track mlflow")
        return Guarded(NoTracker(), log)
    return Guarded(TRACKERS.get(track, "--track")(uri), log)
