"""The helper of scripts/image_check.sh: what the shell would do badly.

    python scripts/image_check.py run-args COMPOSE_FILE             # podman run flags, one a line
    python scripts/image_check.py compare REFERENCE_URL IMAGE_URL    # the same requests, the same answers
    python scripts/image_check.py write DOC KEY=VALUE...             # the figures between the markers

run-args turns the compose file's service into `podman run` flags (read-only root filesystem,
tmpfs, capabilities, security options, init, the published port, the store's read-only bind
mount, the environment, the healthcheck, the stop grace period; ${VAR:-default} from this
environment, as compose reads it), so that the container runs as compose
would run it. compare sends the same requests to both servers (/logprob, /sample and /impute of
every model, then /metrics) and fails on any difference: JSON equal, numbers within 1e-6.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

TOLERANCE = 1e-6
BEGIN, END = "<!-- image-check:begin -->", "<!-- image-check:end -->"
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(value: object) -> str:
    """${VAR:-default} as compose reads it (the only form the compose files use): VAR from the
    environment, the default where it is unset or empty."""
    return _DEFAULT.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), str(value))


def _isolation(service: dict[str, Any]) -> list[str]:
    """Read-only root filesystem, tmpfs, user, capabilities, security options, init."""
    args: list[str] = []
    if service.get("read_only"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # only the tmpfs the compose file names
    for path in service.get("tmpfs", []):
        args += ["--tmpfs", path]
    if service.get("user"):
        args += ["--user", str(service["user"])]
    args += [f for cap in service.get("cap_drop", []) for f in ("--cap-drop", cap)]
    args += [f for cap in service.get("cap_add", []) for f in ("--cap-add", cap)]
    for opt in service.get("security_opt", []):
        args += ["--security-opt", opt.replace("no-new-privileges:true", "no-new-privileges")]
    if service.get("init"):
        args.append("--init")
    return args


def _health(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    if not check:
        return []
    test = check["test"]
    assert test[0] == "CMD", "the healthcheck is expected in its exec form"
    args = ["--health-cmd", json.dumps(test[1:])]
    flags = {"interval": "interval", "timeout": "timeout", "retries": "retries", "start_period": "start-period"}
    # compose's durations are Go's, as podman's are
    args += [f for key, flag in flags.items() if key in check for f in (f"--health-{flag}", str(check[key]))]
    return args


def run_args(compose_file: Path) -> list[str]:
    service = yaml.safe_load(compose_file.read_text())["services"]["made"]
    args = _isolation(service)
    for port in service.get("ports", []):
        args += ["--publish", interpolate(port)]
    for volume in service.get("volumes", []):
        assert isinstance(volume, dict) and volume["type"] == "bind", volume
        source = (compose_file.parent / interpolate(volume["source"])).resolve()
        mode = "ro" if volume.get("read_only") else "rw"
        args += ["--volume", f"{source}:{volume['target']}:{mode}"]
    for key, value in service.get("environment", {}).items():
        args += ["--env", f"{key}={interpolate(value)}"]
    args += _health(service)
    if "stop_grace_period" in service:
        args += ["--stop-timeout", str(int(str(service["stop_grace_period"]).rstrip("s")))]
    return args


# --- compare -----------------------------------------------------------------------------------
def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return [] if a == b else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, int) and isinstance(b, int):
            return [] if a == b else [f"{where}: {a} != {b}"]
        if math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return []
        return [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def requests_for(model: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The requests for one model: rows of bits for a model of bits, records for a table model."""
    name, dims = model["name"], int(model["dims"])
    if model.get("columns"):
        first = model["columns"][0]
        return [
            ("/sample", {"model": name, "n": 5, "seed": 11}),
            ("/logprob", {"model": name, "records": [{first: None}], "seed": 12}),
            ("/impute", {"model": name, "records": [{}], "n_samples": 3, "seed": 13}),
        ]
    rows = [[0] * dims, [d % 2 for d in range(dims)], [None if d % 3 else d % 2 for d in range(dims)]]
    holes = [[None if d % 2 else 1 for d in range(dims)]]
    return [
        ("/logprob", {"model": name, "x": rows, "seed": 21, "n_importance": 50}),
        ("/sample", {"model": name, "n": 4, "seed": 22}),
        ("/impute", {"model": name, "x": holes, "n_samples": 3, "seed": 23, "n_importance": 50}),
    ]


_COMPARED_METRICS = (
    "made_requests_total",
    "made_errors_total",
    "made_model_info",
    "made_models_loaded",
    "made_reload_errors_total",
)
# polled a different number of times on each side (/readyz answers 503 until the models load)
_NOT_COMPARED = re.compile(r'endpoint="/(metrics|readyz|healthz)"')


def metrics(text: str) -> dict[str, Any]:
    """What must agree after the same requests: the metric names (not the *_created gauges, which
    appear with a first labelled sample), the request and error counts (not of /metrics and the
    health probes), the models' info (their providers) and the load counts."""
    lines = text.splitlines()
    names = sorted({ln.split()[2] for ln in lines if ln.startswith("# TYPE ") and not ln.endswith("_created gauge")})
    samples = {}
    for line in lines:
        if line.startswith(_COMPARED_METRICS) and not _NOT_COMPARED.search(line):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return {"names": names, "samples": samples}


def compare(reference: str, image: str) -> int:
    failures: list[str] = []
    checked: list[str] = []
    with httpx.Client(timeout=120) as ref, httpx.Client(timeout=120) as img:
        models = ref.get(f"{reference}/models").json()
        failures += differences(
            [{k: v for k, v in m.items() if k != "providers"} for m in models["models"]],
            [{k: v for k, v in m.items() if k != "providers"} for m in img.get(f"{image}/models").json()["models"]],
            "/models",
        )
        for model in models["models"]:
            for path, body in requests_for(model):
                a, b = ref.post(f"{reference}{path}", json=body), img.post(f"{image}{path}", json=body)
                where = f"{path} {model['name']}"
                if a.status_code != 200 or b.status_code != 200:
                    failures.append(f"{where}: HTTP {a.status_code} / {b.status_code}: {a.text[:200]} {b.text[:200]}")
                    continue
                failures += differences(a.json(), b.json(), where)
                checked.append(where)
        ref_metrics, img_metrics = ref.get(f"{reference}/metrics").text, img.get(f"{image}/metrics").text
        failures += differences(metrics(ref_metrics), metrics(img_metrics), "/metrics")
        checked.append("/metrics")
    for failure in failures[:40]:
        print(f"image_check: DIFFERS {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"image_check: {len(checked)} answers the same in and outside the container ({', '.join(checked)})")
    return 0


def write(doc: Path, pairs: list[str]) -> None:
    """The figures as a table between the markers: a row per figure, a figure given again
    replacing its row, the others kept (a fresh machine's run and a warm one fill different rows)."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    figures = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("figure", "---"):
            figures[cells[0]] = cells[1]
    for pair in pairs:
        key, value = pair.split("=", 1)
        figures[key] = value
    rows = [f"| {k} | {v} |" for k, v in figures.items()]
    doc.write_text("\n".join([head + BEGIN, "| figure | value |", "|---|---|", *rows, END]) + tail)
    print(f"image_check: wrote {len(pairs)} figures to {doc}")


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "run-args":
        print("\n".join(run_args(Path(rest[0]))))
        return 0
    if command == "compare":
        return compare(rest[0].rstrip("/"), rest[1].rstrip("/"))
    if command == "write":
        write(Path(rest[0]), rest[1:])
        return 0
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
