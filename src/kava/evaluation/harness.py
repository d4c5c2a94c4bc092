"""kava models in lm-evaluation-harness (`pip install kava[harness]`).

Importing this module registers the model ``kava`` in the harness's registry, so that

    python -m kava.evaluation.harness --model kava --model_args checkpoint=USER/NAME,mode=latent \\
        --tasks gsm8k --num_fewshot 0

is the harness's own command line (``lm_eval``'s arguments, all of them) with kava's model
in it: lm-eval 0.4 has no plugin discovery, so the plain ``lm_eval`` command only knows the
models it ships. In Python, ``lm_eval.simple_evaluate(model="kava", model_args=...)`` works
after ``import kava.evaluation.harness``; ``kava evaluate --harness TASK`` is the shortcut.

:class:`KavaLM` implements ``generate_until`` in latent, cot and direct mode, through the
same batched :func:`kava.inference.generate.generate` as ``kava evaluate``. The harness's
context is read as the question, and kava builds the prompt it was trained with around it
(Q, ``<bot>``, latents, ``<eot>``, the answer prefix): use 0-shot tasks whose prompt is the
bare question (a few-shot prompt would be read as one long question). In latent and direct
mode the prompt ends with the answer prefix (``The answer is:``), so the returned text is
that prefix and what the model wrote after it; in cot mode the model writes the prefix
itself. Either way the answer is the number after the last prefix, which
:func:`process_results` reads with kava's own parser, so a harness task using it scores
exactly as ``kava evaluate`` does. Forward passes (docs/algorithm.md §2) are counted per request and
reported with the harness's metrics. Log-likelihood requests are not supported: a KaVa
student is trained to answer after its latents, not to score continuations.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from collections.abc import Iterable

from kava.errors import KavaError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the optional extra is missing
    raise KavaError("lm-evaluation-harness is not installed: pip install 'kava[harness]'") from None

from huggingface_hub import constants
from tqdm.auto import tqdm

import kava.api
from kava.evaluation.answer import ANSWER_PREFIX, extract_answer, is_correct
from kava.evaluation.protocol import GREEDY
from kava.inference.generate import generate
from kava.inference.sampling import Sampling, example_key, sampling_from
from kava.numbers import parse_number


def forward_pass_summary(passes: list[int]) -> dict:
    """Mean and population std of forward passes per request."""
    n = len(passes)
    mean = sum(passes) / n if n else float("nan")
    std = math.sqrt(sum((p - mean) ** 2 for p in passes) / n) if n else float("nan")
    return {"n": n, "forward_passes_mean": mean, "forward_passes_std": std}


@register_model("kava")
class KavaLM(LM):
    """A kava checkpoint (folder or hub repo id) or base model for the harness.

    model_args: ``checkpoint`` or ``model``, ``revision``, ``mode`` (latent, cot, direct;
    default: what the checkpoint was trained for), ``max_new_tokens`` (default: the task's
    ``max_gen_toks``, else kava's per-mode budget), ``dtype``; ``sampling`` (default false:
    greedy), ``temperature``, ``top_p``, ``top_k``, ``seed`` (kava.inference.sampling; the task's
    own ``do_sample``/``temperature`` are not used: the protocol is the model's) and ``sample``
    (which sampled decoding: each request's stream is seeded by the seed, this index and its
    task, document and repeat); ``batch_size`` and ``device`` come from the harness's flags.
    ``pipeline=`` takes an already loaded ``KavaPipeline``.
    """

    def __init__(self, checkpoint: str | None = None, model: str | None = None, mode: str | None = None,
                 revision: str | None = None, max_new_tokens: int | None = None, dtype: str | None = None,
                 device: str | None = None, batch_size: int | str = 16, pipeline=None, sampling: bool = False,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 seed: int | None = None, sample: int = 0, **unused):
        super().__init__()
        if pipeline is None:
            pipeline = kava.api.load(checkpoint=checkpoint, model=model, device=device, dtype=dtype,
                                     revision=revision)
        self.pipe = pipeline
        self.mode = pipeline.resolve_mode(mode)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # ("auto": kava's default)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens is not None else None
        if isinstance(sampling, str):  # (lm-eval turns "true"/"True" into a bool; a Python caller may not)
            sampling = sampling.strip().lower() in ("1", "true", "yes")
        self.sampling = sampling_from(bool(sampling), temperature, top_p, top_k, seed)
        self.sample = int(sample)
        self.forward_passes: list[int] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        keys = _request_keys(requests)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = self.max_new_tokens or gen_kwargs.get("max_gen_toks")
            groups.setdefault((tuple(until), budget), []).append(i)
        prefix = self.pipe.builder.prompt.answer_prefix
        bar = tqdm(total=len(requests), desc=f"kava ({self.mode})", disable=disable_tqdm, file=sys.stderr)
        for (until, budget), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                gens = generate(self.pipe.model, self.pipe.builder, [requests[i].args[0] for i in chunk],
                                mode=self.mode, max_new_tokens=budget, sampling=self.sampling, sample=self.sample,
                                sample_keys=[keys[i] for i in chunk])
                for i, g in zip(chunk, gens):
                    text = g.text if self.mode == "cot" else f"{prefix} {g.text}"
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    out[i] = text
                    self.forward_passes.append(g.forward_passes)
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        s = forward_pass_summary(self.forward_passes)
        print(f"kava: {s['n']} requests in {self.mode} mode, forward passes {s['forward_passes_mean']:.2f} "
              f"± {s['forward_passes_std']:.2f} (mean ± std per request)", file=sys.stderr)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise KavaError("the kava model answers generation tasks only (generate_until, e.g. gsm8k), "
                        "not log-likelihood tasks")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self.loglikelihood(requests)


def _request_keys(requests) -> list[int]:
    """Each request's sampling key: its task, document and repeat (the n-th request of that document)."""
    seen: dict[str, int] = {}
    keys = []
    for i, req in enumerate(requests):
        doc = getattr(req, "doc_id", None)
        base = f"{getattr(req, 'task_name', None)}/{doc if doc is not None else i}"
        keys.append(example_key(f"{base}/{seen.get(base, 0)}"))
        seen[base] = seen.get(base, 0) + 1
    return keys


def _gold(doc: dict) -> float | None:
    for key in ("answer", "target", "Answer"):
        if key in doc:
            return parse_number(str(doc[key]).split("####")[-1])
    raise KavaError(f"a harness document with no answer, target or Answer field: {sorted(doc)}")


def process_results(doc: dict, results: list[str]) -> dict:
    """``process_results`` for a task YAML: ``acc`` scored as ``kava evaluate`` scores it
    (the number after the last answer prefix of the response, else its last number; gold
    from ``answer`` (after ``####``), ``target`` or ``Answer``)."""
    return {"acc": float(bool(is_correct(extract_answer(results[0], ANSWER_PREFIX), _gold(doc))))}


def run_harness(pipe, tasks: Iterable[str], mode: str | None = None, limit: int | None = None,
                batch_size: int = 16, max_new_tokens: int | None = None, include_path: str | None = None,
                num_fewshot: int | None = 0, sampling: Sampling | None = None, samples: int = 1) -> dict:
    """``lm_eval.simple_evaluate`` on a loaded pipeline; the harness's results dict (of the first
    decoding) with ``kava`` added: mode, forward passes (over every decoding), ``protocol``, and
    with `sampling`, ``sampled``: per task and metric, the mean, sample std and values over the
    `samples` sampled decodings (the harness run once per decoding)."""
    tasks = list(tasks)
    if sampling is None and samples != 1:
        raise KavaError(f"{samples} samples need sampled decoding: greedy decoding gives the same answers every time")
    options = {} if sampling is None else {"sampling": True, **dataclasses.asdict(sampling)}
    runs, passes = [], []
    for sample in range(samples):
        lm = KavaLM(pipeline=pipe, mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens, sample=sample,
                    **options)
        runs.append(_simple_evaluate(lm, tasks, limit, num_fewshot, include_path))
        passes += lm.forward_passes
    res = runs[0]
    res["kava"] = {"mode": lm.mode, **forward_pass_summary(passes),
                   "protocol": GREEDY if sampling is None else sampling.protocol(samples)}
    if sampling is not None:
        res["kava"]["sampled"] = _over_samples([r["results"] for r in runs])
    return res


def _simple_evaluate(lm, tasks: list[str], limit, num_fewshot, include_path) -> dict:
    """One ``lm_eval.simple_evaluate`` run; what goes wrong with the tasks or their data is one line."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    try:
        manager = TaskManager(include_path=include_path)
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                                       task_manager=manager, log_samples=True)
    except (KeyError, ValueError) as e:  # an unknown task name, ...
        raise KavaError(f"lm-evaluation-harness: {_first_line(e)}") from None
    except ConnectionError as e:  # a task whose data set is on the hub, which is not reachable
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE
               else "check the network (or set HF_HUB_OFFLINE=1 to fail at once)")
        raise KavaError(f"lm-evaluation-harness cannot load the data of {', '.join(tasks)}: {_first_line(e)}; {why}; "
                        "or give a task YAML with local data_files (--harness-include DIR, docs/inference.md)"
                        ) from None
    except FileNotFoundError as e:  # a task YAML's data_files, or a data set name, that does not exist
        raise KavaError(f"lm-evaluation-harness cannot load the data of {', '.join(tasks)}: {_first_line(e)} "
                        "(check the task's dataset_path and data_files)") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _over_samples(results: list[dict]) -> dict:
    """Per task and numeric metric (stderrs left out): mean, sample std (0 for one) and values over decodings."""
    out: dict[str, dict] = {}
    for task, metrics in results[0].items():
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or "stderr" in metric:
                continue
            values = [float(r[task][metric]) for r in results]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out.setdefault(task, {})[metric] = {"mean": statistics.fmean(values), "std": std, "values": values}
    return out


def main(argv: list[str] | None = None) -> None:
    """The harness's command line, with the ``kava`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
