"""What the bench scripts share: the repository's folders, timing of calls, the dense-MatMul
graph a roofline is measured on, `made train` runs and their arguments, and the common options.

Imported as bench.common by scripts run from the repository (each puts the repository root on
sys.path first), so it imports nothing of the project at module level.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "results"  # `made train` runs of the results benches
MADE = Path(sys.executable).with_name("made")  # the CLI of the interpreter running the bench


# The shipped table models' network and masks (the Makefile's TABLE_ARGS, less the epochs): what
# the table benches train with `made train`.
TABLE_MODEL_ARGS = [
    "--hidden",
    "256,256",
    "--masks",
    "8",
    "--order-agnostic",
    "--connectivity-agnostic",
    "--direct",
    "--seed",
    "0",
    "--threads",
    "1",
]


def data_dir() -> Path:
    """The shared data folder ($MADE_DATA_DIR, else ../shared/data beside the repository)."""
    from service.settings import data_directory

    return data_directory(ROOT)


# --- timing ---------------------------------------------------------------------------------------
def rows_per_second(fn: Callable[[], object], rows: int, min_seconds: float = 0.5, max_runs: int = 200) -> float:
    """rows x calls / seconds of repeated calls of fn (each handling `rows` rows), after one
    warm-up call, for at least min_seconds or max_runs calls."""
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


# --- the roofline's graph -------------------------------------------------------------------------
def dense_matmul_graph(net: Any, flush_subnormals: bool = False) -> tuple[bytes, list[str]]:
    """A serialized ONNX graph of the network's dense float32 MatMuls (no masks, bias or
    activation; the direct connections' too), input "x", and its output names: what a MatMul
    reaches on these shapes. flush_subnormals: subnormal weights as 0 (on a CPU they can slow a
    MatMul many times over; docs/gpu-check.md)."""
    from onnx import TensorProto, helper, numpy_helper

    def weight(w: np.ndarray) -> np.ndarray:
        w = np.array(w, dtype=np.float32)
        if flush_subnormals:
            w[np.abs(w) < np.finfo(np.float32).tiny] = 0.0
        return w

    nodes, inits, h = [], [], "x"
    for i, w in enumerate(net.weights):
        inits.append(numpy_helper.from_array(weight(w), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"h{i}"]))
        h = f"h{i}"
    outputs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)]
    if net.direct is not None:
        inits.append(numpy_helper.from_array(weight(net.direct), "Wd"))
        nodes.append(helper.make_node("MatMul", ["x", "Wd"], ["hd"]))
        outputs.append(helper.make_tensor_value_info("hd", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", net.dims])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), [o.name for o in outputs]


# --- `made train` runs ----------------------------------------------------------------------------
def train_args(
    hidden: str,
    masks: int,
    *flags: str,
    weight_decay: str | None = "1e-4",
    max_epochs: int,
    patience: int,
) -> list[str]:
    """`made train` arguments in the order the result tables show them: --hidden, --masks, the
    flags (e.g. --order-agnostic, --direct), --weight-decay, --max-epochs, --patience."""
    out = ["--hidden", hidden, "--masks", str(masks), *flags]
    if weight_decay is not None:
        out += ["--weight-decay", weight_decay]
    return [*out, "--max-epochs", str(max_epochs), "--patience", str(patience)]


def made_train(args: list[str], out: Path, threads: int, log: Path) -> None:
    """`made train ARGS --seed 0 --threads T --no-progress --out OUT`, its command line and
    output appended to `log`; raises CalledProcessError where it fails."""
    cmd = [str(MADE), "train", *args, "--seed", "0", "--threads", str(threads), "--no-progress", "--out", str(out)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=fh)


def finished_metrics(run: Path) -> dict[str, Any] | None:
    """A finished run's metrics.json (one that has its epoch count), else None."""
    path = run / "metrics.json"
    if not path.exists():
        return None
    metrics: dict[str, Any] = json.loads(path.read_text())
    return metrics if metrics.get("epochs") is not None else None


def fresh_run(run: Path, fresh: bool) -> None:
    """With --fresh, delete an earlier run first (otherwise a finished run is reused and an
    unfinished one resumes)."""
    if fresh and run.exists():
        shutil.rmtree(run)


# --- options --------------------------------------------------------------------------------------
def model_options(parser: argparse.ArgumentParser, data: Path) -> None:
    """--store, --name (default: the shipped binarized-mnist) and --data (a data set's .npz)."""
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--name", default="binarized-mnist")
    parser.add_argument("--data", type=Path, default=data)


def publish(text: str, path: Path, write: bool) -> None:
    """Print a script's markdown `text`; with `write`, also replace the document at `path` with it,
    atomically (a temporary file renamed), and say so on stderr."""
    print(text)
    if write:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"wrote {path}", file=sys.stderr)


# --- documents written by several scripts --------------------------------------------------------
def _sections(lines: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """A markdown document's lines before its first `## ` heading, and its (heading, body) sections."""
    head: list[str] = []
    parts: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("## "):
            parts.append((line[3:].strip(), []))
        elif parts:
            parts[-1][1].append(line)
        else:
            head.append(line)
    return head, parts


def _trimmed(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def write_sections(path: Path, generated: list[str]) -> None:
    """Write `generated` (markdown lines) into the document at `path`, replacing the `## `
    sections it has and the preamble if it has one, and keeping every other section where it is:
    docs/tables.md is written by bench/tables.py, bench/train_cost.py and by hand, each owning
    its sections. New sections go at the end. Replaced atomically."""
    new_head, new_parts = _sections(generated)
    old_head, old_parts = _sections(path.read_text().splitlines() if path.exists() else [])
    fresh = dict(new_parts)
    parts = [(h, fresh.pop(h, body)) for h, body in old_parts]
    parts += [(h, body) for h, body in new_parts if h in fresh]
    out = [*_trimmed(new_head if _trimmed(new_head) else old_head), ""]
    for heading, body in parts:
        out += [f"## {heading}", "", *_trimmed(body), ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)


def publish_sections(lines: list[str], path: Path, write: bool) -> None:
    """Print a script's `## ` sections (markdown lines); with `write`, also put them in the
    document at `path` in place of its sections of those names (write_sections)."""
    print("\n".join(lines))
    if write:
        write_sections(path, lines)
        print(f"wrote {path}", file=sys.stderr)
