"""One real `made serve` process on a loopback port: every endpoint through the typed client,
JSON logs with request ids, and a SIGTERM that lets the request in flight finish."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import json_lines, metric

from service.client import MadeAPIError, MadeClient
from service.testing import free_port, made_serve


@pytest.mark.slow
def test_made_serve_answers_every_endpoint_and_stops_gracefully_on_sigterm(tiny_store: Path, tmp_path: Path) -> None:
    # A long batch delay keeps a /sample request in flight long enough to SIGTERM during it.
    env = {"MADE_BATCH_DELAY_MS": "400", "MADE_API_KEY": "k3y", "MADE_DEFAULT_MODEL": "tiny10", "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "serve.log"
    with made_serve(tiny_store, env=env, log_path=log_path) as server:
        base, proc = server.url, server.proc
        with MadeClient(base, api_key="k3y", timeout=30) as made:
            assert made.healthz()
            assert made.readyz().default == "tiny10"
            assert [m.name for m in made.models().models] == ["tiny", "tiny1", "tiny10"]
            assert made.model("tiny")["dims"] == 8
            x = [[0, 1, 1, 0, 1, 0, 0, 1, 1, 0]]
            lp = made.logprob(x)
            assert lp.model == "tiny10" and lp.exact == [True] and lp.logprob[0] < 0
            assert len(made.conditionals(x, mask=2).probs[0]) == 10
            assert made.sample(5, seed=3, packed=True).array().shape == (5, 10)
            imputed = made.impute([[0, None, 1, 0, 1, 0, 0, 1, 1, None]], n_samples=3, seed=0)
            assert np.asarray(imputed.samples).shape == (1, 3, 10)
            assert 'made_requests_total{endpoint="/sample",model="tiny10",status="200"} 1.0' in (made.metrics())
            with pytest.raises(MadeAPIError) as info:
                made.logprob([[0, 1, 2, 0, 1, 0, 0, 1, 1, 0]])
            assert info.value.status_code == 422
            assert info.value.detail == "x: row 0, column 2: expected 0, 1 or null, got 2"
            with MadeClient(base, api_key="nope") as stranger, pytest.raises(MadeAPIError) as info:
                stranger.models()
            assert info.value.status_code == 401

            in_flight: dict[str, object] = {}

            def slow_sample() -> None:
                r = httpx.post(
                    f"{base}/sample",
                    json={"n": 2, "seed": 1},
                    headers={"Authorization": "Bearer k3y", "X-Request-ID": "last-one"},
                    timeout=30,
                )
                in_flight["status"] = r.status_code
                in_flight["samples"] = r.json()["samples"]

            thread = threading.Thread(target=slow_sample)
            thread.start()
            # SIGTERM while the request waits out its batch delay in the server (the /metrics
            # request that looks is in flight too, hence 2).
            deadline = time.monotonic() + 10
            while metric(made.metrics(), "made_requests_in_flight") != 2.0:
                assert time.monotonic() < deadline, "the /sample request never arrived"
            proc.send_signal(signal.SIGTERM)
            thread.join(timeout=30)
        assert in_flight["status"] == 200 and len(in_flight["samples"]) == 2  # type: ignore[arg-type]
        assert proc.wait(timeout=30) == 0
    lines = json_lines(log_path, every=True)  # every log line is JSON
    access = [e for e in lines if e["logger"] == "made.service.access"]
    assert any(e["request_id"] == "last-one" and e["status"] == 200 for e in access)
    assert all({"ts", "level", "message", "request_id", "duration_ms"} <= set(e) for e in access)


@pytest.mark.slow
def test_made_serve_listens_on_made_port(tiny_store: Path) -> None:
    port = free_port()
    with made_serve(tiny_store, env={"MADE_PORT": str(port), "OMP_NUM_THREADS": "1"}) as server:
        assert server.url.endswith(f":{port}")
        assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        assert f'"port": {port}' in server.logs()  # the startup line says where it listens


@pytest.mark.slow
def test_made_serve_on_a_port_in_use_is_one_line_and_status_2(tiny_store: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "made.cli", "serve", "--store", str(tiny_store), "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=root,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=120,
        )
    assert proc.returncode == 2  # uvicorn's own exit status 3, with no line of made's
    assert f"made serve: error: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "address already in use" in proc.stderr and "Traceback" not in proc.stderr


def test_the_shutdown_does_not_wait_out_a_long_merged_engine_call(tiny_store: Path) -> None:
    """Once SIGTERM's requests are answered (503 at MADE_SHUTDOWN_TIMEOUT), the app's shutdown
    waits at most CLOSE_GRACE_S for a merged engine call still running (it has no checkpoint; one
    of MADE_MAX_BATCH=100000 /sample rows held the exit 6 s past the timeout)."""
    import asyncio

    from service.http.app import CLOSE_GRACE_S, create_app
    from service.settings import Settings

    app = create_app(Settings(store=tiny_store))

    async def long_call() -> None:
        await asyncio.sleep(30)

    app.state.dataplane.aclose = long_call  # as the batchers' aclose waits on a long call

    async def start_and_stop() -> float:
        async with app.router.lifespan_context(app):
            started = time.monotonic()
        return time.monotonic() - started

    assert asyncio.run(start_and_stop()) < CLOSE_GRACE_S + 1
