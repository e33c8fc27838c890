"""The floor for bench/load.py: a bare FastAPI POST /logprob that parses a body of the same shape
as the service's (a pydantic model) and returns a constant, served by uvicorn as `made serve`
serves (same loop and HTTP implementation, no access log, no server header).

    .venv/bin/python bench/_bare_app.py --port 8001

What the service spends above this is its own: validation into numpy, middleware (request id,
metrics, access log), batching and the engine call. (Files starting with "_" are not run by
bench/run_all.py.)
"""

from __future__ import annotations

import argparse
from typing import Literal

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict


class LogProbBody(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = None
    x: list[list[Literal[0, 1] | None]]
    masks: Literal["all"] | int = "all"
    seed: int | None = None
    n_importance: int = 1000


class LogProbAnswer(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: str
    logprob: list[float]
    exact: list[bool]
    stderr: list[float | None]


app = FastAPI()


@app.post("/logprob")
async def logprob(body: LogProbBody) -> LogProbAnswer:
    """A constant answer, one row per row sent."""
    n = len(body.x)
    return LogProbAnswer(model="bare", version="1", logprob=[-1.0] * n, exact=[True] * n, stderr=[None] * n)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, server_header=False, log_level="warning")


if __name__ == "__main__":
    main()
