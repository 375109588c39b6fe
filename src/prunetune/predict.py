"""`predict`: classify image files or lines of text with a saved model, using the preprocessing its
manifest records (image size and normalisation, or the tokenizer saved in the model folder).

Every check that can fail on the model or the input paths runs before the first prediction is made;
an image that cannot be decoded stops the run with its file named.

Example:
    >>> # for row in predict("runs/x/model", ["shoe.png", "photos/"]):   # doctest: +SKIP
    >>> #     print(row["input"], row["label"])                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .artifacts import Manifest, load_model, read_manifest, resolve_tokenizer
from .data.image_folder import IMAGE_SUFFIXES, load_image
from .errors import PrunetuneError
from .files import as_final, temp_beside
from .models.hf import load_tokenizer
from .session import pick_device
from .tasks import Task, to_device
from .tasks.causal_lm import refuse_lm_folder


def image_preprocess(manifest: Manifest, where: str | Path = "model") -> dict[str, Any]:
    """The manifest's image preprocessing, checked: {"size": (H, W), "channels": C, "mean": [C], "std": [C]}."""
    pre = manifest.preprocess or {}
    kind = pre.get("kind")
    if kind in ("sequence", "ratings"):
        raise PrunetuneError(f"{where}: predict reads image files and text lines; a {kind} model takes "
                             f"{'feature sequences' if kind == 'sequence' else 'user-item ids'}: score files with "
                             "prunetune eval MODEL_DIR --set data.path=..., or load it with prunetune.artifacts.load_model")
    if kind != "image":
        raise PrunetuneError(f"{where}: manifest preprocess kind {kind!r} is unknown; predict supports image models; re-save the model")
    missing = [k for k in ("size", "channels", "mean", "std") if k not in pre]
    if missing:
        raise PrunetuneError(f"{where}: manifest preprocess lacks {', '.join(missing)}; re-save the model")
    try:
        c = int(pre["channels"])
        size = [int(s) for s in ([pre["size"]] * 2 if isinstance(pre["size"], int) else pre["size"])]
        mean = [float(v) for v in pre["mean"]]
        std = [float(v) for v in pre["std"]]
    except (TypeError, ValueError):
        raise PrunetuneError(f"{where}: manifest preprocess has non-numeric size/channels/mean/std; re-save the model") from None
    if c not in (1, 3):
        raise PrunetuneError(f"{where}: manifest preprocess channels {c}; predict converts images to 1 (grey) or 3 (RGB) channels")
    if len(size) != 2 or min(size) <= 0:
        raise PrunetuneError(f"{where}: manifest preprocess size {pre['size']} is not [H, W]; re-save the model")
    for name, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, c):
            raise PrunetuneError(f"{where}: manifest preprocess {name} has {len(v)} values for {c} channels; re-save the model")
    if min(std) <= 0:
        raise PrunetuneError(f"{where}: manifest preprocess std must be positive; re-save the model")
    if list(manifest.input_shape) != [c, *size]:
        raise PrunetuneError(f"{where}: manifest input_shape {manifest.input_shape} disagrees with preprocess "
                             f"[{c}, {size[0]}, {size[1]}]; re-save the model")
    return {"size": (size[0], size[1]), "channels": c, "mean": mean * (c // len(mean)), "std": std * (c // len(std))}


def preprocess_images(files: list[Path], pre: dict[str, Any]) -> torch.Tensor:
    """Load, convert, resize and normalise images into a float32 [N, C, H, W] batch."""
    c, (h, w) = pre["channels"], pre["size"]
    if not files:
        return torch.empty(0, c, h, w)
    x = np.stack([load_image(f, (h, w), c) for f in files])
    mean = np.asarray(pre["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy((x - mean) / std)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted); missing paths are refused."""
    if not inputs:
        raise PrunetuneError("no inputs; give image files or folders of images")
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise PrunetuneError(f"{p}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PrunetuneError(f"{p}: input not found; give existing image files or folders")
    return files


@torch.inference_mode()
def predict_tensors(model: nn.Module, manifest: Manifest, x: torch.Tensor) -> list[dict[str, Any]]:
    """{"label", "probabilities"} for each row of an already preprocessed batch `x`."""
    task = Task.from_manifest(manifest)
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    logits = task.forward(model, to_device(x, device)).float().cpu()
    probs = torch.softmax(logits, dim=1)
    names = manifest.class_names
    rows = []
    for p in probs.tolist():
        best = max(range(len(p)), key=p.__getitem__)
        rows.append({"label": names[best], "probabilities": {n: round(v, 6) for n, v in zip(names, p)}})
    return rows


def predict(model_dir: str | Path, inputs: list[str | Path], batch_size: int = 64, trust_code: bool = False,
            device: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield {"input", "label", "probabilities"} for every image, in input order.

    The model, its manifest and every input path are checked before this returns; decoding
    errors surface while iterating, naming the file.
    """
    if batch_size < 1:
        raise PrunetuneError(f"--batch-size {batch_size}: must be at least 1")
    manifest = read_manifest(model_dir)  # checked before the model is built (a text model may not build yet)
    refuse_lm_folder(manifest, model_dir, "predict")
    if manifest.preprocess.get("kind") in ("sequence", "ratings"):
        image_preprocess(manifest, model_dir)  # the one-line refusal: predict reads images and text
    if not manifest.class_names:
        raise PrunetuneError(f"{model_dir}: manifest has no class_names; re-save the model with its class names")
    if len(manifest.class_names) != manifest.num_classes:
        raise PrunetuneError(f"{model_dir}: manifest lists {len(manifest.class_names)} class_names for "
                             f"{manifest.num_classes} classes; re-save the model")
    if manifest.preprocess.get("kind") == "text":
        return _predict_text(Path(model_dir), manifest, inputs, batch_size, trust_code, pick_device(device))
    pre = image_preprocess(manifest, model_dir)
    files = expand_inputs(inputs)
    model, manifest = load_model(model_dir, trust_code=trust_code)
    model.to(pick_device(device)).eval()

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(0, len(files), batch_size):
            chunk = files[i : i + batch_size]
            for f, r in zip(chunk, predict_tensors(model, manifest, preprocess_images(chunk, pre))):
                yield {"input": str(f), **r}

    return rows()


def read_text_lines(inputs: list[str | Path]) -> list[tuple[str, str]]:
    """(where, text) for every line of the given text files; '-' reads standard input.

    An empty line is refused (naming file:line): a blank prediction is almost always a broken file."""
    if not inputs:
        raise PrunetuneError("no inputs; give text files with one text per line, or - for standard input")
    out: list[tuple[str, str]] = []
    for raw in inputs:
        name = str(raw)
        if name == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            p = Path(raw)
            if not p.is_file():
                raise PrunetuneError(f"{p}: input not found; give text files (one text per line) or - for standard input")
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                line = p.read_bytes()[: e.start].count(b"\n") + 1
                raise PrunetuneError(f"{p}:{line}: not UTF-8 text; convert the file to UTF-8") from None
        lines = text.splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                raise PrunetuneError(f"{name}:{i}: empty line; give one non-empty text per line")
            out.append((f"{name}:{i}", line.strip()))
        if not lines:
            raise PrunetuneError(f"{name}: no text; give one text per line")
    return out


def _predict_text(model_dir: Path, manifest: Manifest, inputs: list[str | Path], batch_size: int,
                  trust_code: bool, device: torch.device) -> Iterator[dict[str, Any]]:
    texts = read_text_lines(inputs)
    pair = bool(manifest.preprocess.get("text_pair"))
    if pair:  # trained on two segments (data.text_pair): each line holds both, separated by a tab
        for where, t in texts:
            if len([s for s in t.split("\t") if s.strip()]) != 2:
                raise PrunetuneError(f"{where}: this model reads text pairs; write each line as the two segments "
                                     "separated by one tab")
    tok = load_tokenizer(resolve_tokenizer(model_dir, manifest.preprocess))
    max_length = int(manifest.preprocess.get("max_length") or 128)
    model, manifest = load_model(model_dir, trust_code=trust_code)
    model.to(device).eval()

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            segments = [[s.strip() for s in t.split("\t") if s.strip()] for _, t in chunk] if pair else None
            first = [s[0] for s in segments] if pair else [t for _, t in chunk]
            enc = tok(first, [s[1] for s in segments] if pair else None, truncation=True, max_length=max_length,
                      padding="longest", return_tensors="pt")
            x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            for (where, t), r in zip(chunk, predict_tensors(model, manifest, x)):
                yield {"input": where, "text": t, **r}

    return rows()


def write_predictions(rows: Iterator[dict[str, Any]], out: str | Path | None) -> int:
    """Write rows as JSON Lines to stdout (`out` None) or atomically to `out` (which must not exist)."""
    if out is None:
        n = 0
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
            n += 1
        sys.stdout.flush()
        return n
    out = Path(out)
    if out.exists():
        raise PrunetuneError(f"{out}: already exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise PrunetuneError(f"--out {out}: folder {out.parent} not found; create it first")
    tmp = temp_beside(out)
    try:
        n = 0
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                n += 1
        if out.exists():
            raise PrunetuneError(f"{out}: appeared while predicting; choose another --out or remove it")
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        renamed = as_final(e, tmp, out)
        if renamed is not e:
            raise renamed from None
        raise
    return n
