"""The models a server holds: the highest version of every name in the store, and a default."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from made.errors import ModelNotFound, ModelStoreError
from made.store import list_names, open_model
from service.engine.engine import Engine
from service.engine.runtime import requested_providers

log = logging.getLogger("made.engine")

PREFERRED_DEFAULT = "binarized-mnist"


class ModelRegistry:
    def __init__(self, store: Path | str, default_model: str | None = None,
                 providers: list[str] | None = None, threads: int | None = None):
        self.store = Path(store)
        self._wanted_default = default_model or None
        self.providers = providers
        self.threads = threads
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self.default_name: str | None = None
        self.ready = False

    def load(self) -> None:
        """Load every model; a broken one is an error naming its file."""
        providers = self.providers or requested_providers()
        names = list_names(self.store)
        if not names:
            raise ModelStoreError(f"model store {self.store} holds no models")
        engines = {name: Engine(open_model(self.store, name), providers, self.threads) for name in names}
        with self._lock:
            self._engines = engines
            self.default_name = self._pick_default(names)
            self.ready = True

    def _pick_default(self, names: list[str]) -> str:
        if self._wanted_default:
            if self._wanted_default not in names:
                raise ModelNotFound(
                    f"default model '{self._wanted_default}' is not in store {self.store} "
                    f"(it has: {', '.join(names)})"
                )
            return self._wanted_default
        return PREFERRED_DEFAULT if PREFERRED_DEFAULT in names else names[0]

    def get(self, name: str | None = None) -> Engine:
        key = name or self.default_name
        engine = self._engines.get(key) if key else None
        if engine is None:
            known = ", ".join(sorted(self._engines)) or "none loaded"
            raise ModelNotFound(f"unknown model '{key}' (models: {known})")
        return engine

    def names(self) -> list[str]:
        return sorted(self._engines)

    def engines(self) -> list[Engine]:
        return [self._engines[n] for n in self.names()]

    def replace(self, engine: Engine) -> None:
        """Swap in a newly loaded version of a model (hot reload); in-flight calls keep the old."""
        with self._lock:
            self._engines = {**self._engines, engine.name: engine}
