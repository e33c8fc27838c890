"""Check and measure the GPU path on a CUDA machine in one run; write docs/gpu-check.md with --write.

    python bench/gpu_check.py [--store DIR] [--model NAME] [--rows 1000] [--write] [--out FILE]
    python bench/gpu_check.py --cpu-dry-run [--store DIR] [--model NAME] [--out FILE --write]

1. onnxruntime's CUDA provider really runs (session.get_providers(), not just "available");
2. parity, CPU against CUDA, on --rows rows ($MADE_DATA_DIR/binarized_mnist.npz's test split when
   its width matches the model, else seeded random binary rows): log p(x) of the stored graph per
   mask and of the mixture, and of the engine's scores graph (every mask in one call), within
   --tolerance (1e-4 nats); Jacobi samples on CUDA against the CPU's stepping sampler on the same
   noise (rows that differ, and how close to p their first differing draw was);
3. roofline: a bare graph of the model's float32 MatMuls (no masks), inputs and outputs on the
   device (IOBinding), TF32 off;
4. log p(x) rows/s, one mask and the K-mask mixture, at batches 1, 64, 1024, 8192 and 65536: the
   engine's per-mask passes and the scores graph on the device, the CPU engine beside them (up to
   8192 rows), and each as a fraction of the roofline;
5. samples/s at n = 1, 64, 1000, 10000: Jacobi iteration on the device against the CPU's numpy
   stepping sampler, on the same noise, with the Jacobi pass counts;
6. imputation rows/s (the second half of mask 0's ordering missing, 10 samples a row) with either
   sampler; 7. p50/p99 latency of single-row calls;
8. HTTP: `made serve` (a store holding the model alone) with MADE_PROVIDERS=cuda, then with
   MADE_PROVIDERS=cpu, each driven in turn by `hey -c 64 -z 10s` on POST /logprob (1 row, 64
   rows) and POST /sample (n=64): req/s, p50/p99, and the CUDA/CPU ratio against issue 16's 5x.
   GET /models must show the CUDA server's model on the CUDA provider (else that side is not
   measured); the report quotes it and the server's "loaded model" log line. Without `hey` on
   PATH, or without the service's dependencies, the step says so and is skipped.

--cpu-dry-run runs every step on the CPU provider with small sizes (no GPU needed; what the
tests run; its HTTP step serves both sides on the CPU provider, 2 s a measurement): its numbers
say nothing about a GPU. `--http-seconds 0` skips the HTTP step. The report grows as the run goes:
each step is printed when it ends and, with --write, the file is rewritten with every step so far
(marked unfinished until the end), so a run stopped by a device call's time limit keeps what it
measured; a step that raises is reported in its section and the others still run. Exit status: 0
all good, 1 parity off or a step failed, 2 no usable CUDA provider (or no model).
docs/gpu-check.md, "How to re-measure", gives the procedure on a bare machine
(scripts/gpu_bundle.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: made/ and service/ beside bench/

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CHUNK = 4096  # rows per onnxruntime call, as in the engine


class CheckFailed(Exception):
    """A reason to stop, with the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def ort_description(ort: Any) -> str:
    package = "onnxruntime"
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            package = f"{name} {importlib.metadata.version(name)}"
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        from onnxruntime.capi import build_and_package_info as info

        cuda = getattr(info, "cuda_version", "")
    except ImportError:
        cuda = ""
    return f"{package} ({f'built for CUDA {cuda}' if cuda else 'no CUDA build'})"


def probe_cuda(ort: Any) -> None:
    """Refuse early, with the reason, unless a CUDA session really runs on the GPU."""
    available = ort.get_available_providers()
    if CUDA not in available:
        raise CheckFailed(
            f"no CUDA provider: {ort_description(ort)} offers {', '.join(available)}; run this on "
            "an NVIDIA GPU machine with onnxruntime-gpu and the CUDA and cuDNN versions its build "
            "needs, e.g. in the made:gpu image (docs/deployment.md)"
        )
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
    actual = session.get_providers()
    if actual[0] != CUDA:
        raise CheckFailed(
            f"the CUDA provider of {ort_description(ort)} is listed but did not start (the session "
            f"runs {', '.join(actual)}): check nvidia-smi, that the CUDA and cuDNN libraries this "
            "build needs are on the library path, and that the container was given a GPU"
        )


def providers_for(device: str) -> list[str]:
    return [device] if device == CPU else [device, CPU]


def make_sessions(path: Path, device: str = CUDA) -> tuple[Any, Any]:
    """CPU and `device` sessions of the stored graph, configured as the service configures them."""
    from service.engine.runtime import make_session

    cpu, dev = make_session(path, [CPU]), make_session(path, providers_for(device))
    if dev.get_providers()[0] != device:
        raise CheckFailed(f"the {device} session for {path} runs {dev.get_providers()}")
    return cpu, dev


def mask_logliks(session: Any, x: np.ndarray, n_masks: int) -> np.ndarray:
    """(K, N) float64 log p_k(x) from one session: sum_d log p(x_d | x_<d) under mask k."""
    xf = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((n_masks, len(x)))
    for k in range(n_masks):
        mask = np.array(k, dtype=np.int64)
        parts = [
            session.run(["logits"], {"x": xf[i : i + CHUNK], "mask_index": mask})[0] for i in range(0, len(xf), CHUNK)
        ]
        logits = np.concatenate(parts).astype(np.float64)  # (N, D)
        signed = np.where(x > 0.5, logits, -logits)
        out[k] = -np.logaddexp(0.0, -signed).sum(axis=1)  # log sigmoid(+-z), stable
    return out


def mixture(ll: np.ndarray) -> np.ndarray:
    """log((1/K) sum_k p_k(x)) from (K, N) per-mask log-likelihoods."""
    top = ll.max(axis=0)
    return top + np.log(np.exp(ll - top).mean(axis=0))


def parity_rows(dims: int, n: int) -> tuple[np.ndarray, str]:
    data_dir = Path(os.environ.get("MADE_DATA_DIR", ROOT.parent / "shared" / "data"))
    data = data_dir / "binarized_mnist.npz"
    if data.exists():
        with np.load(data) as npz:
            test = npz["test"]
        if test.ndim == 2 and test.shape[1] == dims:
            return test[:n].astype(np.float64), f"the first {min(n, len(test))} test rows of {data}"
    rng = np.random.default_rng(0)
    return (rng.random((n, dims)) < 0.5).astype(np.float64), f"{n} random binary rows (seed 0)"


def rows_per_second(fn: Callable[[], object], rows: int, min_seconds: float = 0.5, max_runs: int = 200) -> float:
    fn()  # warm-up: memory arenas, CUDA kernels
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds or runs >= max_runs:
            return rows * runs / elapsed


def latencies(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds of `calls` single calls, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def gpu_name() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    names = done.stdout.strip().splitlines() if done.returncode == 0 else []
    return "; ".join(names) or "?"


def pick_model(store: Path, name: str | None) -> Any:
    from made.core.errors import MadeError
    from made.store.versions import list_names, open_model

    names = list_names(store)
    if name is None:
        if not names:
            raise CheckFailed(f"model store {store} holds no models (set --store or MADE_STORE)")
        name = "binarized-mnist" if "binarized-mnist" in names else names[0]
    try:
        return open_model(store, name)
    except MadeError as exc:
        raise CheckFailed(str(exc)) from None


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU run's sizes, or the CPU dry run's small ones."""

    batches: list[int]  # log p(x) batches
    cpu_batch_max: int  # the CPU engine beside it up to this batch
    roofline_batches: list[int]
    sample_ns: list[int]
    impute_rows: list[int]
    jacobi_parity_rows: int
    latency_calls: int
    min_seconds: float
    http_seconds: float  # hey -z, each request on each server


GPU_SIZES = Sizes(
    [1, 64, 1024, 8192, 65536], 8192, [8192, 65536], [1, 64, 1000, 10000], [100, 1000], 1000, 200, 0.5, 10.0
)
DRY_SIZES = Sizes([1, 64], 64, [256], [1, 16], [4], 16, 10, 0.02, 2.0)


def roofline(net: Any, device: str, batch: int, min_seconds: float) -> float:
    """float32 FLOP/s of a bare graph of the network's dense MatMuls (no masks, bias or
    activation) at `batch` rows, input and outputs on the device (IOBinding), TF32 off."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from service.engine.runtime import make_session

    def flushed(w: np.ndarray) -> np.ndarray:
        """Subnormal weights as 0: on the CPU they slowed this MatMul ~40x (mushrooms)."""
        w = np.array(w, dtype=np.float32)
        w[np.abs(w) < np.finfo(np.float32).tiny] = 0.0
        return w

    nodes, inits, h = [], [], "x"
    for i, w in enumerate(net.weights):
        inits.append(numpy_helper.from_array(flushed(w), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"h{i}"]))
        h = f"h{i}"
    outputs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)]
    if net.direct is not None:
        inits.append(numpy_helper.from_array(flushed(net.direct), "Wd"))
        nodes.append(helper.make_node("MatMul", ["x", "Wd"], ["hd"]))
        outputs.append(helper.make_tensor_value_info("hd", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "roofline", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", net.dims])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = make_session(Path("roofline.onnx"), providers_for(device), None, model.SerializeToString())
    where = "cuda" if device == CUDA else "cpu"
    x = (np.random.default_rng(0).random((batch, net.dims)) < 0.5).astype(np.float32)
    io = session.io_binding()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    for out in outputs:
        io.bind_output(out.name, where)

    def once() -> None:
        session.run_with_iobinding(io)
        io.synchronize_outputs()

    return float(rows_per_second(once, batch, min_seconds) * net.flops_per_row())


def first_flip_margins(engine: Any, masks: np.ndarray, u: np.ndarray, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """For each row where got and want differ: |u - p| at the first differing draw in its mask's
    order, p = p(x_d = 1 | x_<d) of `want` (the CPU's sample) from the CPU engine."""
    margins = []
    for i in np.flatnonzero((got != want).any(axis=1)):
        order = engine.orderings[masks[i]]
        d = order[int(np.argmax(got[i, order] != want[i, order]))]
        p = engine.conditionals(want[i : i + 1].astype(np.float64), int(masks[i]))[0, d]
        margins.append(abs(u[i, d] - p))
    return np.array(margins)


# --- 8. HTTP: `made serve` on the device's provider against the CPU provider, under hey --------

HTTP_TARGET = 5.0  # issue 16: req/s on CUDA over req/s on the CPU provider, 64 clients


@dataclass(frozen=True)
class HeyRun:
    """One `hey` run: answers that were 200, everything else (other statuses, errors), time."""

    ok: int
    other: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def parse_hey(out: str) -> HeyRun:
    """hey's text summary: Total, the latency distribution (its "50%% in"; hey prints no 99% line
    under 100 answers: nan), status codes, errors."""

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    failed = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", errors, re.M))
    return HeyRun(
        ok=statuses.get(200, 0),
        other=sum(n for code, n in statuses.items() if code != 200) + failed,
        seconds=number(r"Total:\s+([\d.]+) secs"),
        p50_ms=1e3 * number(r"50%+ in ([\d.]+) secs"),
        p99_ms=1e3 * number(r"99%+ in ([\d.]+) secs"),
    )


def run_hey(hey: str, url: str, body: Path, clients: int, seconds: float) -> HeyRun:
    """POST the JSON in `body` to url from `clients` connections for `seconds` (hey -z: requests
    in flight at the end are answered and counted)."""
    cmd = [hey, "-c", str(clients), "-z", f"{seconds:g}s", "-t", "60", "-m", "POST", "-T", "application/json"]
    done = subprocess.run([*cmd, "-D", str(body), url], capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise CheckFailed(f"hey failed (status {done.returncode}): {done.stderr.strip()[-500:]}", 1)
    return parse_hey(done.stdout)


def http_bodies(name: str, x: np.ndarray) -> list[tuple[str, str, dict[str, object]]]:
    """(path, label, JSON body) of each request measured: rows of the parity set."""
    rows = np.resize(x, (64, x.shape[1])).astype(np.int8).tolist()
    return [
        ("/logprob", "/logprob, 1 row", {"model": name, "x": rows[:1]}),
        ("/logprob", "/logprob, 64 rows", {"model": name, "x": rows}),
        ("/sample", "/sample, n=64", {"model": name, "n": 64}),
    ]


LOADED_LINE = re.compile(r"loaded model (\S+) version (\S+) \(D=\d+, K=\d+\) on ([\w,]+)")


def serve_and_measure(
    hey: str,
    store: Path,
    spec: str,
    expected: str,
    model: Any,
    bodies: list[tuple[str, str, dict[str, object]]],
    seconds: float,
    clients: int,
    workdir: Path,
    warm_up: float,
) -> tuple[str, list[HeyRun] | None]:
    """`made serve` with MADE_PROVIDERS=spec, checked to run the model on `expected`, each body
    under hey in turn. (what GET /models and the log say, the runs; None if it ran elsewhere)."""
    import httpx

    from service.testing import made_serve

    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "MADE_PROVIDERS": spec,
        "MADE_DEFAULT_MODEL": model.name,
        "MADE_API_KEY": "",  # unset
        "MADE_LOG_LEVEL": "INFO",  # as deployed: an access line a request, to the log file
        "PYTHONPATH": pythonpath,  # `python -m made.cli` from this checkout, no install needed
    }
    log = workdir / f"serve-{spec}.log"
    try:
        with made_serve(store, env=env, log_path=log, ready_timeout=300) as server:
            listed = httpx.get(f"{server.url}/models", timeout=30).json()["models"]
            providers: list[str] = next((m["providers"] for m in listed if m["name"] == model.name), [])
            found = [m.group(0) for m in map(LOADED_LINE.search, server.logs().splitlines()) if m]
            seen = (
                f"MADE_PROVIDERS={spec}: GET /models says {model.name} runs on {', '.join(providers) or 'nothing'}; "
                f"its log: {f'`{found[-1]}`' if found else '(no loaded-model line)'}"
            )
            if not providers or providers[0] != expected:
                return f"{seen}. NOT on {expected}: not measured.", None
            runs = []
            for i, (path, _, body) in enumerate(bodies):
                body_file = workdir / f"body{i}.json"
                body_file.write_text(json.dumps(body))
                run_hey(hey, server.url + path, body_file, clients, warm_up)
                runs.append(run_hey(hey, server.url + path, body_file, clients, seconds))
            return seen + ".", runs
    except RuntimeError as exc:  # made serve exited or was not ready
        return f"MADE_PROVIDERS={spec}: `made serve` did not start: {str(exc).splitlines()[0]}", None
    except (CheckFailed, OSError, subprocess.SubprocessError, httpx.HTTPError, ValueError, KeyError) as exc:
        return f"MADE_PROVIDERS={spec}: the measurement broke off: {exc}", None


def http_throughput(
    model: Any, x: np.ndarray, dry: bool, seconds: float, clients: int, hey: str | None = None
) -> list[str]:
    """Step 8's markdown: `made serve` on the device's provider against the CPU provider, each in
    turn under `clients` hey clients; a line saying why where hey or the service's dependencies
    are missing."""
    hey = (shutil.which("hey") or "") if hey is None else hey
    device, label = ("cpu", "device (CPU)") if dry else ("cuda", "CUDA")
    lines = [f"## HTTP throughput, {clients} clients: `made serve` on {label} against the CPU provider", ""]
    missing = None
    if seconds <= 0:
        missing = "--http-seconds 0"
    elif not hey:
        missing = "the load generator `hey` is not on PATH (apt-get install hey; scripts/gpu_bundle.sh carries it)"
    else:
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401

            import service.testing  # noqa: F401
        except ImportError as exc:
            missing = f"the service's dependencies are missing ({exc}; scripts/gpu_bundle.sh carries them)"
    if missing:
        print(f"gpu_check: HTTP step skipped: {missing}", file=sys.stderr)
        return [*lines, f"Skipped: {missing}.", ""]
    bodies = http_bodies(model.name, x)
    warm_up = min(1.0, seconds / 2)
    sides = [(label, device, CPU if dry else CUDA), ("CPU", "cpu", CPU)]
    runs: list[list[HeyRun] | None] = []
    notes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-http-") as tmp:
        work = Path(tmp)
        store = work / "store"
        shutil.copytree(model.path, store / model.name / model.version)  # this model alone: one to load
        for i, (side, spec, expected) in enumerate(sides):
            (work / f"server{i}").mkdir()
            print(f"gpu_check: HTTP step, {side}: made serve with MADE_PROVIDERS={spec}", file=sys.stderr)
            note, got = serve_and_measure(
                hey, store, spec, expected, model, bodies, seconds, clients, work / f"server{i}", warm_up
            )
            notes.append(f"- {note}")
            runs.append(got)
            if got is None:
                print(f"gpu_check: HTTP step, {side}: {note}", file=sys.stderr)

    def cells(run: HeyRun | None) -> list[str]:
        if run is None:
            return ["n/a", "n/a"]
        p99 = "n/a" if np.isnan(run.p99_ms) else f"{run.p99_ms:.1f}"
        return [f"{run.rps:,.0f}", f"{run.p50_ms:.1f} / {p99}"]

    lines += [
        f"`made serve` on a store holding {model.name} version {model.version} alone, started in turn with "
        f"MADE_PROVIDERS={device} and MADE_PROVIDERS=cpu, every other setting at its default (INFO logs, to a "
        f"file). Each request in turn: `hey -c {clients} -z {seconds:g}s` on the same machine, after {warm_up:g} s "
        "of the same not counted. /logprob rows are rows of the parity set (above); /sample answers JSON lists; "
        "p99 is n/a under 100 answers.",
        "",
        *notes,
        "",
        f"| request | {label} req/s | p50 / p99 ms | CPU req/s | p50 / p99 ms | not 200, {label} / CPU "
        f"| {label} / CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    met = 0
    for i, (_, name, _) in enumerate(bodies):
        dev, cpu = (r[i] if r else None for r in runs)
        other = " / ".join("n/a" if r is None else str(r.other) for r in (dev, cpu))
        ratio = dev.rps / cpu.rps if dev and cpu and cpu.rps > 0 else None
        met += ratio is not None and ratio >= HTTP_TARGET
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {name} | {' | '.join(cells(dev) + cells(cpu))} | {other} | {shown} |")
    lines += [
        "",
        f"Target (issue 16): /logprob and /sample over HTTP at >= {HTTP_TARGET:g}x the CPU provider's req/s with "
        f"64 clients{'' if clients == 64 else f' (measured with {clients})'}: met by {met} of {len(bodies)}"
        + ("; a dry run serves both on the CPU provider: the ratio says nothing about a GPU." if dry else ".")
        + f" This step took {time.perf_counter() - started:.0f} s.",
        "",
    ]
    return lines


UNFINISHED = (
    "**This run did not finish**: the report ends with the last step that completed (the device call's "
    "time limit, or the process was stopped). What is above was measured."
)


class Report:
    """The report as it grows, so that a run cut short keeps what it measured (device time is
    minutes: a run that hits its call's limit must not come back empty). Each finished step is
    printed at once, and with a path the file is rewritten, atomically, with every step so far and
    a last line saying the run has not finished. A step that raises is reported in its own
    section, its traceback on stderr, and the run goes on with the next step."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lines: list[str] = []
        self.failed: list[str] = []
        self.seconds: dict[str, float] = {}

    def add(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)
        self.lines += lines
        self._write(finished=False)

    def step(self, title: str, measure: Callable[[list[str]], None]) -> None:
        """Run `measure`, which appends its section's lines as it measures; where it raises, the
        lines it had appended stay, followed by the error."""
        started = time.perf_counter()
        lines: list[str] = []
        try:
            measure(lines)
        except Exception as exc:  # broken on this device: say so, and measure the rest
            traceback.print_exc()
            self.failed.append(title)
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            lines[:] = [*(lines or [f"## {title}"]), "", f"**This step failed**: {why} (traceback on stderr).", ""]
        self.seconds[title] = time.perf_counter() - started
        print(f"gpu_check: {title}: {self.seconds[title]:.0f} s", file=sys.stderr, flush=True)
        self.add(lines)

    def timings(self, started: float) -> list[str]:
        steps = "; ".join(f"{title} {s:.0f} s" for title, s in self.seconds.items())
        return [f"The whole run took {time.perf_counter() - started:.0f} s ({steps}).", ""]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def finish(self) -> None:
        self._write(finished=True)

    def _write(self, finished: bool) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(self.text() + ("" if finished else f"\n{UNFINISHED}\n"))
        os.replace(tmp, self.path)


def run(args: argparse.Namespace, report: Report) -> bool:
    """Measure every step into `report`; False where the device's answers differ from the CPU's."""
    import onnxruntime as ort

    from service.engine import Engine
    from service.engine.engine import _logmeanexp
    from service.engine.network import load_network

    dry = args.cpu_dry_run
    sizes = DRY_SIZES if dry else GPU_SIZES
    device = CPU if dry else CUDA
    if not dry:
        probe_cuda(ort)
    model = pick_model(Path(args.store), args.model)
    started = time.perf_counter()
    k_all = list(range(model.n_masks))
    cpu, dev = make_sessions(model.onnx_path, device)
    x, source = parity_rows(model.dims, sizes.jacobi_parity_rows if dry else args.rows)
    ll_cpu, ll_dev = mask_logliks(cpu, x, model.n_masks), mask_logliks(dev, x, model.n_masks)
    diffs = np.abs(ll_cpu - ll_dev).max(axis=1)  # (K,)
    mix_diff = float(np.abs(mixture(ll_cpu) - mixture(ll_dev)).max())

    eng_cpu = Engine(model, [CPU])
    eng_dev = Engine(model, providers_for(device))
    if eng_dev.providers[0] != device:
        raise CheckFailed(f"the engine on {device} runs {eng_dev.providers}")
    scores = eng_dev.graph_scores()
    jacobi = eng_dev.jacobi_sampler()
    if dry:  # the device code path (IOBinding, device-resident state) on the CPU
        scores.bind = jacobi.bind = True
    graph_ll, graph_mix = scores.scores(x)
    graph_diff = np.abs(graph_ll - ll_cpu).max(axis=1)
    graph_mix_diff = float(np.abs(graph_mix - mixture(ll_cpu)).max())
    ok = bool(
        (diffs <= args.tolerance).all()
        and mix_diff <= args.tolerance
        and (graph_diff <= args.tolerance).all()
        and graph_mix_diff <= args.tolerance
    )
    # Jacobi on the device against the CPU's stepping sampler, same noise, every mask
    u, ks = eng_cpu.noise(sizes.jacobi_parity_rows, seed=0)
    ks[: model.n_masks] = k_all
    want = eng_cpu.sample_from_noise(u, ks)
    jrun = jacobi.run(ks, u)
    margins = first_flip_margins(eng_cpu, ks, u, jrun.samples, want)
    # a row may differ only where its first differing draw was a near-tie (float32 logits)
    jacobi_ok = bool(len(margins) == 0 or margins.max() < 1e-5)
    ok = ok and jacobi_ok

    title = "GPU check" + (" — CPU DRY RUN (no GPU: the numbers say nothing about a GPU)" if dry else "")
    lines = [
        f"# {title}",
        "",
        f"Generated by `python bench/gpu_check.py {shlex.join(sys.argv[1:])}` on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- GPU: {gpu_name() if not dry else 'none (CPU dry run)'}; host: {platform.platform()}, {os.cpu_count()} CPUs",
        f"- onnxruntime: {ort_description(ort)}; device session providers: {', '.join(dev.get_providers())}",
        f"- NVIDIA_TF32_OVERRIDE={os.environ.get('NVIDIA_TF32_OVERRIDE', '(unset)')}; CUDA provider "
        f"use_tf32={dev.get_provider_options().get(CUDA, {}).get('use_tf32', 'n/a')}",
        f"- model: {model.name} version {model.version} (D={model.dims}, K={model.n_masks}, "
        f"hidden {model.manifest.get('hidden')}); rows: {source}",
        f"- IOBinding: scores graph {scores.bind}, Jacobi sampler {jacobi.bind}; the engine's log p(x) path on "
        f"the device: {'scores graph' if eng_dev.use_graph_scores() else 'per-mask passes'}",
        "",
        f"## Parity with the CPU, tolerance {args.tolerance:g} nats: {'passed' if ok else 'FAILED'}",
        "",
        "| mask | stored graph: max abs difference (nats) | scores graph (all masks in one call) "
        "| mean log p(x), CPU |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {diffs[k]:.2e} | {graph_diff[k]:.2e} | {ll_cpu[k].mean():.3f} |" for k in k_all]
    lines += [f"| mixture | {mix_diff:.2e} | {graph_mix_diff:.2e} | {mixture(ll_cpu).mean():.3f} |", ""]
    flips = f"max |u - p| at the first differing draw {margins.max():.1e}" if len(margins) else "none differ"
    lines += [
        f"Jacobi samples on the device against the CPU's stepping sampler (float64), same noise, "
        f"{len(u)} samples over all {model.n_masks} masks: {len(u) - len(margins)} identical, "
        f"{len(margins)} differ ({flips}; allowed: below 1e-5, a float32 near-tie); "
        f"passes per sample: mean {jrun.passes.mean():.1f}, max {jrun.passes.max()} (D = {model.dims}).",
        "",
    ]
    report.add(lines)
    net = load_network(model.onnx_path)
    flops = net.flops_per_row()
    roof: dict[int, float] = {}  # FLOP/s by batch, once the roofline step has measured them

    def roofline_step(lines: list[str]) -> None:
        roof.update({b: roofline(net, device, b, sizes.min_seconds) for b in sizes.roofline_batches})
        lines += [
            "## Roofline",
            "",
            f"A bare graph of the model's float32 MatMuls (no masks, bias or activation; {flops / 1e6:.2f} MFLOP "
            f"a row, K = {model.n_masks} times that for the mixture), x and outputs on the device:",
            "",
            "| batch | GFLOP/s |",
            "|---|---|",
            *[f"| {b} | {r / 1e9:,.1f} |" for b, r in roof.items()],
            "",
            f"Roofline: {max(roof.values()) / 1e9:,.1f} GFLOP/s (the best of these).",
            "",
        ]

    def fraction(rate: float, masks: int) -> str:
        return f"{rate * flops * masks / max(roof.values()):.3f}" if roof else "n/a"

    def logprob_step(lines: list[str]) -> None:
        lines += [
            "## log p(x), rows/s (fraction of the roofline)",
            "",
            "| batch | masks | engine per-mask passes, device | scores graph, device | scores graph + host checks "
            "(Engine.logprob) | CPU engine |",
            "|---|---|---|---|---|---|",
        ]
        try:
            for b in sizes.batches:
                xb = np.resize(x, (b, model.dims))
                xf = xb.astype(np.float32)
                for label, ks_b in (("one (0)", [0]), (f"mixture of {model.n_masks}", k_all)):
                    masks_arg: Any = 0 if len(ks_b) == 1 else "all"
                    eng_dev.graph_scores_enabled = False
                    per_mask = rows_per_second(
                        lambda: _logmeanexp(eng_dev.mask_logliks(xb, ks_b), axis=0),  # noqa: B023
                        b,
                        sizes.min_seconds,
                    )
                    eng_dev.graph_scores_enabled = True
                    graph = rows_per_second(lambda: scores.scores(xf, ks_b), b, sizes.min_seconds)  # noqa: B023
                    full = rows_per_second(lambda: eng_dev.logprob(xb, masks=masks_arg), b, sizes.min_seconds)  # noqa: B023
                    eng_dev.graph_scores_enabled = None
                    cpu_cell = "n/a"
                    if b <= sizes.cpu_batch_max:
                        rate = rows_per_second(lambda: eng_cpu.logprob(xb, masks=masks_arg), b, sizes.min_seconds)  # noqa: B023
                        cpu_cell = f"{rate:,.0f} ({fraction(rate, len(ks_b))})"
                    lines.append(
                        f"| {b} | {label} | {per_mask:,.0f} ({fraction(per_mask, len(ks_b))}) | {graph:,.0f} "
                        f"({fraction(graph, len(ks_b))}) | {full:,.0f} ({fraction(full, len(ks_b))}) | {cpu_cell} |"
                    )
        finally:  # a step that broke off leaves the engine as the service runs it
            eng_dev.graph_scores_enabled = None
        lines += [
            "",
            "The CPU engine's fraction is of the device's roofline. Targets (issue 16): the mixture at batch "
            "8192 at >= 0.5 of the roofline.",
            "",
        ]

    def sampling_step(lines: list[str]) -> None:
        lines += [
            "## Sampling, samples/s (mixture: each sample's mask drawn uniformly)",
            "",
            "| n | Jacobi, device | numpy stepping sampler, CPU | Jacobi / CPU | Jacobi passes, mean / max |",
            "|---|---|---|---|---|",
        ]
        for n in sizes.sample_ns:
            u_n, ks_n = eng_cpu.noise(n, seed=1)
            jac = rows_per_second(lambda: jacobi.run(ks_n, u_n), n, sizes.min_seconds)  # noqa: B023
            step = rows_per_second(lambda: eng_cpu.sample_from_noise(u_n, ks_n), n, sizes.min_seconds)  # noqa: B023
            p = jacobi.run(ks_n, u_n).passes
            lines.append(f"| {n} | {jac:,.0f} | {step:,.0f} | {jac / step:.2f} | {p.mean():.1f} / {p.max()} |")
        lines += ["", "Target (issue 16): n = 10000 at >= 30x the CPU sampler of the same machine.", ""]

    def imputation_step(lines: list[str]) -> None:
        missing = eng_cpu.orderings[0][model.dims // 2 :]
        lines += [
            "## Imputation, rows/s (the second half of mask 0's ordering missing, 10 samples a row)",
            "",
            "| rows | exact rows | engine on the device, numpy sampler | engine on the device, Jacobi sampler "
            "| CPU engine |",
            "|---|---|---|---|---|",
        ]
        for n in sizes.impute_rows:
            xi = np.resize(x, (n, model.dims)).copy()
            xi[:, missing] = np.nan
            exact = int(eng_cpu.exact_rows(~np.isnan(xi)).sum())
            stepping = eng_dev.sampler
            numpy_rate = rows_per_second(lambda: eng_dev.impute(xi, 10, seed=0), n, sizes.min_seconds)  # noqa: B023
            eng_dev.sampler = jacobi  # type: ignore[assignment]  # the same run_masks interface
            try:
                jac_rate = rows_per_second(lambda: eng_dev.impute(xi, 10, seed=0), n, sizes.min_seconds)  # noqa: B023
            finally:
                eng_dev.sampler = stepping
            cpu_rate = rows_per_second(lambda: eng_cpu.impute(xi, 10, seed=0), n, sizes.min_seconds)  # noqa: B023
            lines.append(f"| {n} | {exact} | {numpy_rate:,.1f} | {jac_rate:,.1f} | {cpu_rate:,.1f} |")
        lines.append("")

    def latency_step(lines: list[str]) -> None:
        x1 = x[:1]
        u1, k1 = eng_cpu.noise(1, seed=2)
        lines += ["## Single-row latency, ms", "", "| call | p50 | p99 |", "|---|---|---|"]
        for label, fn in (
            ("logprob, mixture, device engine", lambda: eng_dev.logprob(x1)),
            ("logprob, one mask, device engine", lambda: eng_dev.logprob(x1, masks=0)),
            ("logprob, mixture, CPU engine", lambda: eng_cpu.logprob(x1)),
            ("sample n=1, Jacobi on the device", lambda: jacobi.run(k1, u1)),
            ("sample n=1, numpy stepping sampler", lambda: eng_cpu.sample_from_noise(u1, k1)),
        ):
            p50, p99 = latencies(fn, sizes.latency_calls)
            lines.append(f"| {label} | {p50:.3f} | {p99:.3f} |")
        lines += ["", f"{sizes.latency_calls} calls each.", ""]

    seconds = args.http_seconds if args.http_seconds is not None else sizes.http_seconds
    report.step("Roofline", roofline_step)
    report.step("log p(x)", logprob_step)
    report.step("Sampling", sampling_step)
    report.step("Imputation", imputation_step)
    report.step("Single-row latency", latency_step)
    report.step(
        "HTTP throughput", lambda lines: lines.extend(http_throughput(model, x, dry, seconds, args.http_clients))
    )
    report.add([*report.timings(started), "", *HOW_TO.splitlines()])
    return ok


HOW_TO = """## How to re-measure

The device machine is bare and reaches no registry: the onnxruntime-gpu wheel (built for CUDA 13,
244 MiB) travels from here in chunks, one chunk per device call (a call carries at most 64 MiB
with the working tree; git-ignored files carried by earlier calls stay while the machine is
warm). numpy, onnx, pillow, CUDA 13 and cuDNN 9 (PyTorch's nvidia-* packages) are already there.

1. Here, with network: `scripts/gpu_bundle.sh prepare` downloads `onnxruntime-gpu==1.31.1`
   (cp312, manylinux x86_64) with `pip download` into `.gpu/wheels/`, splits it into
   `.gpu/chunks/ort.part-NN` with `SHA256SUMS`, each chunk as large as a call carries beside the
   working tree, less 2 MiB (53 MiB with the 9 MiB tree; `CHUNK_MB=` to choose), and copies
   `binarized_mnist.npz` (test rows for the parity check) into `.gpu/data/`. For the HTTP step it
   also downloads the serving wheels into `.gpu/serve-wheels/` (pyproject.toml's dependencies but
   numpy, onnx and pillow, with everything they need, for Python 3.12, at the versions of the
   virtualenv here; never plain onnxruntime: 20 wheels, 3.9 MiB) and copies the load generator
   `hey` (6.3 MiB, a Go binary that links only libc; `HEY=PATH` for another) into `.gpu/bin/`.
   `.gpu/` is git-ignored. It prints the device calls to make and what each carries. Run it again
   after the working tree has grown: the chunks are sized for the tree it saw.
2. On the device, the calls back to back (the machine stays warm 30 s after a call). With
   1.31.1 and the 9 MiB working tree, five:

   - calls 1 to 4, one chunk a call (61 MiB each with the tree), command `true`:
     carry `[".gpu/chunks/ort.part-00"]`, then `[".gpu/chunks/ort.part-01"]`, and so on to
     `[".gpu/chunks/ort.part-03"]`;
   - call 5 (58 MiB), carry
     `[".gpu/chunks/ort.part-04", ".gpu/chunks/SHA256SUMS", ".gpu/data", ".gpu/serve-wheels", ".gpu/bin"]`,
     command `PYTHONUNBUFFERED=1 bash scripts/gpu_bundle.sh run --write --out $OUT/gpu-check.md`,
     with `timeout_s` all the device time that is left, less a minute.

   (Where `.gpu/serve-wheels` and `.gpu/bin` would not fit beside the last chunk, prepare prints
   a call of their own, command `true`, before the last.) The last call checks and assembles the
   wheel, installs it and the serving wheels with `pip install --no-index --no-deps --target
   /tmp/site`, puts `hey` on `PATH` and the nvidia-* libraries on `LD_LIBRARY_PATH`, and runs
   bench/gpu_check.py (a few minutes, the HTTP step about two of them). Copy the returned
   `gpu-check.md` over docs/gpu-check.md. The report is rewritten after each step, so a call
   that runs out of time still returns every step it finished, the file then ending with a line
   that says the run did not finish; a step that fails on the device is reported in its own
   section and the steps after it still run. The report's last lines give each step's seconds,
   to size the next run.
3. HTTP under 64 clients (issue 16, part 4) is gpu_check's last step, in that same call:
   `made serve` (`python3 -m made.cli serve` from the checkout, nothing installed) on a store
   holding the model alone, first with `MADE_PROVIDERS=cuda`, then with `MADE_PROVIDERS=cpu`, on
   the same box. GET /models must show the CUDA server's model on `CUDAExecutionProvider` (else
   that side is not measured); the report quotes it and the server's `loaded model ... on ...` log
   line. Each server in turn, each request in turn: `hey -c 64 -z 10s` (after 1 s not counted)
   POSTing /logprob with 1 row and with 64 rows of the parity set, and /sample with n=64 (JSON
   lists): req/s, p50/p99, answers other than 200, and CUDA/CPU against the 5x target. `--http-seconds` and
   `--http-clients` change the length and the clients (`--http-seconds 0` skips the step). Without
   `hey` or the serving wheels the step says so and is skipped; the rest of the report stands.

Here, without a GPU: `python bench/gpu_check.py --cpu-dry-run` runs every step on the CPU provider
with small sizes, the HTTP step's two servers both on the CPU provider for 2 s a request
(tests/test_gpu_check.py runs it on a tiny model). The whole procedure, the wheel's chunks and
the device's Python included, was rehearsed on a CPU machine in a Python 3.12 virtualenv holding
what the device holds (numpy, onnx, pillow, onnxruntime 1.30.0): `PATH=VENV/bin:$PATH bash
scripts/gpu_bundle.sh run --cpu-dry-run --write --out /tmp/gpu-check.md`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("MADE_STORE", str(ROOT / "model_store")))
    parser.add_argument(
        "--model",
        default=os.environ.get("MADE_DEFAULT_MODEL") or None,
        help="default: binarized-mnist if in the store, else the first name",
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows for the parity check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="nats")
    parser.add_argument("--write", action="store_true", help="also write the markdown to --out")
    parser.add_argument("--out", default=None, help="default docs/gpu-check.md (a dry run needs --out to --write)")
    parser.add_argument(
        "--http-seconds",
        type=float,
        default=None,
        help="seconds of `hey -z` per request and server in the HTTP step (default 10; 2 with --cpu-dry-run)",
    )
    parser.add_argument("--http-clients", type=int, default=64, help="hey -c: concurrent clients in the HTTP step")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="every step on the CPU provider with small sizes, no GPU needed (numbers say nothing about a GPU)",
    )
    args = parser.parse_args(argv)
    if args.write and args.out is None and args.cpu_dry_run:
        parser.error("--cpu-dry-run --write needs --out: a dry run must not replace docs/gpu-check.md")
    out = Path(args.out) if args.out else ROOT / "docs" / "gpu-check.md"
    report = Report(out if args.write else None)
    try:
        ok = run(args, report)
    except CheckFailed as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return exc.status
    report.finish()
    status = 0
    if report.failed:
        print(f"gpu_check: these steps failed: {', '.join(report.failed)} (see their sections)", file=sys.stderr)
        status = 1
    if not ok:
        print(
            f"gpu_check: the device's answers differ from the CPU's by more than {args.tolerance:g} nats or "
            "beyond near-tie draws (see the parity section; TF32 matmuls are the usual cause: check the CUDA "
            "provider options above, or set NVIDIA_TF32_OVERRIDE=0)",
            file=sys.stderr,
        )
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
