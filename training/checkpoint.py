"""Checkpoints as safetensors + JSON metadata (nothing that runs code on load), written atomically.

RUN_DIR/checkpoint.safetensors holds the latest state (model, optimizer, RNG, progress) for
resuming; RUN_DIR/best.safetensors the weights with the best validation NLL, for export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from made.core.errors import CheckpointError
from made.io.atomic import atomic_write_with
from training.run_files import BEST, CHECKPOINT  # noqa: F401  (re-exported)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors with JSON-encoded metadata, atomically; a full disk is a clear error."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    try:
        atomic_write_with(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    except SafetensorError as exc:  # safetensors reports a failed write (EFBIG, ENOSPC) as its own
        reason = str(exc).removeprefix("Error while serializing: ")
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
        return tensors, {k: json.loads(v) for k, v in raw.items()}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {exc}") from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
