"""MADE_REQUEST_TIMEOUT against a real `made serve`: a request that runs past it is answered 504
with a clear message at the limit, not when its work ends, while cheap requests sent meanwhile
are answered as usual, and the server goes on serving.

Engine calls run on MADE_THREADS threads: the heavy requests here take one at a time, so cheap
ones always find a free thread (as many heavy requests as threads would queue them behind).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import metric

from service.testing import made_serve

# Rows of 'tiny' (D=8, K=4 order-agnostic) whose missing values no ordering puts last: every
# row runs the particle filter (6,250 particles a mask at n_importance 100,000), seconds in all
# for 60 rows on one core here, far past the 1 s timeout.
HEAVY_ROWS = [[0, None, 1, None, 1, 0, None, 1]] * 60
HEAVY = {
    "/impute": {"model": "tiny", "x": HEAVY_ROWS, "n_samples": 1, "n_importance": 100_000, "seed": 0},
    "/logprob": {"model": "tiny", "x": HEAVY_ROWS, "n_importance": 100_000, "seed": 0},
}
TIMEOUT = 1.0


@pytest.mark.slow
def test_a_request_past_the_timeout_gets_504_while_cheap_ones_are_served(tiny_store: Path) -> None:
    env = {
        "MADE_REQUEST_TIMEOUT": str(TIMEOUT),
        "MADE_MAX_DRAWS": "100000000",
        "MADE_THREADS": "2",
        "MADE_PROVIDERS": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    with made_serve(tiny_store, env=env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        heavy: dict[str, Any] = {}

        def send_heavy() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                for path, body in HEAVY.items():
                    start = time.perf_counter()
                    r = own.post(path, json=body)
                    heavy[path] = (r.status_code, r.json(), time.perf_counter() - start)

        thread = threading.Thread(target=send_heavy)
        thread.start()
        # While the heavy requests run (and after they time out, while their abandoned engine
        # calls still occupy a core), cheap requests of every kind are answered.
        cheap: list[tuple[str, int, float]] = []
        while thread.is_alive():
            for path, body in (
                ("/logprob", {"x": [[0, 1, 1, 0, 1, 0, 0, 1]]}),
                ("/sample", {"n": 2, "seed": 1}),
                ("/conditionals", {"x": [[0, 1, 1, 0, 1, 0, 0, 1]]}),
            ):
                start = time.perf_counter()
                r = http.post(path, json=body)
                cheap.append((path, r.status_code, time.perf_counter() - start))
            time.sleep(0.02)
        thread.join()

        for path in HEAVY:
            status, body, seconds = heavy[path]
            assert status == 504, (path, body)
            assert body["type"] == "timeout" and body["request_id"]
            assert body["detail"] == (
                f"the request took longer than {TIMEOUT:g} s (MADE_REQUEST_TIMEOUT); send fewer rows or samples"
            )
            assert TIMEOUT <= seconds < TIMEOUT + 1.0, (path, seconds)  # at the limit, not later
        assert len(cheap) > 10 and {s for _, s, _ in cheap} == {200}, cheap
        assert max(seconds for _, _, seconds in cheap) < TIMEOUT
        # the same work, small enough, still succeeds: the server is none the worse
        small = {**HEAVY["/impute"], "x": HEAVY_ROWS[:1], "n_importance": 100}
        assert http.post("/impute", json=small).status_code == 200
        metrics = http.get("/metrics").text
        assert metric(metrics, "made_errors_total", endpoint="/impute", model="tiny", type="timeout") == 1.0
        assert metric(metrics, "made_errors_total", endpoint="/logprob", model="tiny", type="timeout") == 1.0
        # The abandoned engine calls run on to their end (seconds here), and a graceful stop
        # waits for them: SIGKILL instead, this test is not about shutdown.
        server.proc.kill()
        server.proc.wait()
