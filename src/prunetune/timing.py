"""Latency you can trust: a candidate timed against the dense model alternately, with an interval.

`compare_callables` warms both up, fixes each one's calls per block (`timeit` on `torch.utils.benchmark`'s
clock, about `min_run_time / rounds / BLOCKS` seconds a block), then times them alternately for `rounds`
rounds of `BLOCKS` blocks each, in ABBA order (dense, candidate; candidate, dense; ...), so drift of a
busy machine (another process starting, frequency scaling) hits both alike and neither always goes first.
The speedup is the ratio of the medians of all block times (dense / candidate); its 95 % interval is
a seeded bootstrap (`RESAMPLES` resamples: rounds drawn with replacement, then each drawn round's block
times; medians re-taken; see `bootstrap_ratio`). The verdict:

* "faster" only when the whole interval is at least `MIN_EFFECT` (3 %) above 1, "slower" only when it
  is at least that far below; otherwise "no measurable change" (a model timed against itself read
  1.036× (1.011–1.063) on a 2-core Xeon: a few per cent are below what wall-clock timing resolves).

A measurement is flagged `noisy`, with human-readable reasons, when

* either model's p90 / p50 of block times exceeds `SPREAD_LIMIT` (1.5: calls within a round vary a lot);
* either model's round medians disagree by more than `ROUNDS_LIMIT` (1.3, max / min);
* the load from other processes exceeds the CPU count minus the threads timing uses: the 1-minute load
  average (`os.getloadavg`, the higher of before and after timing) less this process's own `threads`
  is more than the cores left free plus `LOAD_SLACK` (half a core: the average lags, and still carries
  this process's own work of the last minute), i.e. others compete for the cores the measurement needs.

A noisy measurement's interval is widened by the largest disagreement between rounds (max / min of
either model's round medians): drift that moved a model's median that much between rounds could have
moved the whole comparison as far, so two models of identical shapes on an overloaded machine read
"no measurable change" rather than a confident, wrong verdict (`widened_by` in the record).

The record (one per batch size) is what report.json stores under `speedup.<stage>.measured.batch_<b>`.
"""

from __future__ import annotations

import os
import timeit
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.benchmark.utils.common import set_torch_threads
from torch.utils.benchmark.utils.timer import timer as synced_clock

from .measure import example_batch
from .pruning.masks import realise
from .tasks import to_device

RESAMPLES = 2000
BLOCKS = 10  # timed blocks per model per round (fewer, at least 2, for slow models: see _Blocks)
ROUND_OVERRUN = 4.0  # a round stops early (after 2 blocks) once it takes this many times its plan
SPREAD_LIMIT = 1.5
ROUNDS_LIMIT = 1.3
MIN_EFFECT = 1.03
LOAD_SLACK = 0.5  # cores of load beyond the free ones before a busy machine is flagged
MASKED_NOTE = "masked weights run on dense kernels: no speedup expected"


class _Blocks:
    """One callable's timer (`timeit.Timer` on `torch.utils.benchmark`'s clock, which synchronises an
    accelerator; `benchmark.Timer.timeit` would add two warm-up calls to every block) with a block size
    fixed once, so every round is the same blocks of the same number of calls: `BLOCKS` blocks, or fewer (at least 2, one call
    each) for a model so slow that a round of `BLOCKS` single calls would far exceed its share."""

    def __init__(self, fn: Callable[[], Any], block_s: float, warmup: int = 3) -> None:
        self.timer = timeit.Timer(stmt=fn, timer=synced_clock)
        # Warm-up (first calls allocate and pick kernels), timed: seconds per call from the later ones.
        first = [self.timer.timeit(1) for _ in range(max(2, warmup))]
        one = min(first[1:])
        self.number = max(1, int(block_s / max(one, 1e-9)))
        self.blocks = int(min(BLOCKS, max(2, round(block_s * BLOCKS / max(one, 1e-9)))))
        self.limit_s = ROUND_OVERRUN * max(block_s * BLOCKS, self.blocks * self.number * one)

    def round(self) -> np.ndarray:
        """Per-call times (ms), one per block; a round that overruns its plan `ROUND_OVERRUN`-fold (the
        machine got busy) stops after 2 blocks or more, so a busy machine cannot stretch a run unboundedly."""
        out: list[float] = []
        start = synced_clock()
        while len(out) < self.blocks and (len(out) < 2 or synced_clock() - start < self.limit_s):
            out.append(self.timer.timeit(self.number) / self.number)
        return np.array(out) * 1000.0


def bootstrap_ratio(dense_ms: Any, cand_ms: Any, resamples: int = RESAMPLES,
                    seed: int = 0) -> tuple[float, float, float]:
    """(median(dense) / median(candidate), 2.5 % and 97.5 % bootstrap percentiles of that ratio).

    `dense_ms` / `cand_ms`: each model's times, one array, or a list of per-round arrays (round i of
    the dense model timed next to round i of the candidate). Each resample (seeded
    `numpy.random.Generator`) draws rounds with replacement, the same rounds for both models (the pairs
    share the machine's state of the moment), then times within each drawn round with replacement; so
    when rounds disagree (the machine's load came and went) the interval widens instead of pretending
    the pooled times were independent. Rounds of unequal length are drawn as often as the longest."""
    rd, rc = _rounds(dense_ms), _rounds(cand_ms)
    if len(rd) != len(rc):
        raise ValueError("bootstrap_ratio: both models need the same number of rounds")
    rng = np.random.default_rng(seed)
    n = len(rd)
    ratios = np.empty(resamples)
    step = max(1, 200_000 // (n * max(max(r.size for r in rd), max(r.size for r in rc))))  # bounded memory
    for lo in range(0, resamples, step):
        b = min(step, resamples - lo)
        ks = rng.integers(0, n, (b, n)) if n > 1 else np.zeros((b, 1), dtype=int)
        ratios[lo:lo + b] = _medians(rd, ks, rng) / _medians(rc, ks, rng)
    low, high = np.percentile(ratios, [2.5, 97.5])
    ratio = float(np.median(np.concatenate(rd)) / np.median(np.concatenate(rc)))
    return ratio, float(min(low, ratio)), float(max(high, ratio))


def _medians(rounds: list[np.ndarray], ks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Median of each resample: rounds `ks` (resamples x rounds), times drawn within each."""
    m = max(r.size for r in rounds)
    table = np.stack([np.pad(r, (0, m - r.size)) for r in rounds])  # padding never drawn: index < size
    sizes = np.array([r.size for r in rounds])[ks]  # (b, n)
    idx = (rng.random((*ks.shape, m)) * sizes[..., None]).astype(int)
    return np.median(table[ks[..., None], idx].reshape(ks.shape[0], -1), axis=1)


def _rounds(times: Any) -> list[np.ndarray]:
    if isinstance(times, np.ndarray) or (len(times) and np.isscalar(times[0])):
        times = [times]
    out = [np.asarray(t, dtype=float).ravel() for t in times]
    if not out or any(t.size == 0 for t in out):
        raise ValueError("bootstrap_ratio: every round needs at least one time")
    return out


def verdict(low: float, high: float) -> str:
    """"faster" / "slower" / "no measurable change" for a speedup interval (see the module docstring)."""
    if low >= MIN_EFFECT:
        return "faster"
    if high <= 1.0 / MIN_EFFECT:
        return "slower"
    return "no measurable change"


def _summary(times: np.ndarray, rounds: list[np.ndarray]) -> dict[str, Any]:
    return {"p50": round(float(np.median(times)), 4), "p90": round(float(np.percentile(times, 90)), 4),
            "round_medians": [round(float(np.median(r)), 4) for r in rounds], "blocks": int(times.size)}


def noise_reasons(dense: dict[str, Any], cand: dict[str, Any], threads: int, load: float | None = None,
                  cpus: int | None = None) -> list[str]:
    """Why a measurement cannot be trusted (empty: no sign of noise); `dense` / `cand` as in the record."""
    reasons = []
    cpus = cpus or os.cpu_count() or 1
    # Others' load (ours taken as `threads`), with LOAD_SLACK: the 1-minute average still carries this
    # process's own work of the last minute (a run measures right after training).
    if load is not None and load - threads > cpus - threads + LOAD_SLACK:
        reasons.append(f"machine busy: load {load:.1f} on {cpus} cores ({threads} used for timing)")
    for name, s in (("dense", dense), ("candidate", cand)):
        if s["p50"] > 0 and s["p90"] / s["p50"] > SPREAD_LIMIT:
            reasons.append(f"{name} calls vary: p90/p50 {s['p90'] / s['p50']:.1f}×")
        r = [x for x in s["round_medians"] if x > 0]
        if len(r) > 1 and max(r) / min(r) > ROUNDS_LIMIT:
            reasons.append(f"rounds disagree by {max(r) / min(r):.1f}× ({name})")
    return reasons


def _disagreement(summary: dict[str, Any]) -> float:
    """max / min of a model's round medians (1.0 for a single round)."""
    r = [x for x in summary["round_medians"] if x > 0]
    return max(r) / min(r) if len(r) > 1 else 1.0


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on every platform
        return None


def compare_callables(dense_fn: Callable[[], Any], cand_fn: Callable[[], Any], *, rounds: int = 5,
                      min_run_time: float = 1.0, threads: int = 1, warmup: int = 3, seed: int = 0) -> dict[str, Any]:
    """Time `dense_fn()` and `cand_fn()` alternately (see the module docstring); the speedup record."""
    if rounds < 1:
        raise ValueError("compare_callables: rounds must be 1 or more")
    block_s = max(min_run_time / rounds, 0.01) / BLOCKS
    load_before = _load()
    rd, rc = [], []
    with set_torch_threads(threads):
        timers = _Blocks(dense_fn, block_s, warmup), _Blocks(cand_fn, block_s, warmup)
        for i in range(rounds):  # ABBA: the order flips every round, so neither model always goes first
            first, second = (0, 1) if i % 2 == 0 else (1, 0)
            got = {first: timers[first].round()}
            got[second] = timers[second].round()
            rd.append(got[0])
            rc.append(got[1])
    loads = [x for x in (load_before, _load()) if x is not None]
    d, c = np.concatenate(rd), np.concatenate(rc)
    ratio, low, high = bootstrap_ratio(rd, rc, seed=seed)
    dense, cand = _summary(d, rd), _summary(c, rc)
    load = max(loads) if loads else None
    reasons = noise_reasons(dense, cand, threads, load)
    widen = max(_disagreement(dense), _disagreement(cand)) if reasons else 1.0
    low, high = low / widen, high * widen
    return {"ratio": round(ratio, 3), "low": round(low, 3), "high": round(high, 3), "verdict": verdict(low, high),
            "noisy": bool(reasons), "reasons": reasons, "widened_by": round(widen, 3), "dense_ms": dense, "model_ms": cand, "rounds": rounds,
            "threads": threads, "load": None if load is None else round(load, 2), "cpus": os.cpu_count()}


@torch.inference_mode()
def compare_models(dense: nn.Module, model: nn.Module, forward, x: Any, *, threads: int, rounds: int = 5,
                   min_run_time: float = 1.0, masked: bool = False, seed: int = 0) -> dict[str, Any]:
    """`compare_callables` for two models on the same input `x`; `masked` adds the dense-kernels note."""
    dense.eval()
    model.eval()
    rec = compare_callables(lambda: forward(dense, x), lambda: forward(model, x), rounds=rounds,
                            min_run_time=min_run_time, threads=threads, seed=seed)
    if masked:
        rec.update({"masked": True, "note": MASKED_NOTE})
    return rec


def stage_speedup(dense: nn.Module, model: nn.Module, task, bundle, spec, device: torch.device,
                  masked: bool = False) -> dict[str, Any]:
    """{"batch_1": record, "batch_N": record + batch} for a stage's model against the dense one, both
    shipped (`realise`d) and timed on the inputs `measure_stage` times them on."""
    threads = spec.threads or torch.get_num_threads()
    a, b = realise(dense).to(device).eval(), realise(model).to(device).eval()
    out = {}
    for key, n in (("batch_1", 1), ("batch_N", spec.latency_batch)):
        x = to_device(example_batch(bundle.test, n, spec.sequence_length), device)
        rec = compare_models(a, b, task.forward, x, threads=threads, rounds=spec.latency_rounds,
                             min_run_time=spec.min_run_time, masked=masked)
        out[key] = rec if key == "batch_1" else {"batch": n, **rec}
    return out
