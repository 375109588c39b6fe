"""Hugging Face causal language models (GPT-2, Llama, Qwen, Mistral, Pythia / GPT-NeoX, ...).

Built by `models.hf.hf_model` when the data asks for the `causal_lm` head (the `lm_text` data source
puts `{"head": "causal_lm"}` into the bundle's model kwargs, stored in the manifest): the model is
`AutoModelForCausalLM`, from a hub id or a local folder, with its pretrained weights, or with random
weights from the folder's `config.json` when `model.kwargs.pretrained` is false.
"""

from __future__ import annotations

from torch import nn

from ..errors import PrunetuneError


def load_lm_config(src: str, trust_code: bool = False):
    """The transformers config of a causal LM folder or hub id (nothing about labels is changed)."""
    from pathlib import Path

    from ..models.hf import _local, _transformers

    tf = _transformers()
    if _local(src) and not (Path(src).expanduser() / "config.json").exists():
        raise PrunetuneError(f"model.name: {src} is not a transformers model folder (no config.json); check the path")
    try:
        return tf.AutoConfig.from_pretrained(src, trust_remote_code=trust_code, local_files_only=_local(src))
    except (OSError, ValueError) as e:
        raise PrunetuneError(f"model.name: cannot load a transformers config from {src!r} ({str(e).splitlines()[0][:120]})") from None


def causal_lm(name: str, trust_code: bool = False, pretrained: bool = True, config=None, **kwargs) -> nn.Module:
    """`AutoModelForCausalLM` for `hf:<hub id or folder>`: pretrained weights, or random ones from the config."""
    from ..models.hf import _local, _transformers, pretrained_source

    tf = _transformers()
    src = pretrained_source(name)
    if config is None:
        config = load_lm_config(src, trust_code)
    known = getattr(tf, "MODEL_FOR_CAUSAL_LM_MAPPING", {})
    if type(config) not in known and not trust_code:
        raise PrunetuneError(
            f"model.name: {config.model_type!r} models have no causal-LM head in transformers; "
            "use a decoder such as GPT-2, Llama, Qwen or Pythia")
    for k, v in kwargs.items():
        setattr(config, k, v)
    if not pretrained:
        return tf.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_code)
    try:
        return tf.AutoModelForCausalLM.from_pretrained(src, config=config, trust_remote_code=trust_code,
                                                       local_files_only=_local(src))
    except (OSError, ValueError, RuntimeError) as e:
        raise PrunetuneError(f"model.name: cannot load weights from {src!r} ({str(e).splitlines()[0][:120]})") from None


def is_lm_head(model: nn.Module, name: str | None) -> bool:
    """True when module `name` is the model's output embedding (a language model's head, often tied to
    the input embeddings): pruning and PEFT methods leave it as it is."""
    if not name:
        return False
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        base = getattr(model, "get_base_model", None)  # a peft wrapper
        get = getattr(base(), "get_output_embeddings", None) if callable(base) else None
    try:
        head = get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return False
    if head is None:
        return False
    mods = dict(model.named_modules())
    mod = mods.get(name)
    if mod is None:
        mod = mods.get(f"base_model.model.{name}")
    return mod is head or getattr(mod, "base_layer", None) is head
