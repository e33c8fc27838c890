"""A client that disconnects before its answer, against a real `made serve` with one engine
thread: its request is not run if it still waits for the thread, and stops at the engine's next
checkpoint if it runs, so the next client waits for neither (docs/operations.md).

The heavy request is /impute on 'tiny' whose rows all run the particle filter (seconds on one
core here); the clients that leave send it over a raw socket and close it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import json_lines, metric

from service.testing import ServerProcess, made_serve

HEAVY_ROWS = [[0, None, 1, None, 1, 0, None, 1]] * 60
HEAVY = {"model": "tiny", "x": HEAVY_ROWS, "n_samples": 1, "n_importance": 100_000, "seed": 0}
CHEAP = {"model": "tiny", "x": HEAVY_ROWS[:1], "n_samples": 1, "n_importance": 100, "seed": 0}
ENV = {
    "MADE_THREADS": "1",
    "MADE_REQUEST_TIMEOUT": "60",
    "MADE_MAX_DRAWS": "100000000",
    "MADE_PROVIDERS": "cpu",
    "OMP_NUM_THREADS": "1",
}
GONE = "client disconnected before its answer: request cancelled"


def send_and_stay(server: ServerProcess, path: str, body: object) -> socket.socket:
    """A connection that has sent the whole request and waits (until the test closes it)."""
    url = urlsplit(server.url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def held(http: httpx.Client, endpoint: str = "/impute") -> float:
    return metric(http.get("/metrics").text, "made_endpoint_requests", endpoint=endpoint) or 0.0


def counted(http: httpx.Client, name: str, endpoint: str = "/impute") -> float | None:
    return metric(http.get("/metrics").text, name, endpoint=endpoint)


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def heavy_seconds(http: httpx.Client) -> float:
    start = time.perf_counter()
    assert http.post("/impute", json=HEAVY).status_code == 200
    return time.perf_counter() - start


@pytest.mark.slow
def test_a_queued_request_whose_client_disconnects_is_not_run(tiny_store: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with made_serve(tiny_store, env=ENV, log_path=log) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        seconds = heavy_seconds(http)
        assert seconds > 1.5, seconds  # the margins below need a heavy request to be heavy
        first: dict[str, float] = {}

        def send_first() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                assert own.post("/impute", json=HEAVY).status_code == 200
                first["done"] = time.perf_counter()

        thread = threading.Thread(target=send_first)
        thread.start()
        wait_for(lambda: held(http) == 1)  # the first one runs on the only engine thread
        leaving = send_and_stay(server, "/impute", HEAVY)
        wait_for(lambda: held(http) == 2)  # the second waits for it
        leaving.close()
        # gone from the queue at once, while the first still runs
        wait_for(lambda: held(http) == 1, seconds / 2)
        assert thread.is_alive()
        # the next client waits for the first request only, not for the one that left
        assert http.post("/impute", json=CHEAP).status_code == 200
        after = time.perf_counter()
        thread.join()
        assert after - first["done"] < seconds / 2, (after - first["done"], seconds)
        metrics = http.get("/metrics").text
        assert metric(metrics, "made_disconnected_total", endpoint="/impute") == 1.0
        assert not metric(metrics, "made_abandoned_total", endpoint="/impute")  # never ran
        assert metric(metrics, "made_requests_total", endpoint="/impute", model="tiny", status="499") == 1.0
    gone = [line for line in json_lines(log) if line.get("message", "").startswith(GONE)]
    assert len(gone) == 1, gone
    assert gone[0]["engine_started"] is False and gone[0]["path"] == "/impute" and gone[0]["request_id"]


@pytest.mark.slow
def test_a_running_request_whose_client_disconnects_stops_at_its_next_checkpoint(
    tiny_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with made_serve(tiny_store, env=ENV, log_path=log) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        seconds = heavy_seconds(http)
        assert seconds > 1.5, seconds
        leaving = send_and_stay(server, "/impute", HEAVY)
        wait_for(lambda: held(http) == 1)
        time.sleep(seconds / 4)  # well into its engine call
        leaving.close()
        left = time.perf_counter()
        # the next client gets the engine thread once the call has stopped, not when it would end
        assert http.post("/impute", json=CHEAP).status_code == 200
        assert time.perf_counter() - left < seconds / 3, (time.perf_counter() - left, seconds)
        # its engine call stops at its next checkpoint (counted there), well before it would end
        wait_for(
            lambda: metric(http.get("/metrics").text, "made_abandoned_total", endpoint="/impute") == 1.0, seconds / 2
        )
        assert metric(http.get("/metrics").text, "made_disconnected_total", endpoint="/impute") == 1.0
    gone = [line for line in json_lines(log) if line.get("message", "").startswith(GONE)]
    assert len(gone) == 1, gone
    assert gone[0]["engine_started"] is True
