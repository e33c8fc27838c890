"""Record the shipped models' answers to a fixed set of requests (tests/data/shipped_answers.json).

tests/test_shipped_answers.py replays every request against the store as it is now and compares:
samples, levels and flags exactly, numbers to 1e-6. Rerun this script only when an answer is
meant to change, and say why in the commit.

    .venv/bin/python scripts/record_answers.py
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx

from service.http.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "shipped_answers.json"


def _half_missing(row: list[int]) -> list[int | None]:
    return [v if i < len(row) // 2 else None for i, v in enumerate(row)]


def _holes(row: list[int], every: int) -> list[int | None]:
    return [None if i % every == 3 else v for i, v in enumerate(row)]


def _oip_request(rows: list[list[int]]) -> dict[str, Any]:
    flat = [float(v) for row in rows for v in row]
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": flat}],
        "outputs": [{"name": "logprob"}, {"name": "conditionals"}],
        "parameters": {"seed": 5},
    }


async def _record() -> list[dict[str, Any]]:
    app = create_app(Settings(store=ROOT / "model_store"))
    cases: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://made.test")
    async with client as http, app.router.lifespan_context(app):
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)

        async def ask(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = await http.post(path, json=body)
            assert r.status_code == 200, (path, r.status_code, r.text)
            answer = r.json()
            cases.append({"path": path, "body": body, "answer": answer})
            return answer

        # models of bits: binarized-mnist (the default) and mushrooms
        for model in ("binarized-mnist", "mushrooms"):
            drawn = await ask("/sample", {"model": model, "n": 6, "seed": 11})
            rows = drawn["samples"]
            await ask("/sample", {"model": model, "n": 3, "seed": 12, "mask": 0})
            await ask("/sample", {"model": model, "n": 3, "seed": 13, "encoding": "packed"})
            await ask("/logprob", {"model": model, "x": rows})
            await ask("/logprob", {"model": model, "x": rows[:2], "masks": 0})
            await ask("/conditionals", {"model": model, "x": rows[:2], "mask": 0})
            missing = [_half_missing(rows[0]), _holes(rows[1], 7)]
            await ask("/logprob", {"model": model, "x": missing, "seed": 3, "n_importance": 50})
            await ask("/impute", {"model": model, "x": missing, "seed": 4, "n_samples": 3, "n_importance": 40})
            await ask(
                "/denoise",
                {"model": model, "x": rows[2:3], "eps": 0.1, "seed": 5, "n_samples": 2, "n_importance": 30},
            )
            await ask("/logprob", {"model": model, "records": [{"x0": 1, "x3": 0}], "seed": 6, "n_importance": 20})
            if model == "mushrooms":
                record = {f"x{i}": v for i, v in enumerate(rows[3])}
                await ask("/logprob", {"model": model, "records": [record], "explain": True})
            await ask(f"/v2/models/{model}/infer", _oip_request(rows[:2]))
            packed = base64.b64encode(bytes(_pack(rows[:2]))).decode()
            await ask("/logprob", {"model": model, "x_b64": packed, "shape": [2, len(rows[0])]})

        # models of tables
        for model in ("diamonds", "health-insurance"):
            drawn = await ask("/sample", {"model": model, "n": 6, "seed": 21})
            records = drawn["records"]
            await ask("/logprob", {"model": model, "records": records})
            await ask("/logprob", {"model": model, "records": records[:2], "explain": True})
            await ask("/conditionals", {"model": model, "records": records[:2], "mask": 2})
            first, *rest = list(records[0])
            partial = [{k: v for k, v in records[1].items() if k != first}, {first: records[2][first]}]
            await ask("/logprob", {"model": model, "records": partial, "seed": 7, "n_importance": 40})
            impute = {"model": model, "records": partial, "seed": 8, "n_samples": 2, "n_importance": 40}
            await ask("/impute", impute)
            await ask("/sample", {"model": model, "n": 4, "seed": 9, "given": {first: records[3][first]}})
            last = rest[-1]
            await ask("/sample", {"model": model, "n": 4, "seed": 10, "given": {last: records[4][last]}})
    return cases


def _pack(rows: list[list[int]]) -> bytes:
    import numpy as np

    return np.packbits(np.asarray(rows, dtype=np.uint8), axis=1).tobytes()


def main() -> None:
    cases = asyncio.run(_record())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=None, separators=(",", ":")) + "\n")
    print(f"{len(cases)} answers -> {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
