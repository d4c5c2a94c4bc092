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

Predictions file (JSONL, one record per example):
    id, question, gold, gold_text, text, answer (extracted, null when none), correct,
    forward_passes, generated_tokens, mode, max_new_tokens, seconds
    (+ latent_control, with a latent control)

`latent_control` (latent mode; `kava.inference.latent_control`): "shuffled" answers example
i with the latents of example i + 1 of `examples` (the last with the first's), "pass0" with
T = 0, "teacher" with the teacher's compressed CoT keys/values (each example needs
`steps`). `latent_reliance(own, control)` compares two evaluations of the same examples.
Each batch's records are appended (and fsynced) as soon as the batch is done; at the end
the file is rewritten atomically in the dataset's order. When the file already holds
records for some ids of this evaluation, they are kept and not generated again (resume);
a record made in another mode or with another `max_new_tokens`, or for another question
under the same id, is an error (use another file). Records of ids outside this evaluation (say, from a run with a larger
`limit`) stay in the file but do not count.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from kava.data.eval_sets import EvalExample
from kava.errors import KavaError
from kava.evaluation.answer import ANSWER_PREFIX, extract_answer, is_correct
from kava.inference.generate import DEFAULT_MAX_NEW_TOKENS, MODES, generate
from kava.inference.latent_control import CONTROLS
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


def _load_done(path: Path, examples: list[EvalExample], mode: str, max_new_tokens: int,
               latent_control: str | None = None) -> dict[str, dict]:
    """Records already in the predictions file for this evaluation's ids (checked)."""
    if not path.is_file():
        return {}
    try:
        records = read_jsonl(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KavaError(f"predictions file {path} is corrupt ({err}); delete it to start over") from None
    by_id = {ex.id: ex for ex in examples}
    done: dict[str, dict] = {}
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
        if rec.get("question") != ex.question:
            raise KavaError(
                f"predictions file {path}, record {i}: id {ex.id} has another question there; "
                "it belongs to another dataset: use another output file or folder"
            )
        done[ex.id] = rec
    # A crash can leave a partial last line: rewrite the file clean before appending to it.
    text = path.read_text(encoding="utf-8")
    if text and (not text.endswith("\n") or len(records) != sum(1 for line in text.split("\n") if line.strip())):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return done


def _record(ex: EvalExample, gen, mode: str, prefix: str, seconds: float, max_new_tokens: int,
            latent_control: str | None = None) -> dict:
    pred = extract_prediction(gen.text, mode, prefix)
    extra = {"latent_control": latent_control} if latent_control is not None else {}
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
) -> dict:
    """Answer `examples` in `mode` and score them; returns the result dict (module docstring),
    with the prediction records under `records` when `keep_records`.

    `predictions_path`: JSONL of every example, appended batch by batch and resumed from.
    `dataset`: a name for the result (and the progress bar). `latent_control`: see the module
    docstring; `teacher_settings`: the teacher control's compression (`compression`, `lam`, `move`).
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
    prefix = builder.prompt.answer_prefix
    path = Path(predictions_path) if predictions_path is not None else None
    budget = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[mode]
    done = _load_done(path, examples, mode, budget, latent_control) if path is not None else {}
    donor_of = {ex.id: examples[(i + 1) % len(examples)].question for i, ex in enumerate(examples)}
    resumed = len(done)

    todo = [ex for ex in examples if ex.id not in done]
    lengths = {ex.id: len(builder.question_ids(ex.question)) for ex in todo}
    todo.sort(key=lambda ex: -lengths[ex.id])  # stable: equal lengths keep the dataset order
    bar = tqdm(
        total=len(examples), initial=resumed, desc=f"{dataset or 'evaluate'} ({mode})", unit="q",
        disable=not progress, file=sys.stderr, dynamic_ncols=True,
    )
    correct = sum(1 for r in done.values() if r["correct"])
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            t0 = time.perf_counter()
            control = {}
            if latent_control is not None:
                control = dict(latent_control=latent_control, donors=[donor_of[ex.id] for ex in batch],
                               steps=[list(ex.steps or ()) for ex in batch], teacher_settings=teacher_settings)
            gens = generate(model, builder, [ex.question for ex in batch], mode=mode, max_new_tokens=max_new_tokens,
                            **control)
            share = (time.perf_counter() - t0) / len(batch)
            for ex, gen in zip(batch, gens):
                rec = _record(ex, gen, mode, prefix, share, budget, latent_control)
                done[ex.id] = rec
                correct += rec["correct"]
                if path is not None:
                    append_jsonl(path, rec)
            bar.update(len(batch))
            bar.set_postfix(acc=f"{100.0 * correct / len(done):.1f}%")
    finally:
        bar.close()

    if path is not None:
        _rewrite_in_order(path, examples, done)
    records = [done[ex.id] for ex in examples]
    result = summarize(records, mode, dataset)
    if latent_control is not None:
        result["latent_control"] = latent_control
    if keep_records:
        result["records"] = records
    result["resumed"] = resumed
    result["batch_size"] = batch_size
    result["max_new_tokens"] = budget
    return result


def _rewrite_in_order(path: Path, examples: list[EvalExample], done: dict[str, dict]) -> None:
    """This evaluation's records in dataset order, then any others the file held, atomically."""
    ours = {ex.id for ex in examples}
    others = [r for r in read_jsonl(path) if str(r.get("id")) not in ours] if path.is_file() else []
    lines = [json.dumps(done[ex.id]) for ex in examples] + [json.dumps(r) for r in others]
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
        p = None if path is None else (path if control is None else path.with_name(f"{path.stem}.{control}{path.suffix}"))
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
    both = evaluate_latent_controls(model, builder, examples, list(latent_controls), **kwargs)
    return both["own"] | {"latent_controls": both["controls"]}
