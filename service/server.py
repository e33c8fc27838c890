"""`made serve`: the app under uvicorn, with JSON logs and a graceful SIGTERM.

On SIGTERM uvicorn stops accepting connections, lets requests in flight finish (up to
MADE_SHUTDOWN_TIMEOUT seconds), runs the app's shutdown (queued batches finish), and returns;
the process then exits with status 0. MADE_WORKERS > 1 runs that many processes, each loading
every model and batching on its own.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import uvicorn

from made.errors import ModelStoreError
from service.app import create_app
from service.log_config import configure_logging, logging_config
from service.settings import load_settings

log = logging.getLogger("made.service")


def serve(
    store: str | Path | None = None, host: str | None = None, port: int | None = None, workers: int | None = None
) -> None:
    """Arguments left None come from Settings (MADE_STORE, MADE_HOST, MADE_PORT, MADE_WORKERS)."""
    settings = load_settings(store=Path(store) if store is not None else None, workers=workers, host=host, port=port)
    host, port = settings.host, settings.port
    if not settings.store.is_dir():
        raise ModelStoreError(f"model store {settings.store} does not exist (pass --store or set MADE_STORE)")
    configure_logging(settings.log_level)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": logging_config(settings.log_level),
        "access_log": False,  # the request middleware logs each request, with its request id
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "server_header": False,
    }
    # uvicorn re-raises the SIGTERM it handled once it has shut down; a no-op handler turns that
    # into a normal return, so a graceful stop exits 0 rather than "killed by signal 15".
    signal.signal(signal.SIGTERM, _stopped)
    log.info("serving", extra={"store": str(settings.store), "host": host, "port": port, "workers": settings.workers})
    if settings.workers > 1:
        os.environ["MADE_STORE"] = str(settings.store.resolve())  # workers read the environment
        uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


def _stopped(signum: int, frame: object) -> None:
    log.info("stopped by signal %d", signum)
