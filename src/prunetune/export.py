"""`export_onnx`: a saved model folder to one ONNX file, checked against PyTorch and timed in onnxruntime.

The ONNX file is written to a temporary file beside its destination, checked with onnxruntime
(outputs within `TOLERANCE` of PyTorch on `check_inputs` seeded random inputs, at several batch
sizes so the dynamic batch axis is proven), timed, and only then renamed into place: a failed
export leaves nothing at the output path. A report `<stem>.export.json` is written beside it.

Example:
    >>> # export_onnx("runs/x/model")            # -> runs/x/model.onnx   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.export import Dim

from .artifacts import load_model, read_manifest
from .errors import PrunetuneError, RuntimeFault
from .files import as_final, temp_beside
from .pruning.masks import realise
from .registry import EXPORTERS
from .tasks.causal_lm import refuse_lm_folder
from .timing import compare_callables

TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and PyTorch logits
SEED = 20240607
# The exporter: torch.export-based (`dynamo=True`, PyTorch's supported path; the TorchScript-based one is
# deprecated), which writes opsets from torchlib's (18) up. It needs `onnxscript` (the `export` extra).
EXPORTER = "torch.onnx.export(dynamo=True)"
MIN_OPSET = 18


def _check_batches(n: int) -> list[int]:
    """Batch sizes summing to n: 1, then up to 64 at a time (so at least two sizes once n >= 3)."""
    sizes = [1] if n >= 1 else []
    left = n - 1
    while left > 0:
        sizes.append(min(64, left))
        left -= sizes[-1]
    return sizes


def _ort_session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess, opts


@dataclass
class _IO:
    """What the exported graph takes: the module to trace, input names, dynamic axes, and inputs."""

    module: torch.nn.Module
    names: tuple[str, ...]
    axes: dict[str, dict[int, str]]
    make: Callable[..., dict[str, torch.Tensor]]  # make(batch, timing=False) -> {name: tensor}
    batch: int  # the larger latency batch
    timing_note: str


def _image_io(plain: torch.nn.Module, manifest, g: torch.Generator) -> _IO:
    shape = tuple(manifest.input_shape)
    return _IO(plain, ("input",), {"input": {0: "batch"}},
               lambda b, timing=False: {"input": torch.randn(b, *shape, generator=g)}, 64,
               f"seeded random images {list(shape)}")


class _TextLogits(torch.nn.Module):
    """A transformers classifier as (input_ids, attention_mask) -> logits, for the exporter."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _text_io(plain: torch.nn.Module, manifest, g: torch.Generator) -> _IO:
    if hasattr(plain, "set_attn_implementation"):
        plain.set_attn_implementation("eager")  # plain matmul + softmax: one graph for every batch and length
    vocab = int(getattr(plain.config, "vocab_size", 1000))
    longest = int(manifest.preprocess.get("max_length") or manifest.input_shape[0])
    seq = min(64, longest)

    def make(b: int, timing: bool = False) -> dict[str, torch.Tensor]:
        # Check inputs: random lengths (padding inside the batch); timing inputs: full length `seq`.
        length = seq if timing else int(torch.randint(4, longest + 1, (1,), generator=g))
        ids = torch.randint(1000, vocab, (b, length), generator=g) if vocab > 1000 else torch.randint(1, vocab, (b, length), generator=g)
        mask = torch.ones(b, length, dtype=torch.long)
        if not timing:
            real = torch.randint(1, length + 1, (b,), generator=g)
            mask = (torch.arange(length)[None, :] < real[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask}

    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    return _IO(_TextLogits(plain).eval(), ("input_ids", "attention_mask"), axes, make, 32,
               f"random token ids, sequence length {seq}, all attended")


def _dynamic_shapes(io: _IO) -> tuple[dict[int, Any], ...]:
    """`io.axes` ({input: {axis: label}}) as torch.export dynamic shapes, one Dim per label (the batch
    and sequence axes of several inputs are the same symbol), in input order."""
    dims: dict[str, Any] = {}
    return tuple({axis: dims.setdefault(label, Dim(label)) for axis, label in io.axes.get(name, {}).items()}
                 for name in io.names)


def _export_file(io: _IO, path: Path, opset: int | None) -> None:
    """Write `io.module` to the single ONNX file `path` (weights inside: no external data file) with the
    torch.export-based exporter; its progress lines and log warnings stay off stdout, which carries the
    CLI's JSON."""
    if importlib.util.find_spec("onnxscript") is None:
        raise PrunetuneError("export needs the onnxscript package (the ONNX exporter's); install the extra: "
                             "pip install 'prunetune[export]'")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(io.module, tuple(io.make(2).values()), str(path), input_names=list(io.names),
                              output_names=["logits"], dynamic_shapes=_dynamic_shapes(io), opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)


def _dense_comparison(model_dir: Path, threads: int | None, min_run_time: float, trust_code: bool, sess,
                      feeds: dict[str, dict[str, np.ndarray]], rounds: int) -> dict[str, Any] | None:
    """The dense model of the run `model_dir` belongs to, exported to a temporary file and timed against
    this export's session `sess` alternately (`timing.compare_callables`, `rounds` rounds) on each of
    `feeds` ({"batch_<b>": inputs}): `ort_latency_ms` is the dense model's p50 there and `measured` the
    speedup records (ratio dense / this, interval, verdict, noise flag)."""
    run_report = model_dir.resolve().parent / "report.json"
    kept = run_report.parent / "dense" / "model"  # the run folder's own copy (runs since dense/ was added)
    try:
        dense_dir = kept if (kept / "manifest.json").is_file() else Path(json.loads(run_report.read_text())["dense"]["cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (dense_dir / "manifest.json").is_file() or dense_dir.resolve() == model_dir.resolve():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        rep = export_onnx(dense_dir, Path(tmp) / "dense.onnx", check_inputs=3, threads=threads,
                          min_run_time=0.01, trust_code=trust_code, compare_dense=False)  # timed below, alternately
        dense_sess, _ = _ort_session(Path(tmp) / "dense.onnx", threads)
        cores = threads or os.cpu_count() or 1  # onnxruntime's default: a thread per core
        timed = {k: compare_callables(lambda f=feed, d=dense_sess: d.run(None, f), lambda f=feed: sess.run(None, f),
                                      rounds=rounds, min_run_time=min_run_time, threads=cores) for k, feed in feeds.items()}
        del dense_sess
    return {"model": str(dense_dir), "bytes": rep["bytes"],
            "ort_latency_ms": {k: t["dense_ms"]["p50"] for k, t in timed.items()}, "measured": timed}


def _ort_latency_ms(sess, feed: dict[str, np.ndarray], min_run_time: float) -> float:
    """p50 of per-call latency (ms) over a time.perf_counter loop of about `min_run_time` seconds."""
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        sess.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_run_time:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000.0, 4)


@EXPORTERS.register("onnx", "ONNX file checked against PyTorch in onnxruntime, and timed there")
def export_onnx(model_dir: str | Path, out_file: str | Path | None = None, opset: int | None = None,
                check_inputs: int = 100, threads: int | None = None, min_run_time: float = 1.0,
                trust_code: bool = False, compare_dense: bool = True, rounds: int = 5) -> dict[str, Any]:
    """Export a saved model folder to ONNX; return (and write beside it) the export report.

    `out_file` defaults to `model.onnx` beside the model folder (the run folder), so the model folder
    stays exactly as saved. `threads` None leaves onnxruntime's thread settings at its defaults.
    With `compare_dense`, a run's model whose dense model is in the run folder (`dense/model`) or still
    cached (report.json beside the model folder names it) is compared with the dense model exported the same way: the report gives
    both files' bytes and onnxruntime latencies, the size ratio and the measured speedup: `ort_speedup`
    (dense / this, ratio of medians) from the two timed alternately for `rounds` rounds, and
    `ort_speedup_measured` with each one's 95 % interval, verdict and noise flag (see timing.py).
    """
    model_dir = Path(model_dir)
    refuse_lm_folder(read_manifest(model_dir), model_dir, "export")  # a clear error before anything else
    if opset is not None:
        from torch.onnx import _constants as C  # private, but the only place torch states the range

        lo, hi = MIN_OPSET, getattr(C, "ONNX_MAX_OPSET", 23)
        if not lo <= opset <= hi:
            raise PrunetuneError(f"--opset {opset}: the exporter supports opsets {lo} to {hi}")
    if check_inputs < 1:
        raise PrunetuneError(f"check_inputs: {check_inputs}; check at least 1 input")
    if rounds < 2:
        raise PrunetuneError(f"rounds: {rounds}; time at least 2 alternating rounds (default 5)")
    out = Path(out_file) if out_file is not None else model_dir.resolve().parent / "model.onnx"
    if out.suffix.lower() != ".onnx":
        raise PrunetuneError(f"--out {out}: an ONNX file name must end in .onnx")
    if model_dir.resolve() in out.resolve().parents:
        raise PrunetuneError(f"--out {out}: inside the model folder; the model folder stays as saved, write beside it")
    report_path = out.with_name(f"{out.stem}.export.json")
    for p in (out, report_path):
        if p.exists():
            raise PrunetuneError(f"{p}: already exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise PrunetuneError(f"--out {out}: folder {out.parent} not found; create it first")

    kind = read_manifest(model_dir).preprocess.get("kind")
    if kind not in ("image", "text", "sequence"):
        raise PrunetuneError(f"{model_dir}: export supports image, text and sequence models; this is a {kind!r} model "
                             "(its inputs are ids, not features); use prunetune eval, or load it with prunetune.artifacts.load_model")
    model, manifest = load_model(model_dir, trust_code=trust_code)
    plain = realise(model).cpu().eval()  # masks baked in: the zeros are plain weights in the ONNX file
    g = torch.Generator().manual_seed(SEED)
    io = _text_io(plain, manifest, g) if manifest.preprocess.get("kind") == "text" else _image_io(plain, manifest, g)
    tmp = temp_beside(out, ".onnx")
    tmp_report = temp_beside(report_path, ".json")
    try:
        # The torch.export-based exporter exports every family export takes (image CNNs and MLPs,
        # LSTM / GRU / 1-D CNN sequence models, BERT-family classifiers, pruned or not) with dynamic
        # batch (and sequence) axes; no family falls back to the deprecated TorchScript exporter.
        try:
            _export_file(io, tmp, opset)
        except (OSError, PrunetuneError):
            raise  # writing the file failed (disk full, no permission), or onnxscript is missing
        except Exception as e:  # the exporter raises many types for unsupported ops
            line = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise RuntimeFault(f"{model_dir}: ONNX export failed ({line})") from None
        import onnx

        opset_used = next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                           if o.domain in ("", "ai.onnx")), None)
        try:
            sess, opts = _ort_session(tmp, threads)
        except Exception as e:  # onnxruntime raises its own types for graphs it cannot run
            raise RuntimeFault(f"{model_dir}: onnxruntime cannot load the exported file ({str(e)[:200]}); "
                               "the exported file was deleted") from None
        worst, sizes = 0.0, _check_batches(check_inputs)
        with torch.inference_mode():
            for b in sizes:
                x = io.make(b)
                want = io.module(*x.values()).float().numpy()
                got = sess.run(["logits"], {k: v.numpy() for k, v in x.items()})[0]
                if got.shape != want.shape:
                    raise RuntimeFault(f"{model_dir}: onnxruntime gave shape {list(got.shape)} for batch {b}, PyTorch {list(want.shape)}; "
                                       "the exported file was deleted")
                worst = max(worst, float(np.abs(got - want).max()))
        if not worst <= TOLERANCE:  # also catches NaN
            raise RuntimeFault(f"{model_dir}: onnxruntime and PyTorch differ by {worst:.3g} (> {TOLERANCE}) on "
                               f"{check_inputs} inputs; the exported file was deleted")
        feeds = {f"batch_{b}": {k: v.numpy() for k, v in io.make(b, timing=True).items()} for b in (1, io.batch)}
        latency = {k: _ort_latency_ms(sess, feed, min_run_time) for k, feed in feeds.items()}
        report = {
            "file": str(out),
            "bytes": tmp.stat().st_size,
            "max_abs_diff": worst,
            "inputs_checked": check_inputs,
            "batch_sizes_checked": sizes,
            "opset": opset_used,
            "exporter": EXPORTER,
            "inputs": {k: list(v.shape[1:]) if k == "input" else ["sequence"] for k, v in io.make(1).items()},
            "latency_inputs": io.timing_note,
            "ort_latency_ms": latency,
            # 0 means onnxruntime's default (one intra-op thread per physical core).
            "ort_threads": {"intra_op": opts.intra_op_num_threads, "inter_op": opts.inter_op_num_threads,
                            "cpu_count": os.cpu_count()},
            "onnxruntime_version": __import__("onnxruntime").__version__,
            "torch_version": torch.__version__,
        }
        if compare_dense:
            dense = _dense_comparison(model_dir, threads, min_run_time, trust_code, sess, feeds, rounds)
            if dense is not None:
                timed = dense.pop("measured")
                report["dense"] = dense
                report["size_ratio"] = round(dense["bytes"] / report["bytes"], 3)
                report["ort_speedup"] = {k: t["ratio"] for k, t in timed.items()}
                report["ort_speedup_measured"] = timed
        del sess
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
        if out.exists() or report_path.exists():
            raise PrunetuneError(f"{out}: appeared while exporting; choose another --out or remove it")
        os.replace(tmp, out)
        os.replace(tmp_report, report_path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        tmp_report.unlink(missing_ok=True)
        renamed = as_final(as_final(e, tmp, out), tmp_report, report_path)
        if renamed is not e:
            raise renamed from None
        raise
    return report
