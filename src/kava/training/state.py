"""Optimizer, scheduler and RNG state for `--resume`, stored without pickle (docs/algorithm.md §9).

`torch.save` / `torch.load(weights_only=False)` would unpickle the file, and a pickle can
run any code while it loads: a checkpoint someone hands you could run a shell command on
`kava train --resume`. Here nothing is unpickled:

    training_state.safetensors   every tensor: AdamW's moments and step counts, the torch
                                 (and CUDA) RNG states, named t0, t1, ...
    training_state.json          the structure around them: param groups, the scheduler's
                                 state, fp16's loss scale (`train.mixed_precision: fp16`), the
                                 Python and NumPy RNG states; a tensor appears as
                                 {"__tensor__": "t3"}, a tuple as {"__tuple__": [...]}, a
                                 dict as {"__dict__": [[key, value], ...]} (keys keep their type),
                                 a NumPy array as {"__ndarray__": [...], "dtype": "uint32"}

Floats go through JSON as `repr` (exact) and tensors keep their bytes, so a resumed run
continues bit for bit. A file that is missing, truncated or does not fit the optimizer
being resumed is a `KavaError` naming the file. A run saved with more CUDA devices than the
resumed one sees (a requeued job with one visible GPU) restores the states of the devices
there are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kava.errors import KavaError

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-ready data; its tensors are moved into `tensors`."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in the training state")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        return tensors[obj["__tensor__"]]
    if set(obj) == {"__ndarray__", "dtype"}:
        return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if set(obj) == {"__dict__"}:
        return {decode(k, tensors): decode(v, tensors) for k, v in obj["__dict__"]}
    if set(obj) == {"__tuple__"}:
        return tuple(decode(v, tensors) for v in obj["__tuple__"])
    raise ValueError(f"unknown entry with keys {sorted(obj)[:3]}")


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_cuda_rng_state(states: list[torch.Tensor]) -> None:
    """Each visible device's state from the saved list; a device the saving run had and this one
    does not (fewer visible GPUs) is skipped, a device it did not have keeps its own."""
    for device, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, device)


def _scaler(optimizer):
    """fp16's GradScaler (accelerate's AcceleratedOptimizer holds it), or None."""
    scaler = getattr(optimizer, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def save_training_state(folder: str | Path, optimizer, scheduler) -> None:
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    scaler = _scaler(optimizer)
    blob = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
    }
    encoded = encode(blob, tensors)
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(encoded))


def _check_optimizer_fits(state: dict, optimizer, where: str) -> None:
    """Each saved moment has its parameter's shape (torch checks only the group sizes)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = sum(len(g["params"]) for g in state["param_groups"])
    if saved != len(params):
        raise KavaError(f"{where} holds optimizer state for {saved} parameters, the model being resumed has "
                        f"{len(params)}: it belongs to another model or config")
    for index, entry in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise KavaError(f"{where}: optimizer state for parameter {index!r}, which does not exist")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise KavaError(f"{where}: optimizer {key} of parameter {index} has shape {tuple(value.shape)}, "
                                f"the parameter {tuple(params[index].shape)}: it belongs to another model or config")


def load_training_state(folder: str | Path, optimizer, scheduler) -> None:
    """Restore optimizer, scheduler and RNG states written by `save_training_state`."""
    folder = Path(folder)
    for name in (STATE_TENSORS, STATE_JSON):
        if not (folder / name).is_file():
            raise KavaError(f"checkpoint {folder} has no {name}, so it cannot be resumed; resume from another "
                            "checkpoint-<step> folder or start the run again")
    where = folder / STATE_JSON
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise KavaError(f"{folder / STATE_TENSORS} is corrupt or truncated ({_reason(err)}); "
                        "resume from another checkpoint") from None
    try:
        blob = decode(json.loads(where.read_text(encoding="utf-8")), tensors)
        opt_state, sched_state, rng = blob["optimizer"], blob["scheduler"], blob["rng"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise KavaError(f"{where} is corrupt ({_reason(err)}); resume from another checkpoint") from None
    _check_optimizer_fits(opt_state, optimizer, str(where))
    try:
        optimizer.load_state_dict(opt_state)
        if scheduler is not None and sched_state is not None:
            scheduler.load_state_dict(sched_state)
        scaler = _scaler(optimizer)
        if scaler is not None and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            _set_cuda_rng_state(rng["cuda"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise KavaError(f"{where} does not fit this run ({_reason(err)}); resume from another checkpoint") from None


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
