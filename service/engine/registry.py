"""The models a server holds: the highest version of every name in the store, and a default.

`load()` is the start: every name's newest version that loads is served; a broken version is
refused with its reason (logged) and the next lower one tried, and a name none of whose versions
loads keeps the server from being ready, with the reasons. `reload()` is the lenient refresh of
a running server: each name's newest version that loads is swapped in, a broken one is refused
with its reason (and the version served so far stays), and nothing already served is dropped;
a store it cannot read (gone, a file, unlistable) changes nothing and is the report's error.
New engines are built before the swap, and the swap replaces the whole dict at once, so a
request that already holds an Engine keeps using it. Whatever a version raises while it loads
(a bad file, onnxruntime, MemoryError, a bug) refuses that version only: it becomes a
ModelStoreError with a one-sentence reason (load_failure).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from made.core.errors import MadeError, ModelNotFound, ModelStoreError
from made.store.versions import (
    StoredModel,
    check_store,
    list_names,
    list_versions,
    open_model,
    store_problem,
    version_key,
)
from service.engine.bit_model import BitModel
from service.engine.contract import ModelEngine
from service.engine.engine import Engine
from service.engine.runtime import requested_providers
from service.engine.table_engine import TableEngine
from service.engine.table_model import TableModel

log = logging.getLogger("made.engine")

PREFERRED_DEFAULT = "binarized-mnist"

ReloadStatus = Literal["loaded", "unchanged", "refused", "kept"]
# (file name, mtime ns, size) of every file in a version directory: a cheap change detector.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did with one version of one model."""

    name: str
    version: str
    status: ReloadStatus  # loaded: now served; unchanged: already served; refused: broken;
    # kept: still served though the store no longer offers it (a reload never drops a model)
    reason: str | None = None
    previous: str | None = None  # loaded: the version it replaced
    cached: bool = False  # refused: refused before for these same files, so not tried again


@dataclass
class ReloadReport:
    results: list[ReloadResult] = field(default_factory=list)
    served: dict[str, str] = field(default_factory=dict)  # name -> version, after the reload
    default: str | None = None
    ready: bool = False
    error: str | None = None  # not ready: why

    @property
    def changed(self) -> bool:
        return any(r.status == "loaded" for r in self.results)


def load_failure(exc: BaseException) -> str:
    """Why a version failed to load, as one non-empty sentence: a MadeError's own message; for
    anything else its type and message ("MemoryError" alone says it ran out of memory)."""
    text = " ".join(str(exc).split())  # onnxruntime's messages span lines
    if len(text) > 1000:
        text = text[:997] + "..."
    if isinstance(exc, MadeError) and text:
        return text
    if isinstance(exc, MemoryError):
        return f"ran out of memory while loading (MemoryError{': ' + text if text else ''})"
    kind = type(exc).__name__
    return f"{kind} while loading: {text}" if text else f"{kind} while loading (no message)"


def fingerprint(version_dir: Path) -> Fingerprint:
    try:
        entries = sorted((p.name, p.stat()) for p in version_dir.iterdir() if p.is_file())
    except OSError:
        return ()
    return tuple((name, st.st_mtime_ns, st.st_size) for name, st in entries)


ModelKind = Literal["bits", "table"]


def model_kind(model: StoredModel) -> ModelKind:
    """A stored model's kind: a model of a table's columns (its manifest lists them) or of bits."""
    return "table" if model.is_table else "bits"


def _bit_model(model: StoredModel, providers: list[str], threads: int | None) -> ModelEngine:
    return BitModel(Engine(model, providers, threads))


def _table_model(model: StoredModel, providers: list[str], threads: int | None) -> ModelEngine:
    # One intra-op thread whatever `threads` (the engine calls run at once, Settings.threads):
    # on more, onnxruntime splits a table network's products between its threads by the batch's
    # size, so a row's float32 outputs moved with the rows beside it (by 1e-7 of log p on the
    # shipped diamonds model, in batches of 8 and more on 2 threads), which TableEngine.params
    # promises they do not; a model of bits' graph gives the same sums on any number.
    return TableModel(TableEngine(model, providers, 1))


# The one place a kind picks its engine: everything after serves the contract.
_ENGINES: dict[ModelKind, Callable[[StoredModel, list[str], int | None], ModelEngine]] = {
    "bits": _bit_model,
    "table": _table_model,
}


def build_engine(model: StoredModel, providers: list[str] | None = None, threads: int | None = None) -> ModelEngine:
    """The engine of a stored version, under the engine contract (service.engine.contract)."""
    return _ENGINES[model_kind(model)](model, providers or requested_providers(), threads)


class ModelRegistry:
    def __init__(
        self,
        store: Path | str,
        default_model: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        self.store = Path(store)
        self._wanted_default = default_model or None
        self.providers = providers
        self.threads = threads
        self._engines: dict[str, ModelEngine] = {}
        # The files each served version was loaded from: a rewrite in place is a change too.
        self._fingerprints: dict[str, Fingerprint] = {}
        # Refused versions and the files they were refused for: not retried until those change
        # (a poller would otherwise rebuild and re-log the same broken version every interval).
        self._refused: dict[tuple[str, str], tuple[Fingerprint, str]] = {}
        self._last_error: str | None = None
        self._lock = threading.Lock()  # one load or reload at a time
        self.default_name: str | None = None
        self.ready = False

    def _engine(self, name: str, version: str | None = None) -> ModelEngine:
        """Open and build one version; whatever fails is a ModelStoreError with its reason."""
        try:
            return build_engine(open_model(self.store, name, version), self.providers, self.threads)
        except ModelStoreError:
            raise
        except Exception as exc:  # MemoryError, onnxruntime's, a bug: this version only
            if not isinstance(exc, MadeError | MemoryError):  # a bug: keep its traceback in the log
                log.error("loading model %s version %s raised", name, version, exc_info=True)
            raise ModelStoreError(load_failure(exc)) from None

    def _try(self, name: str, version: str, stamp: Fingerprint) -> ModelEngine | str:
        """The engine of a version, or the reason it is refused (logged once per set of files:
        a refused version is not retried until its files change)."""
        refused = self._refused.get((name, version))
        if refused is not None and refused[0] == stamp:
            return refused[1]
        try:
            engine = self._engine(name, version)
        except Exception as exc:  # _engine raises ModelStoreError; anything else is a bug here
            reason = load_failure(exc)
            self._refused[(name, version)] = (stamp, reason)
            log.error(
                "refused model %s version %s: %s",
                name,
                version,
                reason,
                extra={"model": name, "version": version, "reason": reason},
            )
            return reason
        self._refused.pop((name, version), None)
        return engine

    def load(self) -> None:
        """Load every model; a name with no version that loads is a ModelStoreError naming the
        reasons (never another exception: the caller reports it and stays not ready)."""
        with self._lock:
            self._guarded(self._load)

    def _guarded(self, load: Callable[[], None]) -> None:
        try:
            load()
        except MadeError:
            raise
        except OSError as exc:  # the store itself unreadable
            raise ModelStoreError(f"cannot read model store {self.store}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise ModelStoreError(load_failure(exc)) from None

    def _load(self) -> None:
        check_store(self.store)
        names = list_names(self.store)
        if not names:
            raise ModelStoreError(f"model store {self.store} holds no models")
        engines: dict[str, ModelEngine] = {}
        stamps: dict[str, Fingerprint] = {}
        failed: list[str] = []
        for name in names:
            reasons = []
            for version in reversed(list_versions(self.store, name)):
                stamp = fingerprint(self.store / name / version)
                found = self._try(name, version, stamp)
                if isinstance(found, str):
                    reasons.append(f"version {version}: {found}")
                    continue
                engines[name], stamps[name] = found, stamp
                break
            else:
                failed.append(
                    f"no version of model '{name}' loads ({'; '.join(reasons)})"
                    if reasons
                    else f"model '{name}' in store {self.store} has no versions"
                )
        if failed:
            more = f" (and {len(failed) - 1} more model{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
            raise ModelStoreError(failed[0] + more)
        default = self._pick_default(names)
        self._fingerprints = stamps
        self._engines = engines
        self.default_name = default
        self.ready = True

    def _pick_default(self, names: list[str]) -> str:
        if self._wanted_default:
            if self._wanted_default not in names:
                raise ModelNotFound(
                    f"default model '{self._wanted_default}' (MADE_DEFAULT_MODEL) is not in store {self.store} "
                    f"(it has: {', '.join(names)})"
                )
            return self._wanted_default
        return PREFERRED_DEFAULT if PREFERRED_DEFAULT in names else names[0]

    def reload(self) -> ReloadReport:
        """Serve each model's newest version that loads; refuse broken ones, keep the rest.

        Before the first successful load this retries the strict load() instead.
        """
        with self._lock:
            if not self.ready:
                return self._retry_load()
            current = self._engines
            engines, stamps = dict(current), dict(self._fingerprints)  # committed together below
            results: list[ReloadResult] = []
            try:
                problem = store_problem(self.store)  # gone (an unmounted volume): not "every model left"
                if problem:
                    return self._store_error(f"model store {self.store} {problem}")
                names = list_names(self.store)
                for name in names:
                    results.extend(self._refresh(name, engines, stamps))
            except OSError as exc:  # the store itself is unreadable: change nothing
                return self._store_error(f"cannot read model store {self.store}: {exc.strerror or exc}")
            self._last_error = None
            for name in sorted(set(current) - set(names)):
                results.append(
                    ReloadResult(
                        name,
                        current[name].version,
                        "kept",
                        f"model '{name}' is no longer in store {self.store}; still served until the server restarts",
                    )
                )
            if any(r.status == "loaded" for r in results):
                self._engines = engines  # one reference swap: readers see the old or the new dict
                self._fingerprints = stamps
            return self._report(results)

    def _store_error(self, error: str) -> ReloadReport:
        """A reload of a store it cannot read: nothing changes, the models loaded keep serving."""
        if error != self._last_error:  # a poller retries every interval: log each change once
            log.error("reload failed: %s; the models loaded are still served", error, extra={"store": str(self.store)})
        self._last_error = error
        report = self._report([])
        report.error = error
        return report

    def _refresh(
        self, name: str, engines: dict[str, ModelEngine], stamps: dict[str, Fingerprint]
    ) -> list[ReloadResult]:
        """Try the versions of `name` from the newest down to the one served (or to the oldest,
        when the served one has left the store); the first that loads goes into `engines`."""
        served = engines.get(name)
        results: list[ReloadResult] = []
        for version in reversed(list_versions(self.store, name)):
            path = self.store / name / version
            stamp = fingerprint(path)
            if served is not None and version == served.version and (stamp == stamps.get(name)):
                results.append(ReloadResult(name, version, "unchanged"))
                return results
            if (
                served is not None
                and version_key(version) < version_key(served.version)
                and ((self.store / name / served.version).is_dir())
            ):
                break  # never roll back past a served version that is still in the store
            cached = self._refused.get((name, version))
            found = self._try(name, version, stamp)
            if isinstance(found, str):
                was_cached = cached is not None and cached[0] == stamp
                results.append(ReloadResult(name, version, "refused", found, cached=was_cached))
                continue
            engine = found
            engines[name] = engine
            stamps[name] = stamp
            previous = served.version if served is not None else None
            log.info(
                "reloaded model %s: version %s replaces %s",
                name,
                version,
                previous or "none",
                extra={"model": name, "version": version, "previous": previous},
            )
            results.append(ReloadResult(name, version, "loaded", previous=previous))
            return results
        if served is not None:
            results.append(
                ReloadResult(
                    name,
                    served.version,
                    "kept",
                    f"no version of '{name}' in the store loads; version {served.version} is still served",
                )
            )
        return results

    def _retry_load(self) -> ReloadReport:
        try:
            self._guarded(self._load)
        except MadeError as exc:
            error = f"models failed to load: {exc}"
            if error != self._last_error:  # a poller retries every interval: log each change once
                log.error("%s", error, extra={"store": str(self.store)})
            self._last_error = error
            return ReloadReport(error=error)
        self._last_error = None
        log.info("loaded models %s", ", ".join(self._engines), extra={"store": str(self.store)})
        return self._report([ReloadResult(n, e.version, "loaded") for n, e in self._engines.items()])

    def _report(self, results: list[ReloadResult]) -> ReloadReport:
        return ReloadReport(
            results, {n: e.version for n, e in sorted(self._engines.items())}, self.default_name, self.ready
        )

    def model(self, name: str | None = None) -> ModelEngine:
        """The served version of `name` (the default model when None), under the engine contract."""
        engines = self._engines  # one read: a concurrent swap cannot split this lookup
        key = name or self.default_name
        engine = engines.get(key) if key else None
        if engine is None:
            known = ", ".join(sorted(engines)) or "none loaded"
            raise ModelNotFound(f"unknown model '{key}' (models: {known})")
        return engine

    def get(self, name: str | None = None) -> Engine | TableEngine:
        """The loaded engine of `name`'s served version (tools and tests that call it directly)."""
        return self.model(name).engine

    def is_served(self, engine: Engine | TableEngine) -> bool:
        """Whether `engine` is the version served now (not one a reload has replaced)."""
        served = self._engines.get(engine.name)
        return served is not None and served.engine is engine

    def names(self) -> list[str]:
        return sorted(self._engines)

    def models(self) -> list[ModelEngine]:
        engines = self._engines
        return [engines[n] for n in sorted(engines)]

    def engines(self) -> list[Engine | TableEngine]:
        return [m.engine for m in self.models()]
