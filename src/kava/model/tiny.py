"""Tiny random models and a character tokenizer, built in code (nothing downloaded).

They exist for tests and smoke runs: a 4-layer Llama or Qwen2 with a ~100-entry
character vocabulary runs a full KaVa step in a fraction of a second on a CPU.
`TINY_MODELS` maps the names accepted by `model.name` in a config to architectures.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TINY_MODELS = ("tiny-llama", "tiny-qwen2")

_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Printable ASCII plus newline and a few characters common in math word problems.
_CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c")) + ["’", "−", "€", "£", "°", "½"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character, unknown characters map to <unk>."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
    return tok


def build_tiny_model(
    name: str,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """A randomly initialised causal LM of the Llama or Qwen2 architecture (fp32)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {TINY_MODELS}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
    )
    if tokenizer is not None:
        common.update(
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "tiny-llama":
            model = LlamaForCausalLM(LlamaConfig(**common))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    return model
