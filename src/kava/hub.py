"""Checkpoints on the Hugging Face hub: `kava push`, the model card, and repo ids wherever a
checkpoint folder is accepted.

* :func:`push`: uploads a checkpoint folder (adapter or full weights, projection, tokenizer,
  resolved config; not the optimizer state) with ``huggingface_hub``'s ``upload_folder``,
  then a model card (:func:`model_card`) with ``ModelCard.push_to_hub``.
* :func:`resolve_checkpoint`: a local folder as it is; a hub repo id (``user/name``, with a
  revision) through ``snapshot_download``, so it lands in the hub cache
  (``$HF_HUB_CACHE/models--user--name/snapshots/<commit>/``) and is read from there
  afterwards, ``HF_HUB_OFFLINE=1`` included.

The card is written from the files kava leaves next to a checkpoint: its
``kava_config.yaml`` and ``trainer_state.json``, the ``results_<dataset>.yaml`` of
``kava evaluate --output-dir`` in the checkpoint's parent folder (a sweep's seed folder),
and, when the checkpoint is a seed of a ``kava sweep`` run, the run's ``run.yaml`` and
``summary.yaml`` (mean ± sample std over the seeds).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

from kava.errors import KavaError

#: Files of a checkpoint that inference does not need (optimizer and RNG state for --resume;
#: checkpoint-final holds them too, so that a finished run can be extended).
NOT_UPLOADED = ["training_state.safetensors", "training_state.json", "training_state.pt"]
#: Hub datasets of kava's evaluation sets (the card's model-index points at them).
CITATION = """@inproceedings{kuzina2026kava,
  title     = {Latent Reasoning via Compressed {KV}-Cache Distillation},
  author    = {Kuzina and Pi{\\'o}ro and Whatmough and Ehteshami Bejnordi},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026},
  note      = {arXiv:2510.02312}
}"""
#: The license of the base model's family (the checkpoint inherits it); others: "other".
_LICENSES = (("llama-3", "llama3.2"), ("llama3", "llama3.2"), ("qwen", "apache-2.0"), ("smollm", "apache-2.0"),
             ("tiny-", "apache-2.0"), ("random:", "apache-2.0"))
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(text: str) -> bool:
    """``user/name`` that is not an existing local path."""
    return bool(_REPO_ID.match(str(text))) and not Path(text).exists() and ".." not in str(text)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(checkpoint: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint folder, or the hub-cache snapshot of repo id ``checkpoint``."""
    path = Path(checkpoint)
    if path.exists() or not is_repo_id(str(checkpoint)):
        if revision is not None:
            raise KavaError(f"--revision is for hub repo ids; {checkpoint} is a local path")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision}" if revision else ""
    try:
        # offline: the cache only (huggingface_hub 1.x would try the hub for a commit revision and fail)
        return Path(snapshot_download(str(checkpoint), revision=revision, local_files_only=_offline()))
    except LocalEntryNotFoundError:
        if _offline():
            raise KavaError(f"{checkpoint}{at} is not in the hub cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                            "unset HF_HUB_OFFLINE, or download it once where the hub is reachable") from None
        raise KavaError(f"cannot download {checkpoint}{at}: the hub is not reachable and it is not in the "
                        "cache") from None
    except RevisionNotFoundError:
        raise KavaError(f"{checkpoint} has no revision {revision!r}") from None
    except GatedRepoError:
        raise KavaError(f"{checkpoint} is gated: accept its terms on the hub, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise KavaError(f"no checkpoint folder and no hub repo {checkpoint!r} (private? `hf auth login`)") from None


# ----------------------------------------------------------------------------- the card


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _license(model_name: str) -> str:
    low = model_name.lower().split("/")[-1]
    return next((lic for key, lic in _LICENSES if key in low), "other")


def _hub_dataset(name: str) -> str | None:
    from kava.data.eval_sets import EVAL_DATASETS

    info = EVAL_DATASETS.get(name)
    return info.hub_id if info is not None else None


def _seed_results(seed_dir: Path) -> dict[str, dict]:
    from kava.evaluation.results import results_files

    out = {}
    try:
        files = results_files(seed_dir)
    except OSError:
        return {}
    for key, p in files:
        res = _read_yaml(p)
        if "accuracy" in res:
            out[str(res.get("dataset") or key)] = res
    return out


def _sweep_of(checkpoint: Path) -> tuple[dict, dict] | None:
    """(run.yaml, summary.yaml) when ``checkpoint`` is RUN/seed_<s>/checkpoint-*."""
    run = checkpoint.parent.parent
    if not checkpoint.parent.name.startswith("seed_") or not (run / "run.yaml").is_file():
        return None
    return _read_yaml(run / "run.yaml"), _read_yaml(run / "summary.yaml")


def _fmt(x, digits=2) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def _eval_results(seed_results: dict, summary: dict) -> list:
    """The model card's `EvalResult`s: accuracy per dataset (the mean over seeds when the run has
    several) and forward passes per question."""
    from huggingface_hub import EvalResult

    eval_results = []
    for ds, res in seed_results.items():
        hub = _hub_dataset(ds) or ds
        s = summary.get(ds) or {}
        if s.get("n_seeds", 0) > 1:  # the run's mean over seeds, as the paper reports
            acc, what = s["accuracy_mean"], f"accuracy (%), mean of {s['n_seeds']} seeds"
        else:
            acc, what = res["accuracy"], "accuracy (%)"
        eval_results.append(EvalResult(task_type="text-generation", task_name="math word problems",
                                       dataset_type=hub, dataset_name=ds, dataset_split="test",
                                       metric_type="accuracy", metric_value=round(float(acc), 2), metric_name=what))
        if res.get("forward_passes_mean") is not None:
            eval_results.append(EvalResult(task_type="text-generation", task_name="math word problems",
                                           dataset_type=hub, dataset_name=ds, dataset_split="test",
                                           metric_type="forward_passes",
                                           metric_value=round(float(res["forward_passes_mean"]), 2),
                                           metric_name="forward passes per question"))
    return eval_results


def _reproduce_lines(sweep, cfg) -> list[str]:
    """The model card's commands that train the model again: the sweep's, or from the resolved config."""
    lines: list[str] = []
    if sweep:
        run, _ = sweep
        config = Path(str(run.get("config")))  # (absolute in run.yaml: as the repository names it)
        config = str(Path("configs") / config.name) if config.parent.name == "configs" else config.name
        cmd = ["kava", "train", "--config", config, "--seed", str(cfg.seed), *(run.get("overrides") or [])]
        lines += ["Reproduce (this seed, from the kava repository):", "", "```bash", shlex.join(cmd), "```", "",
                  "or the whole run: `" + shlex.join(["kava", "sweep", "--config", config, "--seeds",
                                                      *map(str, run.get("seeds") or []),
                                                      *(run.get("overrides") or [])]) + "`", ""]
    else:
        lines += ["Reproduce from this repository's resolved config:", "", "```bash",
                  "kava train --config kava_config.yaml --output-dir outputs/repro", "```", ""]
    return lines


def model_card(checkpoint: str | os.PathLike, repo_id: str, license: str | None = None):
    """A ``huggingface_hub.ModelCard`` for the checkpoint folder (see the module docstring)."""
    from huggingface_hub import ModelCard, ModelCardData

    from kava.config import EVAL_MODE
    from kava.training.checkpoint import read_checkpoint_config

    ckpt = Path(checkpoint)
    cfg = read_checkpoint_config(ckpt)
    state = _read_yaml(ckpt / "trainer_state.json")  # (JSON is YAML)
    seed_results = _seed_results(ckpt.parent)
    sweep = _sweep_of(ckpt)
    summary = (sweep[1].get("datasets") or {}) if sweep else {}
    base = cfg.model.name
    mode = EVAL_MODE[cfg.train.method]
    name = repo_id.split("/")[-1]

    eval_results = _eval_results(seed_results, summary)
    data = ModelCardData(
        license=license or _license(base),
        library_name="kava",
        base_model=base if is_repo_id(base) else None,
        datasets=[cfg.data.dataset] if is_repo_id(cfg.data.dataset) else None,
        tags=["kava", "latent-reasoning", "kv-cache-distillation", *(["lora"] if cfg.lora.enabled else [])],
        model_name=name,
        eval_results=eval_results or None,
    )

    steps, per_epoch, gbs = state.get("step"), state.get("steps_per_epoch"), cfg.train.global_batch_size
    size = f"about {per_epoch * gbs:,} examples" if per_epoch else "size unknown"
    lines = [
        f"# {name}", "",
        f"A KaVa latent-reasoning model (arXiv [2510.02312](https://arxiv.org/abs/2510.02312)) trained with "
        f"kava from `{base}`: the model answers after "
        f"{cfg.latent.num_latents} continuous latent tokens refined by {cfg.latent.num_iterations} Jacobi iterations "
        f"instead of a written chain of thought." if mode == "latent" else
        f"A `{cfg.train.method}` fine-tuning baseline of the KaVa paper trained with kava from `{base}`.", "",
        "## Use", "", "With kava installed:", "", "```bash",
        f"kava infer --checkpoint {repo_id} --question \"Tom has 3 apples and buys 4 more. How many?\"",
        f"kava evaluate --checkpoint {repo_id} --datasets gsm8k gsm8k-hard svamp", "```", "",
        "```python", "import kava.api", "",
        f"pipe = kava.api.load(checkpoint=\"{repo_id}\")",
        "print(pipe.answer(\"Tom has 3 apples and buys 4 more. How many?\"))", "```", "",
        "## Training", "",
        "| setting | value |", "|---|---|",
        f"| base model | `{base}` |",
        f"| training data | `{cfg.data.dataset}` ({size}) |",
        f"| method | `{cfg.train.method}` |",
        f"| optimizer steps | {steps if steps is not None else '-'} (global batch {gbs}, {state.get('epoch', '-')} "
        f"epochs) |",
        f"| learning rate | {cfg.train.lr:g} ({cfg.train.lr_scheduler}, warm-up {cfg.train.warmup_ratio:g}) |",
        f"| weight decay | {cfg.train.weight_decay:g} |",
        "| LoRA | " + (f"r={cfg.lora.r}, α={cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g} |" if cfg.lora.enabled
                       else "off (full fine-tuning) |"),
        f"| latent tokens M | {cfg.latent.num_latents} |",
        f"| Jacobi iterations T | {cfg.latent.num_iterations} |",
        f"| compression | {cfg.kava.compression} (λ={cfg.kava.rkv_lambda:g}) |",
        f"| loss weights | α₁ (CODI) = {cfg.kava.alpha_codi:g}, α₂ (KV) = {cfg.kava.alpha_kv:g}, KV loss "
        f"{cfg.kava.kv_loss} |",
        f"| seed | {cfg.seed} |", "",
    ]
    lines += _reproduce_lines(sweep, cfg)
    lines += ["## Evaluation", ""]
    if seed_results:
        lines += [f"Greedy decoding, {mode} mode, `kava evaluate` (accuracy in %, forward passes per question).", "",
                  "| dataset | questions | accuracy (%) | forward passes |", "|---|---|---|---|"]
        for ds, res in seed_results.items():
            lines.append(f"| {ds} | {res.get('n', '-')} | {_fmt(res['accuracy'])} | "
                         f"{_fmt(res.get('forward_passes_mean'), 1)} |")
        lines.append("")
    if summary:
        s_seeds = sweep[1].get("seeds") or []
        lines += [f"Over the run's {len(s_seeds)} seeds {s_seeds} (mean ± sample std):", "",
                  "| dataset | accuracy (%) | forward passes | seeds |", "|---|---|---|---|"]
        for ds, s in summary.items():
            lines.append(f"| {ds} | {_fmt(s.get('accuracy_mean'))} ± {_fmt(s.get('accuracy_std'))} | "
                         f"{_fmt(s.get('forward_passes_mean'), 1)} ± {_fmt(s.get('forward_passes_std'), 1)} | "
                         f"{s.get('n_seeds', '-')} |")
        lines.append("")
    if not seed_results and not summary:
        lines += ["Not evaluated yet: `kava evaluate --checkpoint " + repo_id + " --datasets gsm8k`.", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def push(checkpoint: str | os.PathLike, repo_id: str, private: bool = False, license: str | None = None,
         revision: str | None = None) -> str:
    """Upload the checkpoint folder and its card to ``repo_id``; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    ckpt = Path(checkpoint)
    if not _REPO_ID.match(repo_id):
        raise KavaError(f"{repo_id!r} is not a hub repo id; use USER/NAME (or ORG/NAME)")
    card = model_card(ckpt, repo_id, license=license)  # (checks the checkpoint first)
    if _offline():
        raise KavaError("kava push needs the hub, but HF_HUB_OFFLINE=1 is set; unset it to push")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=ckpt, repo_id=repo_id, ignore_patterns=NOT_UPLOADED, revision=revision,
                          commit_message=f"kava push {ckpt.name}")
        card.push_to_hub(repo_id, revision=revision, commit_message="model card (kava push)")
    except OfflineModeIsEnabled:
        raise KavaError("kava push needs the hub, but HF_HUB_OFFLINE=1 is set; unset it to push") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KavaError(f"pushing to {repo_id} failed: {first} (logged in? `hf auth login`)") from None
    return str(url)


# ----------------------------------------------------------------------------- kava push

PUSH_EXAMPLE = """examples:
  kava push experiments/llama1b_aug/seed_42/checkpoint-final me/kava-llama-3.2-1b-gsm8k-aug
  kava push outputs/tiny/checkpoint-final me/kava-tiny --private

Uploads the checkpoint (adapter or full weights, projection, tokenizer, kava_config.yaml; not the
optimizer state) and a model card written from its config, the results_<dataset>.yaml next to it
and, for a seed of a kava sweep run, the run's mean ± std over seeds. Needs `hf auth login`."""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("push", help="upload a checkpoint to the Hugging Face hub with a model card",
                       description="Upload CHECKPOINT to the hub repo REPO_ID (created if missing) with a model card.",
                       epilog=PUSH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder from kava train or kava sweep")
    p.add_argument("repo_id", metavar="REPO_ID", help="USER/NAME or ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--license", help="the card's license (default: the base model family's, e.g. llama3.2)")
    p.add_argument("--revision", help="the branch to push to (default: main)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files that would be uploaded and the model card; upload nothing")
    p.set_defaults(func=_cmd_push)


def upload_list(checkpoint: str | os.PathLike) -> list[str]:
    """The files of the checkpoint folder that `push` uploads (relative paths)."""
    ckpt = Path(checkpoint)
    return sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name not in NOT_UPLOADED)


def _cmd_push(args) -> int:
    if args.dry_run:
        card = model_card(args.checkpoint, args.repo_id, license=args.license)
        files = upload_list(args.checkpoint)
        print(f"would upload to {args.repo_id}{' (private)' if args.private else ''}: {', '.join(files)}, README.md")
        print(str(card))
        return 0
    url = push(args.checkpoint, args.repo_id, private=args.private, license=args.license, revision=args.revision)
    print(f"pushed {args.checkpoint} to {url}")
    return 0
