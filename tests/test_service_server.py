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
