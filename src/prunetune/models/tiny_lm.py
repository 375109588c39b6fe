"""Tiny causal LMs built offline: a byte-level BPE tokenizer trained on the given texts and a
randomly initialised GPT-2-, Llama- or GPT-NeoX-style model, saved as a transformers folder.

Tests and `benchmarks/gpt_tiny.py` use it so that everything runs without a download; the folder is
loaded like any checkpoint (`model.name: hf:<folder>`), which is the path users with a real one take.

Example:
    >>> folder = tiny_model_folder("/tmp/tiny-gpt", ["a small corpus", "of a few lines"])   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts`; `<|endoftext|>` is BOS, EOS and UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def tiny_config(arch: str, vocab_size: int, layers: int = 2, heads: int = 4, dim: int = 64, positions: int = 64,
                kv_heads: int | None = None, inner: int | None = None, eos_id: int = 0):
    import transformers as tf

    inner = inner or 4 * dim
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_layer=layers, n_head=heads, n_embd=dim, n_positions=positions,
                             n_inner=inner, bos_token_id=eos_id, eos_token_id=eos_id)
    if arch == "llama":
        return tf.LlamaConfig(vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=kv_heads or heads, hidden_size=dim, intermediate_size=inner,
                              max_position_embeddings=positions, tie_word_embeddings=True,
                              bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if arch == "neox":
        return tf.GPTNeoXConfig(vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=heads,
                                hidden_size=dim, intermediate_size=inner, max_position_embeddings=positions,
                                bos_token_id=eos_id, eos_token_id=eos_id)
    raise ValueError(f"unknown arch {arch!r}; use gpt2, llama or neox")


def tiny_model_folder(folder: str | Path, texts: list[str], arch: str = "gpt2", vocab_size: int = 512, seed: int = 0,
                      tokenizer=None, **config) -> Path:
    """Write tokenizer files, config.json and random weights into `folder` (created); return it."""
    import torch
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else train_tokenizer(texts, vocab_size)
    cfg = tiny_config(arch, len(tok), eos_id=tok.eos_token_id, **config)
    torch.manual_seed(seed)
    tf.logging.set_verbosity_error()
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
