"""The `causal_lm` task: next-token prediction, scored by perplexity, with a few sampled generations.

The loss is the mean negative log-likelihood of every predicted token: the logits at position t
predict the label at t + 1; labels of -100 (padding, and the prompt of a prompt / completion pair)
are not predicted. Perplexity = exp(mean NLL per predicted token) over the whole split.

Any Hugging Face causal LM (GPT-2, Llama, Qwen, Pythia-style) by hub id or local folder
(`model.name: hf:...`); what language models do not support is refused by the recipe's validation
(`CausalLM.check_recipe`), and by predict / export / refine for a saved one (`refuse_lm_folder`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data.base import batches
from ..errors import PrunetuneError
from ..models.hf import is_hf, load_tokenizer
from ..registry import DATA_SOURCES, TASKS
from .base import Task, to_device

IGNORE = -100
LM_METHODS = ("full", "bitfit", "lora", "ia3")  # fine-tuning methods that fit a causal LM
LOGITS_BUDGET = 1 << 26  # logits floats per evaluation batch (256 MB in float32): big vocabularies get fewer sequences


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positions 0..L-2 and the labels they predict (positions 1..L-1); labels trimmed to the batch."""
    labels = labels[:, : logits.shape[1]]
    return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


@TASKS.register("causal_lm")
class CausalLM(Task):
    """Next-token prediction (causal language models): NLL loss, perplexity, sampled generations."""

    name = "causal_lm"
    metric = "perplexity"
    higher_is_better = False
    labels = False
    distils = False
    structured_wanda = True
    data_kind = "language-model text"
    calibration_batch_size = 8  # sequences per calibration batch (gradients, activations): logits are [B, L, vocab]

    @classmethod
    def check_recipe(cls, recipe) -> None:
        """Language-model text, a Hugging Face causal LM, and what language models support."""
        if getattr(DATA_SOURCES.get(recipe.data.source), "task", None) != cls.name:
            raise ValueError(f"data.source: task causal_lm reads language-model text; use data.source lm_text "
                             f"(not {recipe.data.source!r})")
        if not is_hf(recipe.model.name):
            raise ValueError(f"model.name: task causal_lm needs a Hugging Face causal language model (hf:<hub id or folder>), "
                             f"not {recipe.model.name!r}")
        if recipe.finetune.method not in LM_METHODS:
            raise ValueError(f"finetune.method: {recipe.finetune.method} is not supported for causal language models; "
                             f"choose one of: {', '.join(LM_METHODS)}")
        if recipe.finetune.distill_section is not None:
            raise ValueError("finetune.distill: distillation is not supported for causal language models yet; remove it")
        if not recipe.prune.keep_classifier:
            raise ValueError("prune.keep_classifier: a language model's head (tied to its token embeddings) is never pruned; "
                             "leave it true")
        super().check_recipe(recipe)

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        out = model(**inputs, use_cache=False) if isinstance(inputs, dict) else model(inputs)
        return getattr(out, "logits", out)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        flat, labels = _shifted(logits.float(), target)
        if not bool((labels != IGNORE).any()):
            return flat.sum() * 0.0  # nothing to predict in this batch
        return F.cross_entropy(flat, labels, ignore_index=IGNORE, label_smoothing=label_smoothing)

    def check_outputs(self, out: torch.Tensor, bundle, where: str) -> None:
        if bundle.train.y.dim() != 2:
            raise PrunetuneError("task: causal_lm needs language-model text; set data.source lm_text")
        if out.dim() != 3:
            raise PrunetuneError(f"{where}: task causal_lm needs a causal language model (one logit vector per token) but "
                                 f"the model outputs {list(out.shape)}; use a Hugging Face causal LM (model.name hf:...)")
        vocab = out.shape[-1]
        top = max(int(d.x["input_ids"].max()) for d in (bundle.train, bundle.val, bundle.test))
        if top >= vocab:
            raise PrunetuneError(f"{where}: the tokenizer produces token id {top} but the model's vocabulary has {vocab} "
                                 "tokens; use the model's own tokenizer (leave data.tokenizer unset)")

    @torch.no_grad()
    def nll(self, model: nn.Module, data, batch_size: int, device: torch.device) -> tuple[float, int]:
        """Summed NLL and the number of predicted tokens over `data`."""
        was = model.training
        model.eval()
        total, count = 0.0, 0
        length = max(1, int(data.x["input_ids"].shape[1]))
        vocab = _vocab(model)
        size = max(1, min(batch_size, LOGITS_BUDGET // (length * vocab))) if vocab else batch_size
        for x, y in batches(data, size):
            logits = self.forward(model, to_device(x, device))
            flat, labels = _shifted(logits.float(), y.to(logits.device))
            total += float(F.cross_entropy(flat, labels, ignore_index=IGNORE, reduction="sum"))
            count += int((labels != IGNORE).sum())
        model.train(was)
        return total, count

    def evaluate(self, model: nn.Module, data, batch_size: int, device: torch.device, class_names: list[str]) -> dict[str, Any]:
        total, count = self.nll(model, data, batch_size, device)
        loss = total / max(1, count)
        ppl = math.exp(loss) if loss < 700 else float("inf")
        return {"perplexity": round(ppl, 4), "loss": round(loss, 6), "tokens": count}

    def stage_extras(self, model: nn.Module, bundle, spec, device: torch.device) -> dict[str, Any]:
        return {"samples": self.samples(model, bundle, spec, device)} if getattr(spec, "generate", 0) else {}

    @torch.no_grad()
    def samples(self, model: nn.Module, bundle, spec, device: torch.device) -> list[dict[str, str]]:
        """Greedy continuations of the first `spec.generate` test examples with 4 or more tokens: the prompt
        of a prompt / completion pair, else the first half of the text; `reference` is the rest of it."""
        n = int(getattr(spec, "generate", 3) or 0)
        if n <= 0 or not hasattr(model, "generate"):
            return []
        tok = load_tokenizer(bundle.preprocess["tokenizer"])
        limit = _positions(model)
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
        data, out = bundle.test, []
        was = model.training
        model.eval()
        for i in range(len(data)):
            if len(out) >= n:
                break
            mask = data.x["attention_mask"][i].bool()
            ids, labels = data.x["input_ids"][i][mask], data.y[i][: mask.numel()][mask]
            if ids.numel() < 4:
                continue
            scored = torch.nonzero(labels != IGNORE).flatten()
            cut = int(scored[0]) if labels[0] == IGNORE and scored.numel() else max(1, ids.numel() // 2)
            prompt = ids[:cut]
            new = int(getattr(spec, "max_new_tokens", 20))
            if limit:
                new = min(new, limit - cut)
            if new <= 0:
                continue
            torch.manual_seed(0)
            gen = model.generate(prompt[None].to(device), attention_mask=torch.ones_like(prompt)[None].to(device),
                                 max_new_tokens=new, do_sample=False, pad_token_id=pad)
            out.append({"prompt": tok.decode(prompt, skip_special_tokens=True),
                        "completion": tok.decode(gen[0, cut:].cpu(), skip_special_tokens=True),
                        "reference": tok.decode(ids[cut:], skip_special_tokens=True)})
        model.train(was)
        return out


def _vocab(model: nn.Module) -> int | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    w = getattr(head, "weight", None)
    return int(w.shape[0]) if w is not None else None


def _positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def refuse_lm_folder(manifest, folder, command: str) -> None:
    """predict / export / refine are for classifiers: a language-model folder gets one clear line."""
    if manifest.task == CausalLM.name:
        raise PrunetuneError(f"{folder}: a causal language model; `prunetune {command}` does not support language models "
                             "yet (`prunetune eval` reports its perplexity)")
