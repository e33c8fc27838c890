"""`made serve`: the app under uvicorn, with JSON logs and a graceful SIGTERM.

On SIGTERM uvicorn stops accepting connections, lets requests in flight finish (up to
MADE_SHUTDOWN_TIMEOUT seconds), then cancels what is left: a request still queued or running is
answered 503 with Retry-After (service.http.middleware) and its engine call stops at its next chunk
(service.engine.cancel); the app's shutdown runs (waiting at most CLOSE_GRACE_S, service.http.app,
for a merged engine call) and the process exits with status 0, at most EXIT_GRACE_S after that
(an engine thread that has not stopped by then is left to os._exit).
MADE_WORKERS > 1 runs that many processes, each loading every model and batching on its own.

Slow clients: uvicorn holds at most MADE_MAX_CONNECTIONS connections (503 past it), closes an
idle keep-alive connection after MADE_KEEP_ALIVE_TIMEOUT, and this server closes a connection
that has not sent a whole request head within MADE_READ_TIMEOUT (uvicorn has no such timeout:
a client trickling header bytes would hold its connection for ever); a body that does not
arrive within MADE_READ_TIMEOUT is answered 408 by service.http.middleware.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from made.core.errors import ConfigError, ModelStoreError
from made.store.versions import store_problem
from service.core.log_config import configure_logging, logging_config
from service.http.app import create_app
from service.settings import load_settings

log = logging.getLogger("made.service")


def serve(
    store: str | Path | None = None, host: str | None = None, port: int | None = None, workers: int | None = None
) -> None:
    """Arguments left None come from Settings (MADE_STORE, MADE_HOST, MADE_PORT, MADE_WORKERS)."""
    settings = load_settings(store=store, workers=workers, host=host, port=port)
    host, port = settings.host, settings.port
    problem = store_problem(settings.store)
    if problem:
        raise ModelStoreError(f"model store {settings.store} {problem} (pass --store or set MADE_STORE)")
    configure_logging(settings.log_level)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": logging_config(settings.log_level),
        "access_log": False,  # the request middleware logs each request, with its request id
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "server_header": False,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
    # uvicorn re-raises the SIGTERM it handled once it has shut down; a no-op handler turns that
    # into a normal return, so a graceful stop exits 0 rather than "killed by signal 15".
    signal.signal(signal.SIGTERM, _stopped)
    log.info("serving", extra={"store": str(settings.store), "host": host, "port": port, "workers": settings.workers})
    if settings.workers > 1:
        os.environ["MADE_STORE"] = str(settings.store.resolve())  # workers read the environment
        uvicorn.run("service.http.app:create_app", factory=True, workers=settings.workers, **options)
    else:
        config = uvicorn.Config(create_app(settings), **options)
        server = _Server(config, header_timeout=settings.read_timeout)
        try:
            server.run()
        except SystemExit:
            if server.started:
                raise
            # uvicorn logged why (address in use, an unknown host) and exits 3: one line, status 2
            raise ConfigError(f"cannot listen on {host}:{port} (uvicorn.error's ERROR line says why)") from None
    _exit_when_stuck(EXIT_GRACE_S)


# Seconds engine threads get to reach their next checkpoint after the server stopped.
EXIT_GRACE_S = 3.0


class _Server(uvicorn.Server):
    """uvicorn's server, closing connections that trickle a request head for longer than
    `header_timeout` seconds (checked once a second, on uvicorn's own tick)."""

    def __init__(self, config: uvicorn.Config, header_timeout: float) -> None:
        super().__init__(config)
        self.header_timeout = header_timeout
        self._waiting: dict[tuple[int, int], float] = {}  # (connection, its last cycle) -> since

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:
            self._close_slow_heads()
        return await super().on_tick(counter)

    def _close_slow_heads(self) -> None:
        """A connection with no request in progress (none yet, or its last one answered) is idle
        or reading a request head; the keep-alive timeout closes idle ones, so one still there
        after header_timeout is sending its head too slowly."""
        now = time.monotonic()
        waiting: dict[tuple[int, int], float] = {}
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                continue  # a request is being served (its body has MADE_READ_TIMEOUT in the middleware)
            key = (id(conn), id(cycle))
            since = waiting[key] = self._waiting.get(key, now)
            if now - since > self.header_timeout:
                transport = getattr(conn, "transport", None)
                if transport is not None and not transport.is_closing():
                    log.info("closed a connection that sent no whole request in %g s", self.header_timeout)
                    transport.close()
        self._waiting = waiting


def _exit_when_stuck(grace: float) -> None:
    """Wait up to `grace` seconds for the other threads (engine calls stopping at their next
    checkpoint); if one still runs, exit now rather than outlive the server's last log line."""
    deadline = time.monotonic() + grace
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        log.warning("exiting with %d engine thread(s) still running: %s", len(stuck), ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _stopped(signum: int, frame: object) -> None:
    log.info("stopped by signal %d", signum)
