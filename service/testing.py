"""The service for tests, benchmarks and notebooks: in-process, or as a real `made serve`.

    async with in_process(Settings(store=store)) as made:
        await made.wait_ready()
        print((await made.sample(4, seed=0)).samples)

`in_process` runs the app's startup and shutdown (model loading, batch draining) around the
block and talks to it through httpx.ASGITransport, which re-raises any unhandled server error
(a 500 fails loudly). `made_serve` starts the real command on a free loopback port and waits
until it is ready.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from service.client import AsyncMadeClient, MadeAPIError
from service.engine import ModelRegistry
from service.http.app import create_app
from service.settings import Settings


def providers_under_test() -> list[str]:
    """The onnxruntime providers the tests' engines run on: MADE_TEST_PROVIDERS (e.g.
    CUDAExecutionProvider,CPUExecutionProvider on a GPU machine with onnxruntime-gpu), else the
    CPU. Engines built with it check that the first one really runs (onnxruntime falls back to
    the CPU silently)."""
    return os.environ.get("MADE_TEST_PROVIDERS", "CPUExecutionProvider").split(",")


class InProcessClient(AsyncMadeClient):
    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz is 200 (models load in the background at startup)."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    await self.readyz()
                    return
                except MadeAPIError as exc:
                    if exc.status_code != 503:
                        raise
                await anyio.sleep(0.01)


@asynccontextmanager
async def in_process(
    settings: Settings,
    registry: ModelRegistry | None = None,
    *,
    api_key: str | None = None,
    lifespan: bool = True,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[InProcessClient]:
    """A client of a fresh app; `registry` may be a loaded one shared between apps."""
    app = create_app(settings, registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://made.test", headers=headers) as http:
        client = InProcessClient(http=http, api_key=api_key)
        if lifespan:
            async with app.router.lifespan_context(app):
                yield client
        else:  # startup never runs: the models never load
            yield client


# --- a real `made serve` -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def made_command() -> list[str]:
    """The `made` console script beside this Python, else `python -m made.cli`."""
    script = Path(sys.executable).with_name("made")
    return [str(script)] if script.exists() else [sys.executable, "-m", "made.cli"]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    log_path: Path  # its stdout and stderr

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def made_serve(
    store: Path,
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
    address_space: int | None = None,
) -> Iterator[ServerProcess]:
    """`made serve --store STORE` on a free loopback port (or on MADE_PORT when `env` sets it,
    with no --port), ready; SIGTERMed on exit if alive. `address_space`: its limit in bytes
    (RLIMIT_AS, as `prlimit --as`), so that a runaway allocation fails in the server instead of
    taking the machine."""
    from_env = env is not None and "MADE_PORT" in env
    port = int(env["MADE_PORT"]) if env is not None and from_env else free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = log_path or Path(tmp) / "serve.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*made_command(), "serve", "--store", str(store), *([] if from_env else ["--port", str(port)])],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=log,
                preexec_fn=None if address_space is None else functools.partial(_limit_address_space, address_space),
            )
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
        try:
            wait_until_ready(server, ready_timeout)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _limit_address_space(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def wait_until_ready(server: ServerProcess, timeout: float) -> None:
    """Until the server's /readyz is 200; RuntimeError with its log's tail if it exits or is
    not ready within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"made serve exited with status {server.proc.returncode}:\n" + server.logs()[-2000:])
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"made serve was not ready after {timeout:g} s:\n" + server.logs()[-2000:])
