"""Every setting of the service, read from MADE_* environment variables in one place.

`create_app(Settings(...))` takes an instance, so tests and `made serve` override fields directly
instead of patching the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from made.core.errors import ConfigError

MIB = 1 << 20

# The names MADE_PROVIDERS takes besides onnxruntime's own (...ExecutionProvider).
PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MADE_", extra="ignore", frozen=True)

    # Where the models live: STORE/NAME/VERSION/{manifest.json, weights.safetensors, *.onnx[,
    # reference.json]}.
    store: Path = Path("model_store")
    # Served when a request names no model; None: "binarized-mnist" if present, else the first.
    default_model: str | None = None
    # When set, every endpoint but /healthz, /readyz and /metrics needs
    # `Authorization: Bearer <key>`.
    api_key: SecretStr | None = None
    # Admin endpoints (POST /admin/reload) answer only with `Authorization: Bearer <key>`: this
    # key, or api_key when only that is set; with neither they are off (404). Store polling
    # (reload_interval) needs no endpoint.
    admin_key: SecretStr | None = None
    # Rows per request (/logprob, /conditionals, /impute): bounds one request's work and memory.
    max_rows: Annotated[int, Field(ge=1)] = 10_000
    # Samples per request: n of /sample, rows x n_samples of /impute.
    max_samples: Annotated[int, Field(ge=1)] = 10_000
    # Importance draws (particles) per request and mask: rows with missing values x n_importance
    # (/logprob, /impute), noisy rows x n_particles (/denoise), the work that grows fastest with a
    # request's size.
    max_draws: Annotated[int, Field(ge=1)] = 200_000
    # Larger bodies get 413 before they are parsed.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * MIB
    # Values per row a request may send (columns of a CSV body, entries of a row of x, keys of
    # a record): bodies are counted against it (and MADE_MAX_ROWS) before anything is built.
    max_width: Annotated[int, Field(ge=1)] = 16_384
    # One request's work, in values the network computes (service.core.budget: rows x masks x D for
    # a pass, draws x D for sampling, weighted by what each costs); refused past it with a 422
    # before any array is made. The default keeps any admitted request within about a minute
    # of one core here (docs/operations.md).
    max_work: Annotated[int, Field(ge=1)] = 250_000_000
    # onnxruntime providers by preference, e.g. "cuda,cpu"; empty: CUDA if available, else CPU.
    providers: Annotated[list[str], NoDecode] = []
    # How long the first queued request waits for others to share its engine call (Triton's
    # max_queue_delay). 0 still merges whatever queued up while the previous call ran.
    batch_delay_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 2.0
    # Most rows in one engine call: merged requests up to it, larger requests split into pieces
    # of it (the stepping sampler is fastest on batches that fit the CPU caches).
    max_batch: Annotated[int, Field(ge=1)] = 512
    # Requests one endpoint may hold at once (waiting, batching or running); past it the
    # endpoint answers 503 with Retry-After at once instead of queueing without bound.
    max_queue: Annotated[int, Field(ge=1)] = 256
    # Seconds a request may take before it is answered 504 (the engine call finishes unobserved).
    request_timeout: Annotated[float, Field(gt=0.0)] = 60.0
    # Seconds SIGTERM waits for in-flight requests before they are cancelled.
    shutdown_timeout: Annotated[float, Field(ge=0.0)] = 30.0
    # Seconds a client may take to send a request's body once its headers are in; past it the
    # request is answered 408 and the connection closed (slow clients hold no place forever).
    read_timeout: Annotated[float, Field(gt=0.0)] = 30.0
    # Connections (and requests in progress) the server holds at once; past it uvicorn answers
    # 503 at once (its limit_concurrency).
    max_connections: Annotated[int, Field(ge=1)] = 1024
    # Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive).
    keep_alive_timeout: Annotated[float, Field(gt=0.0)] = 5.0
    # Text cells of the CSV the service answers that begin with =, +, -, @, a tab or a carriage
    # return (and are not numbers) get a leading ' so that a spreadsheet does not run them as
    # formulas (OWASP's CSV injection advice; `made score` has --no-escape-formulas); off only
    # for trusted pipelines.
    csv_escape_formulas: bool = True
    # Seconds between looks at the store for new versions (hot reload); 0: only on
    # POST /admin/reload. A look lists directories and stats files: cheap at any interval >= 1.
    reload_interval: Annotated[float, Field(ge=0.0)] = 0.0
    log_level: str = "INFO"
    # FastAPI's native OpenTelemetry instrumentation (traces, HTTP metrics and logs to the
    # providers an OpenTelemetry SDK sets up, e.g. FASTAPI_OTEL_AUTO_CONFIGURE=true with OTEL_*
    # variables). Off by default: the service has its own metrics (/metrics) and JSON access
    # log, and FastAPI's look for configured providers on every request cost 7% of a one-row
    # /logprob (docs/load.md).
    opentelemetry: bool = False
    # The playground page (GET /ui/, and / redirects to it): static files from the package that
    # use the public API. False (MADE_UI=0) leaves its routes unmounted, for locked-down servers.
    ui: bool = True
    # Uvicorn worker processes (each loads every model and batches on its own). At most 1024,
    # like the thread counts: an unbounded value forked until the machine ran out of memory.
    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    # Threads running engine calls, and onnxruntime's intra-op threads per session of a model of
    # bits (a table model's runs on one: service.engine.registry); 0: automatic.
    # At most MAX_THREADS (made.cli.parser's bound too): 100000 left the server unready after 30 s,
    # holding 2 GB and growing.
    threads: Annotated[int, Field(ge=0, le=1024)] = 0
    # Threads numpy's BLAS may use for one matrix product (the sampler's and the particle
    # filters' steps), set for the whole process when the app is built; 0: the library's own
    # default, a thread per core. The service runs `threads` engine calls at once, so 1 keeps
    # concurrent calls from oversubscribing the cores: two concurrent bit imputations took 8.8 s
    # with OpenBLAS's 2 threads against 4.8 s with 1, on 2 cores, where one alone took 3.6 s
    # against 4.0 s (bench/blas_threads.py, docs/performance.md).
    blas_threads: Annotated[int, Field(ge=0, le=1024)] = 1
    # Where `made serve` listens (its --host and --port win); 0.0.0.0 to be reached from elsewhere.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # Where `made train/evaluate --dataset NAME` (a bare name, not a path) finds NAME.npz, e.g.
    # ../shared/data; unset: data sets are named by their paths.
    data_dir: Path | None = None

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        """An unknown name is refused here, at start-up, and not only where a session is made
        (a worker process of MADE_WORKERS > 1 died on it, over and over)."""
        for item in value:
            if item.lower() not in PROVIDER_ALIASES and not item.endswith("ExecutionProvider"):
                known = ", ".join(PROVIDER_ALIASES)
                raise ValueError(f"unknown provider {item!r} (known: {known}, or onnxruntime's ...ExecutionProvider)")
        return value

    @field_validator("store", "host", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object, info: ValidationInfo) -> object:
        """MADE_STORE= and MADE_HOST= (compose's ${VAR:-}) mean unset, as for the keys: not the
        current directory as the store, nor "" as the host (every interface)."""
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[str(info.field_name)].default
        return value

    @field_validator("default_model", "api_key", "admin_key", "data_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A key a client can send: printable ASCII, as an HTTP header carries it (a key with an
        accented letter could never match, and browsers refuse to send it at all). A space inside
        the key is sendable and matched (`Bearer two words`, service.http.auth), as it always was;
        one at either end never matched (the header's value is stripped), so it is refused."""
        if value is None:
            return value
        key = value.get_secret_value()
        if any(not " " <= c <= "~" for c in key) or key != key.strip():
            raise ValueError(
                "must be printable ASCII with no space at either end, as an Authorization header carries it"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and overrides (a command's options: `port` is `--port`); a
    bad value is one line naming where it came from, not a traceback."""
    given = {k: v for k, v in overrides.items() if v is not None}
    misspelt = _misspelt_variable(os.environ)
    if misspelt:
        raise ConfigError(misspelt)
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "_".join(str(p) for p in err["loc"])
        name = f"--{field.replace('_', '-')}" if field in given else f"MADE_{field.upper()}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if field in SECRETS:  # a key is not repeated, not even in an error
            raise ConfigError(f"{name}: {msg}") from None
        raise ConfigError(f"{name}: {msg} (got {err.get('input')!r})") from None


SECRETS = ("api_key", "admin_key")


# MADE_* names the repository's scripts, tests and compose files read, which are not settings.
_OTHER_VARIABLES = {
    "MADE_BIN",
    "MADE_CHECK_BASE",
    "MADE_CHROMIUM",
    "MADE_DEPLOY_FRESH",
    "MADE_IMAGE",
    "MADE_LB_PORT",
    "MADE_STORE_DIR",
    "MADE_TEST_PROVIDERS",
}


# The value of a Kubernetes service link (or a Docker link) {SERVICE}_PORT / _PORT_<n>_TCP: a
# Service named made-ui or made-db in the namespace sets MADE_UI_PORT=tcp://10.0.0.7:80, a name
# close to MADE_PORT that is no typo.
_SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


def _misspelt_variable(environ: Mapping[str, str]) -> str | None:
    """A MADE_* variable that is no setting but close to one (MADE_MAX_ROW for MADE_MAX_ROWS) is
    a typo that would otherwise leave its setting at the default without a word. Other unknown
    names pass (Kubernetes' service links, a user's own). The value is not repeated: it may be
    a key."""
    settings = {f"MADE_{name.upper()}" for name in Settings.model_fields}
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith("MADE_") or name in settings or name in _OTHER_VARIABLES:
            continue
        if _SERVICE_LINK.match(environ[variable]):  # a Service `made-ui`'s MADE_UI_PORT=tcp://...
            continue
        close = difflib.get_close_matches(name, settings, n=1, cutoff=0.85)
        if close:
            return f"{variable} is not a setting; did you mean {close[0]}? (docs/api.md lists the settings)"
    return None


def data_directory(checkout: Path) -> Path:
    """Where benches and scripts find the data sets: MADE_DATA_DIR (Settings.data_dir), else
    ../shared/data beside the checkout."""
    return load_settings().data_dir or checkout.parent / "shared" / "data"
