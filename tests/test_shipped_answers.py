"""Every answer of the shipped models stays what it was when tests/data/shipped_answers.json was
recorded (scripts/record_answers.py): samples, levels, flags and orderings exactly, numbers to a
relative and absolute 1e-6. A change of store format, engine or codec that moves one answer fails
here, naming the request and the place in its answer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio

from service.settings import Settings
from service.testing import in_process

ROOT = Path(__file__).resolve().parent.parent
CASES = json.loads((ROOT / "tests" / "data" / "shipped_answers.json").read_text())
TOLERANCE = 1e-6


def _differences(got: Any, want: Any, where: str) -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"]
        return [d for k in want for d in _differences(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r:.80} != {want!r:.80}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in _differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        if math.isclose(got, want, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return []
    elif type(got) is type(want) and got == want:
        return []
    return [f"{where}: {got!r} != {want!r}"]


def test_the_shipped_models_answer_every_recorded_request_as_recorded() -> None:
    async def replay() -> list[str]:
        problems: list[str] = []
        async with in_process(Settings(store=ROOT / "model_store")) as client:
            await client.wait_ready()
            for case in CASES:
                r = await client.http.post(case["path"], json=case["body"])
                if r.status_code != 200:
                    problems.append(f"{case['path']} {case['body']!r:.120}: {r.status_code} {r.text:.200}")
                    continue
                answer = r.json()
                answer.pop("request_id", None)
                want = {k: v for k, v in case["answer"].items() if k != "request_id"}
                found = _differences(answer, want, case["path"])
                problems += [f"{d} (request {case['body']!r:.120})" for d in found[:3]]
        return problems

    problems = anyio.run(replay)
    assert not problems, f"{len(problems)} answers moved:\n" + "\n".join(problems[:20])
