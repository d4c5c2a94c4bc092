"""Checkpoints: written atomically, loaded strictly, never unpickled (docs/algorithm.md §9).

    checkpoint-<step>/ or checkpoint-final/
      adapter/                    LoRA + new-token embedding rows (peft, safetensors)   [LoRA on]
      model/                      the full backbone (safetensors)                        [LoRA off]
      projection.safetensors      the latent projection                                  [latent.projection]
      tokenizer/                  with <bot>, <eot>, <latent>
      kava_config.yaml            the resolved config
      trainer_state.json          format, kava version, step, epoch, total steps, skip counters
      training_state.safetensors  optimizer, scheduler and RNG states (for --resume;
      training_state.json           kava.training.state: no pickle)

A checkpoint is assembled in `<name>.tmp/` and renamed into place, so an interrupted
save (a kill, a full disk) leaves the previous checkpoint intact and never a half-written
one; `recover_output_dir` tidies what an interrupted save left behind.

Loading is strict: every file must be there and readable, and the weights must fit the
model key for key and shape for shape (a checkpoint of another model, a truncated file or
an adapter of another rank is refused, never loaded with some weights left at random).
Each refusal is a `KavaError` naming the checkpoint and what does not match.

A folder written by `kava export` (kava.export: a transformers folder, LoRA merged, with the
projection, the config and a trainer_state.json whose "export" entry names its source) loads
here too: its config is read as "the folder is the model", with LoRA off.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from kava import __version__
from kava.config import KavaConfig, config_from_dict, config_to_dict, uses_projection
from kava.data.sequences import SequenceBuilder
from kava.errors import KavaError
from kava.failpoints import failpoint
from kava.io import atomic_replace_dir, atomic_write_yaml, finish_interrupted_replace, give_umask_mode
from kava.model.kava_model import KavaModel, add_special_tokens, peft_model
from kava.model.load import load_backbone
from kava.training.state import STATE_JSON, load_training_state, save_training_state

FORMAT = 2
PROJECTION_FILE = "projection.safetensors"
#: trainer_state.json's entry in a `kava export` folder: {"source": checkpoint, "dtype": weights dtype}
EXPORT_KEY = "export"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER = re.compile(r"^(checkpoint-(?:\d+|final))\.(?:tmp|old)$")


def _unwrap(model):
    return getattr(model, "module", model)


# peft's notes when it gathers an adapter's weights (to save them, or to check a checkpoint
# against them) and cannot compare the base's vocabulary (a model built in memory has no
# base_model_name_or_path folder) or finds it grew (kava adds <bot>, <eot>, <latent>): they
# describe what it keeps, not something the user should act on, and arrive mid-progress-bar
_PEFT_SAVE_NOTES = ("Could not find a config file in", "Setting `save_embedding_layers` to `True`")


@contextmanager
def _peft_notes_silenced():
    """Only peft's two notes above are ignored, and only inside the block."""
    with warnings.catch_warnings():
        for note in _PEFT_SAVE_NOTES:
            warnings.filterwarnings("ignore", message=re.escape(note), category=UserWarning)
        yield


def save_adapter(peft_model, folder: Path) -> None:
    """`peft_model.save_pretrained(folder)` without peft's two notes on the embedding check
    (the files written are unchanged)."""
    with _peft_notes_silenced():
        peft_model.save_pretrained(folder)


def save_checkpoint(path: str | Path, model, tokenizer, cfg: KavaConfig, state: dict | None = None,
                    optimizer=None, scheduler=None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model = _unwrap(model)
        if cfg.lora.enabled:
            save_adapter(model.backbone, tmp / "adapter")
        else:
            model.backbone.save_pretrained(tmp / "model")
        if model.projection is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.projection.state_dict().items()},
                      str(tmp / PROJECTION_FILE))
        failpoint("checkpoint.weights")
        tokenizer.save_pretrained(tmp / "tokenizer")
        atomic_write_yaml(tmp / "kava_config.yaml", config_to_dict(cfg))
        failpoint("checkpoint.tokenizer")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"format": FORMAT, "kava_version": __version__, **(state or {})}, indent=2))
        if optimizer is not None:
            save_training_state(tmp, optimizer, scheduler)
        failpoint("checkpoint.state")
        give_umask_mode(tmp)  # safetensors writes 0600
        atomic_replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: do not leave it fuller
        raise
    return path


def step_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    for _, p in step_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def recover_output_dir(output_dir: str | Path) -> None:
    """Finish or undo the checkpoint saves a kill interrupted (call with the folder locked):
    a `checkpoint-N.old` whose replacement never arrived is put back, `*.tmp` folders go."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for p in list(output_dir.iterdir()):
        m = _LEFTOVER.match(p.name)
        if m:
            finish_interrupted_replace(output_dir / m.group(1))


def read_checkpoint_config(path: str | Path) -> KavaConfig:
    """The checkpoint's config, after checking that every file it needs is there (cheap:
    no weights are read). A config this kava cannot read names both versions."""
    path = Path(path)
    cfg_file = path / "kava_config.yaml"
    if not path.is_dir():
        raise KavaError(f"checkpoint not found: {path}")
    if not cfg_file.is_file():
        raise KavaError(f"{path} is not a kava checkpoint (no kava_config.yaml); point to a checkpoint-* folder")
    meta = read_trainer_state(path)
    written = meta.get("kava_version")
    try:
        raw = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise KavaError(f"{cfg_file} is corrupt ({type(err).__name__}); the checkpoint cannot be used") from None
    if not isinstance(raw, dict):
        raise KavaError(f"{cfg_file} is corrupt (not a mapping); the checkpoint cannot be used")
    try:
        cfg = config_from_dict(raw, source=str(cfg_file))
    except KavaError as err:
        if written == __version__:
            raise
        by = f"kava {written}" if written else "an older kava (no version recorded)"
        raise KavaError(f"checkpoint {path} was written by {by}, this is kava {__version__}, and its config does not "
                        f"fit this version: {str(err).removeprefix(f'invalid config {cfg_file}: ')}; "
                        f"load it with the kava version that wrote it") from None
    if meta.get("format", 1) > FORMAT:
        raise KavaError(f"checkpoint {path} has format {meta['format']} (kava {written}); this kava {__version__} "
                        f"reads format {FORMAT} and older: upgrade kava")
    if isinstance(meta.get(EXPORT_KEY), dict):
        cfg = _exported_config(cfg, path, meta[EXPORT_KEY])
    for rel in _required_files(cfg, exported=EXPORT_KEY in meta):
        if not (path / rel).exists():
            raise KavaError(f"checkpoint {path} is incomplete: {rel} is missing; copy the whole checkpoint folder "
                            "(or use another checkpoint)")
    return cfg


def read_trainer_state(path: Path) -> dict:
    f = path / "trainer_state.json"
    if not f.is_file():
        raise KavaError(f"checkpoint {path} is incomplete: trainer_state.json is missing; copy the whole checkpoint "
                        "folder (or use another checkpoint)")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise KavaError(f"{f} is corrupt ({type(err).__name__}); the checkpoint cannot be used") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format", 1), int):
        raise KavaError(f"{f} is corrupt (not a kava trainer state); the checkpoint cannot be used")
    return meta


def is_exported(path: str | Path) -> bool:
    """Whether `path` is a folder written by `kava export` (not a training checkpoint)."""
    return EXPORT_KEY in read_trainer_state(Path(path))


def _exported_config(cfg: KavaConfig, path: Path, export: dict) -> KavaConfig:
    """How to load a `kava export` folder: the folder is the model (LoRA merged into it), in the
    dtype it was exported in."""
    cfg.model.name = str(path)
    cfg.model.gguf_file = cfg.model.revision = None
    cfg.model.dtype = export.get("dtype", "auto")
    cfg.lora.enabled = False
    return cfg


def _required_files(cfg: KavaConfig, exported: bool = False) -> list[str]:
    if exported:
        files = ["config.json", "tokenizer_config.json"]
    elif cfg.lora.enabled:
        files = ["tokenizer/tokenizer_config.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    else:
        files = ["tokenizer/tokenizer_config.json", "model/config.json"]
    if uses_projection(cfg):
        files.append(PROJECTION_FILE)
    return files


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad files
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise KavaError(f"{file} is corrupt or truncated ({reason}); copy the checkpoint again "
                        "or use another one") from None


def check_weights_fit(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where) -> None:
    """KavaError unless `found` has exactly `expected`'s keys, each with its shape."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k} is {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
              for k in sorted(set(found) & set(expected)) if found[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({shapes[0]})")
    if problems:
        raise KavaError(f"{where} does not fit the model: {'; '.join(problems)}; it was written for another model "
                        "or config (or is damaged)")


def _load_projection(model, path: Path) -> None:
    if model.projection is None:
        return
    weights = _read_safetensors(path / PROJECTION_FILE)
    check_weights_fit(weights, model.projection.state_dict(), path / PROJECTION_FILE)
    model.projection.load_state_dict(weights)


def _load_full_weights(backbone, path: Path) -> None:
    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise KavaError(f"checkpoint {path} is incomplete: model/ holds no .safetensors file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_read_safetensors(f))
    expected = backbone.state_dict()
    # save_pretrained writes a tied weight (lm_head = embed_tokens) once.
    pointers = {expected[k].data_ptr() for k in state if k in expected}
    expected = {k: v for k, v in expected.items() if k in state or v.data_ptr() not in pointers}
    check_weights_fit(state, expected, path / "model")
    backbone.load_state_dict(state, strict=False)


def _load_adapter(backbone, path: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    weights = _read_safetensors(path / "adapter" / "adapter_model.safetensors")
    with _peft_notes_silenced():
        expected = get_peft_model_state_dict(backbone)
    check_weights_fit(weights, expected, path / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(backbone, weights)


def load_trainable_state(model, path: str | Path) -> None:
    """Load a checkpoint's adapter (or full weights) and projection into a built model, strictly."""
    path = Path(path)
    model = _unwrap(model)
    if hasattr(model.backbone, "peft_config"):
        if not (path / "adapter").is_dir():
            raise KavaError(f"checkpoint {path} holds full weights (model/), the run being loaded uses LoRA; "
                            "set lora.enabled to match the checkpoint")
        _load_adapter(model.backbone, path)
    else:
        if not (path / "model").is_dir():
            raise KavaError(f"checkpoint {path} holds a LoRA adapter, the run being loaded trains the full model; "
                            "set lora.enabled to match the checkpoint")
        _load_full_weights(model.backbone, path)
    _load_projection(model, path)


def load_resume_state(path: str | Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG from a step checkpoint; returns its trainer state.

    A `training_state.pt` (the pickle older kava versions wrote) is never opened."""
    path = Path(path)
    if (path / "training_state.pt").exists() and not (path / STATE_JSON).exists():
        raise KavaError(
            f"{path} holds its optimizer state as training_state.pt, a pickle (older kava versions wrote it); kava "
            "does not unpickle checkpoints, since loading a pickle can run any code. Start the run again, or "
            f"evaluate its weights with kava evaluate --checkpoint {path}"
        )
    load_training_state(path, optimizer, scheduler)
    return read_trainer_state(path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", dtype: str | None = None,
                    trust_remote_code: bool = False):
    """(KavaModel in eval mode, tokenizer, SequenceBuilder, config) from a checkpoint folder.

    A checkpoint whose config sets `model.trust_remote_code` loads only with
    `trust_remote_code=True`: whoever hands you a checkpoint cannot grant their code that."""
    path = Path(path)
    cfg = read_checkpoint_config(path)
    if dtype is not None:
        cfg.model.dtype = dtype
    cfg.model.gradient_checkpointing = False
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise KavaError(f"checkpoint {path} needs model.trust_remote_code (its model {cfg.model.name} runs code from "
                        "the hub); load it with --trust-remote-code only if you trust that code")
    backbone, tok = load_backbone(cfg.model, device)
    exported = is_exported(path)
    if not exported:  # (an exported folder is the model, its tokenizer included)
        tok = AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=False)
        tok.padding_side = "left"
    special = add_special_tokens(backbone, tok)
    if cfg.lora.enabled:
        from peft import PeftConfig

        peft_cfg = PeftConfig.from_pretrained(path / "adapter")
        peft_cfg.inference_mode = True
        backbone = peft_model(backbone, peft_cfg)
    model = KavaModel.from_config(backbone, special, cfg)
    if exported:
        _load_projection(model, path)
    else:
        load_trainable_state(model, path)
    model.to(device).eval()
    builder = SequenceBuilder(tok, cfg.prompt, special, drop_last_step=cfg.data.drop_last_step,
                              codi_position=cfg.kava.codi_position)
    return model, tok, builder, cfg
