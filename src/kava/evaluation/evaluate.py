"""Accuracy and forward passes on an evaluation set, resumable from its predictions file.

`evaluate_dataset` answers every example in batches (questions sorted by length, longest
first, so a batch holds similar lengths and an out-of-memory shows up at once), reads the
number from each answer (`extract_prediction`), scores it (`is_correct`) and returns

    dataset, mode, n, correct, accuracy (%), unanswered (no number found),
    forward_passes_mean, forward_passes_std, generated_tokens_mean,
    seconds, seconds_per_question, resumed, batch_size, max_new_tokens

- `forward_passes_std` and every std here is the *population* std (ddof=0) over the
  examples: it describes this set of questions, it does not estimate anything.
- `seconds` is the generation time summed over every example's share of its batch, so it
  adds up across an interrupted and a resumed run (the time of the run that made a record
  is kept in the record); `resumed` counts the examples taken from the predictions file.

and `protocol`: `{"decoding": "greedy"}`, or with `sampling` (kava.inference.sampling) the
sampling parameters, the number of samples and the seed. Sampled, every example is decoded
`samples` times (sample 0, 1, ...; each example's stream seeded by the seed, the sample and its
id) and `accuracy` is the mean of the decodings' accuracies, with `accuracy_std` (sample std,
ddof=1), `accuracies`, `samples`; `n` counts examples, `correct` and `unanswered` are per
decoding (averaged); the forward-pass and token statistics run over every decoding.

Predictions file (JSONL, one record per example, and per sample when sampled):
    id, question, gold, gold_text, text, answer (extracted, null when none), correct,
    forward_passes, generated_tokens, mode, max_new_tokens, seconds
    (+ latent_control, with a latent control; + protocol and sample, when sampled)

`latent_control` (latent mode; `kava.inference.latent_control`): "shuffled" answers example
i with the latents of example i + 1 of `examples` (the last with the first's), "pass0" with
T = 0, "teacher" with the teacher's compressed CoT keys/values (each example needs
`steps`). `latent_reliance(own, control)` compares two evaluations of the same examples.
Each batch's records are appended (and fsynced) as soon as the batch is done; at the end
the file is rewritten atomically in the dataset's order. When the file already holds
records for some ids of this evaluation, they are kept and not generated again (resume);
a record made in another mode, with another `max_new_tokens` or another decoding protocol
(sampling parameters or seed), or for another question under the same id, is an error (use
another file); a sampled file resumed with more samples keeps the samples it has. Records of
ids outside this evaluation (say, from a run with a larger `limit`) stay in the file but do
not count.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from kava.data.eval_sets import EvalExample
from kava.errors import KavaError
from kava.evaluation.answer import ANSWER_PREFIX, extract_answer, is_correct
from kava.evaluation.protocol import GREEDY, protocol_name
from kava.inference.generate import DEFAULT_MAX_NEW_TOKENS, MODES, generate
from kava.inference.latent_control import CONTROLS
from kava.inference.sampling import Sampling, example_key
from kava.io import append_jsonl, atomic_write_text, read_jsonl


def extract_prediction(text: str, mode: str, prefix: str = ANSWER_PREFIX) -> float | None:
    """The predicted number in a generated answer.

    In `latent` and `direct` mode the prompt already ends with the answer prefix, so the
    generated text *is* the answer: the prediction is the first number in it (read as
    `extract_answer(prefix + " " + text)`, so a restated prefix still wins). In `cot` mode
    the model writes its chain of thought and then the prefix itself: `extract_answer(text)`
    (the number after the last prefix, else the last number).
    """
    if mode == "cot":
        return extract_answer(text, prefix)
    return extract_answer(f"{prefix} {text}", prefix)


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _pstd(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return float(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)))


def _record_protocol(rec: dict) -> dict:
    """The decoding a prediction record was made with (no `protocol`: greedy, as before sampling existed)."""
    return rec.get("protocol") or GREEDY


def _load_done(path: Path, examples: list[EvalExample], mode: str, max_new_tokens: int,
               latent_control: str | None = None, protocol: dict = GREEDY) -> dict[tuple, dict]:
    """Records already in the predictions file for this evaluation's ids (checked), by (id, sample)."""
    if not path.is_file():
        return {}
    try:
        records = read_jsonl(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KavaError(f"predictions file {path} is corrupt ({err}); delete it to start over") from None
    by_id = {ex.id: ex for ex in examples}
    done: dict[tuple, dict] = {}
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or "id" not in rec:
            raise KavaError(f"predictions file {path}, record {i}: not a kava prediction record; use another file")
        ex = by_id.get(str(rec["id"]))
        if ex is None:
            continue
        if rec.get("mode") != mode:
            raise KavaError(
                f"predictions file {path} holds {rec.get('mode')!r}-mode answers, not {mode!r}; "
                "use another output file or folder (or delete it)"
            )
        if rec.get("latent_control") != latent_control:
            raise KavaError(
                f"predictions file {path} holds answers made with latent control {rec.get('latent_control')!r}, "
                f"not {latent_control!r}; use another output file or folder (or delete it)"
            )
        if rec.get("max_new_tokens", max_new_tokens) != max_new_tokens:
            raise KavaError(
                f"predictions file {path} was made with max_new_tokens={rec['max_new_tokens']}, not {max_new_tokens}; "
                "use another output file or folder (or delete it)"
            )
        if _record_protocol(rec) != protocol:
            raise KavaError(
                f"predictions file {path} holds answers decoded with {_describe(_record_protocol(rec))}, not "
                f"{_describe(protocol)}; use another output file or folder (or delete it)"
            )
        if rec.get("question") != ex.question:
            raise KavaError(
                f"predictions file {path}, record {i}: id {ex.id} has another question there; "
                "it belongs to another dataset: use another output file or folder"
            )
        done[(ex.id, rec.get("sample"))] = rec
    # A crash can leave a partial last line: rewrite the file clean before appending to it.
    text = path.read_text(encoding="utf-8")
    if text and (not text.endswith("\n") or len(records) != sum(1 for line in text.split("\n") if line.strip())):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return done


def _describe(protocol: dict) -> str:
    """A record's protocol in words, with its seed (answers of two seeds are not interchangeable)."""
    name = protocol_name(protocol)
    return name if name == "greedy" else f"{name}, seed {protocol.get('seed')}"


def _record(ex: EvalExample, gen, mode: str, prefix: str, seconds: float, max_new_tokens: int,
            latent_control: str | None = None, protocol: dict = GREEDY, sample: int | None = None) -> dict:
    pred = extract_prediction(gen.text, mode, prefix)
    extra = {"latent_control": latent_control} if latent_control is not None else {}
    if sample is not None:  # a sampled decoding: its protocol (without the number of samples) and index
        extra |= {"protocol": protocol, "sample": sample}
    return extra | {
        "id": ex.id,
        "question": ex.question,
        "gold": ex.answer,
        "gold_text": ex.answer_text,
        "text": gen.text,
        "answer": pred,
        "correct": bool(is_correct(pred, ex.answer)),
        "forward_passes": gen.forward_passes,
        "generated_tokens": gen.generated_tokens,
        "mode": mode,
        "max_new_tokens": max_new_tokens,
        "seconds": round(seconds, 6),
    }


def summarize(records: list[dict], mode: str, dataset: str | None = None) -> dict:
    """The result dict of a list of prediction records (see the module docstring)."""
    n = len(records)
    correct = sum(1 for r in records if r["correct"])
    passes = [float(r["forward_passes"]) for r in records]
    tokens = [float(r["generated_tokens"]) for r in records]
    seconds = float(sum(float(r.get("seconds", 0.0)) for r in records))
    return {
        "dataset": dataset,
        "mode": mode,
        "n": n,
        "correct": correct,
        "accuracy": 100.0 * correct / n if n else 0.0,
        "unanswered": sum(1 for r in records if r["answer"] is None),
        "forward_passes_mean": _mean(passes),
        "forward_passes_std": _pstd(passes),
        "generated_tokens_mean": _mean(tokens),
        "seconds": round(seconds, 3),
        "seconds_per_question": round(seconds / n, 6) if n else None,
    }


def evaluate_dataset(
    model,
    builder,
    examples: list[EvalExample],
    mode: str = "latent",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    predictions_path: str | Path | None = None,
    progress: bool = True,
    dataset: str | None = None,
    latent_control: str | None = None,
    teacher_settings: dict | None = None,
    keep_records: bool = False,
    sampling: Sampling | None = None,
    samples: int = 1,
) -> dict:
    """Answer `examples` in `mode` and score them; returns the result dict (module docstring),
    with the prediction records under `records` when `keep_records`.

    `predictions_path`: JSONL of every example, appended batch by batch and resumed from.
    `dataset`: a name for the result (and the progress bar). `latent_control`: see the module
    docstring; `teacher_settings`: the teacher control's compression (`compression`, `lam`, `move`).
    `sampling` (kava.inference.sampling): `samples` sampled decodings of every example instead of
    one greedy one; the accuracy is then their mean, with `accuracy_std` and `accuracies`.
    """
    if mode not in MODES:
        raise KavaError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
    if latent_control is not None:
        if latent_control not in CONTROLS:
            raise KavaError(f"unknown latent control {latent_control!r}; use one of: {', '.join(CONTROLS)}")
        if mode != "latent":
            raise KavaError(f"a latent control needs --mode latent, not {mode}")
        if latent_control == "teacher" and any(not ex.steps for ex in examples):
            raise KavaError("the teacher latent control needs each example's CoT steps; "
                            f"{dataset or 'these examples'} have none (it works on a training-format set)")
        if latent_control == "shuffled" and len(examples) < 2:
            raise KavaError("the shuffled latent control needs at least 2 examples (each gets another's latents)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KavaError(f"batch size must be a positive integer, got {batch_size!r}")
    if not examples:
        raise KavaError(f"no examples to evaluate{f' in {dataset}' if dataset else ''}")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        where = f"dataset {dataset}" if dataset else "the examples"
        raise KavaError(f"{where} have duplicate example id {dup!r}; ids must be unique")
    if sampling is None and samples != 1:
        raise KavaError(f"{samples} samples need sampled decoding: greedy decoding gives the same answers every time")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise KavaError(f"the number of samples must be a positive integer, got {samples!r}")
    if sampling is not None and latent_control is not None:
        raise KavaError("latent controls compare greedy answers; evaluate them without sampling")
    protocol = GREEDY if sampling is None else {k: v for k, v in sampling.protocol(samples).items() if k != "samples"}
    passes = [None] if sampling is None else list(range(samples))
    path = Path(predictions_path) if predictions_path is not None else None
    budget = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[mode]
    done = _load_done(path, examples, mode, budget, latent_control, protocol) if path is not None else {}
    done = {k: r for k, r in done.items() if k[1] in passes}  # (another number of samples: the rest stay)
    resumed = len(done)
    bar = tqdm(
        total=len(examples) * len(passes), initial=resumed, desc=f"{dataset or 'evaluate'} ({mode})", unit="q",
        disable=not progress, file=sys.stderr, dynamic_ncols=True,
    )
    try:
        for sample in passes:
            _answer_all(model, builder, examples, done, sample, bar, path, batch_size=batch_size, mode=mode,
                        max_new_tokens=max_new_tokens, budget=budget, latent_control=latent_control,
                        teacher_settings=teacher_settings, sampling=sampling, protocol=protocol)
    finally:
        bar.close()

    if path is not None:
        _rewrite_in_order(path, examples, done, passes)
    records = [done[(ex.id, sample)] for sample in passes for ex in examples]
    result = summarize(records, mode, dataset)
    if sampling is not None:
        result.update(_over_samples(records, len(examples), samples))
    result["protocol"] = GREEDY if sampling is None else sampling.protocol(samples)
    if latent_control is not None:
        result["latent_control"] = latent_control
    if keep_records:
        result["records"] = records
    result["resumed"] = resumed
    result["batch_size"] = batch_size
    result["max_new_tokens"] = budget
    return result


def _answer_all(model, builder, examples: list[EvalExample], done: dict, sample: int | None, bar, path: Path | None,
                *, batch_size: int, mode: str, max_new_tokens: int | None, budget: int, latent_control: str | None,
                teacher_settings: dict | None, sampling: Sampling | None, protocol: dict) -> None:
    """One decoding of every example not in `done` (greedy, or sampled decoding number `sample`), in
    batches of similar question lengths; each batch's records go into `done` and the file at once."""
    prefix = builder.prompt.answer_prefix
    donor_of = {ex.id: examples[(i + 1) % len(examples)].question for i, ex in enumerate(examples)}
    todo = [ex for ex in examples if (ex.id, sample) not in done]
    lengths = {ex.id: len(builder.question_ids(ex.question)) for ex in todo}
    todo.sort(key=lambda ex: -lengths[ex.id])  # stable: equal lengths keep the dataset order
    correct = sum(1 for r in done.values() if r["correct"])
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        t0 = time.perf_counter()
        control = {}
        if latent_control is not None:
            control = dict(latent_control=latent_control, donors=[donor_of[ex.id] for ex in batch],
                           steps=[list(ex.steps or ()) for ex in batch], teacher_settings=teacher_settings)
        if sampling is not None:
            control |= dict(sampling=sampling, sample=sample, sample_keys=[example_key(ex.id) for ex in batch])
        gens = generate(model, builder, [ex.question for ex in batch], mode=mode, max_new_tokens=max_new_tokens,
                        **control)
        share = (time.perf_counter() - t0) / len(batch)
        for ex, gen in zip(batch, gens):
            rec = _record(ex, gen, mode, prefix, share, budget, latent_control, protocol, sample)
            done[(ex.id, sample)] = rec
            correct += rec["correct"]
            if path is not None:
                append_jsonl(path, rec)
        bar.update(len(batch))
        bar.set_postfix(acc=f"{100.0 * correct / len(done):.1f}%")


def _over_samples(records: list[dict], n: int, samples: int) -> dict:
    """Accuracy over sampled decodings: the mean and sample std (ddof=1; 0 for one sample) of each
    decoding's accuracy; `correct` and `unanswered` per decoding, averaged."""
    accuracies = [100.0 * sum(r["correct"] for r in records[s * n : (s + 1) * n]) / n for s in range(samples)]
    std = statistics.stdev(accuracies) if samples > 1 else 0.0
    return {"n": n, "samples": samples, "accuracy": statistics.fmean(accuracies), "accuracy_std": std,
            "accuracies": accuracies, "correct": sum(r["correct"] for r in records) / samples,
            "unanswered": sum(r["answer"] is None for r in records) / samples}


def _rewrite_in_order(path: Path, examples: list[EvalExample], done: dict[tuple, dict], passes: list) -> None:
    """This evaluation's records in dataset order (sample by sample), then any others the file held, atomically."""
    ours = {(ex.id, sample) for sample in passes for ex in examples}
    others = ([r for r in read_jsonl(path) if (str(r.get("id")), r.get("sample")) not in ours]
              if path.is_file() else [])
    lines = [json.dumps(done[(ex.id,
                              sample)]) for sample in passes for ex in examples] + [json.dumps(r) for r in others]
    atomic_write_text(path, "\n".join(lines) + "\n")


def latent_reliance(own: list[dict], control: list[dict]) -> dict:
    """How much the answers depend on the latents: two evaluations of the same examples, one
    with each question's own latents and one under a latent control (prediction records).

    Returns own_accuracy, control_accuracy, reliance (own − control, in points) and changed
    (the share of examples, in %, whose extracted answer differs), all in %."""
    by_id = {r["id"]: r for r in control}
    if set(by_id) != {r["id"] for r in own}:
        raise KavaError("latent reliance compares two evaluations of the same examples")
    n = len(own)
    acc = 100.0 * sum(r["correct"] for r in own) / n
    ctrl = 100.0 * sum(by_id[r["id"]]["correct"] for r in own) / n
    changed = 100.0 * sum(r["answer"] != by_id[r["id"]]["answer"] for r in own) / n
    return {"own_accuracy": acc, "control_accuracy": ctrl, "reliance": acc - ctrl, "changed": changed}


def evaluate_latent_controls(model, builder, examples: list[EvalExample], controls: list[str],
                             predictions_path: str | Path | None = None, **kwargs) -> dict:
    """Latent-mode accuracy with each question's own latents and under each control.

    Returns {"own": result, "controls": {control: result + latent_reliance(...)}}; with
    `predictions_path` (`.../predictions.jsonl`) the controls' predictions go next to it
    (`predictions.<control>.jsonl`). Other keyword arguments go to `evaluate_dataset`."""
    path = Path(predictions_path) if predictions_path is not None else None

    def run(control):
        p = path if path is None or control is None else path.with_name(f"{path.stem}.{control}{path.suffix}")
        return evaluate_dataset(model, builder, examples, mode="latent", predictions_path=p, latent_control=control,
                                keep_records=True, **kwargs)

    own = run(None)
    out = {}
    for control in controls:
        res = run(control)
        res.update(latent_reliance(own["records"], res["records"]))
        out[control] = {k: v for k, v in res.items() if k != "records"}
    return {"own": {k: v for k, v in own.items() if k != "records"}, "controls": out}


def evaluate_examples(model, builder, examples: list[EvalExample], mode: str = "latent",
                      latent_controls: Sequence[str] = (), **kwargs) -> dict:
    """What `kava evaluate` and `KavaPipeline.evaluate` report: `evaluate_dataset` in `mode`, or
    with `latent_controls` (latent mode only) the result with the questions' own latents, with
    `latent_controls` added: per control its result, `reliance` and `changed`
    (`evaluate_latent_controls`). Other keyword arguments go to `evaluate_dataset`."""
    if not latent_controls:
        return evaluate_dataset(model, builder, examples, mode=mode, **kwargs)
    if mode != "latent":
        raise KavaError(f"a latent control needs latent mode, not {mode}")
    if kwargs.pop("sampling", None) is not None or kwargs.pop("samples", 1) != 1:
        raise KavaError("latent controls compare greedy answers; evaluate them without sampling")
    both = evaluate_latent_controls(model, builder, examples, list(latent_controls), **kwargs)
    return both["own"] | {"latent_controls": both["controls"]}
