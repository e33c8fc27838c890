"""What a run directory's stored config lets a new `made train` of the same --out do: resume
where only the resumable settings differ (a longer --max-epochs), or refuse naming the keys
that differ (a changed --hidden names hidden, not the kilobytes of the whole model config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from made.core.errors import CheckpointError

RESUMABLE = {"max_epochs", "patience", "dataset", "rebinarize", "image_shape", "groups"}


def _shown(value: Any, limit: int = 60) -> str:
    """A value of a config as JSON, cut to `limit` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_differences(stored: Any, mine: Any, limit: int = 8) -> list[str]:
    """The leaves where two configs differ, as `key: STORED in the run, MINE asked` (nested keys
    joined by dots, list items by [i]), at most `limit` of them: a changed --hidden names hidden,
    not the kilobytes of the whole model config."""
    out = _differences(stored, mine, "")
    return out if len(out) <= limit else [*out[:limit], f"and {len(out) - limit} more"]


def _flat(config: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """`keys` of a TrainConfig dict with the model's fields beside them (hidden, not model.hidden:
    the names of their flags; no field of TrainConfig has the name of one of the model's)."""
    out = {k: config.get(k) for k in keys if k != "model"}
    model = config.get("model")
    if "model" in keys:
        out.update(model if isinstance(model, dict) else {"model": model})
    return out


def _differences(stored: Any, mine: Any, path: str) -> list[str]:
    if stored == mine:
        return []
    if isinstance(stored, dict) and isinstance(mine, dict):
        keys = sorted(set(stored) | set(mine))
        pairs = [(f"{path}.{k}" if path else str(k), stored.get(k), mine.get(k)) for k in keys]
    elif (
        isinstance(stored, list)
        and isinstance(mine, list)
        and len(stored) == len(mine)
        and any(isinstance(v, dict | list) for v in stored + mine)
    ):
        pairs = [(f"{path}[{i}]", a, b) for i, (a, b) in enumerate(zip(stored, mine, strict=True))]
    else:  # a number, a string, a list of numbers (hidden) is one value
        return [f"{path}: {_shown(stored)} in the run, {_shown(mine)} asked"]
    return [line for key, a, b in pairs for line in _differences(a, b, key)]


def check_resumable(run_dir: Path, stored: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Raise CheckpointError naming the settings where `mine` (a TrainConfig dict) differs from
    the run's `stored` one beyond the resumable ones (turning --rebinarize on or off is not
    resumable); True where a resumable one differs, so that the run's config.json is rewritten."""
    fixed = [
        key
        for key in sorted(set(stored) | set(mine))
        if key not in RESUMABLE or (key == "rebinarize" and bool(stored.get(key)) != bool(mine.get(key)))
    ]
    differences = config_differences(_flat(stored, fixed), _flat(mine, fixed))
    if differences:
        raise CheckpointError(
            f"{run_dir} holds a run with other settings: {'; '.join(differences)}; use another --out to start a new run"
        )
    return any(stored.get(k) != mine.get(k) for k in RESUMABLE)
