"""Check the GPU path on a CUDA machine; write the result to docs/gpu-check.md with --write.

    python bench/gpu_check.py [--store DIR] [--model NAME] [--rows 1000] [--batches 1,64,1024,8192]
                              [--write] [--out docs/gpu-check.md]

1. onnxruntime's CUDA provider really runs (session.get_providers(), not just "available");
2. log p(x) from the CPU and CUDA providers agree within --tolerance (1e-4 nats) for every mask
   of the default model, and for their mixture; rows from $MADE_DATA_DIR/binarized_mnist.npz
   (test split) when its width matches the model, else seeded random binary rows;
3. throughput in rows per second at several batch sizes: log p(x) of the mixture on each
   provider, and sampling through service.engine's Engine.sample where the engine is present.

Exit status: 0 all good, 1 parity off, 2 no usable CUDA provider (or no model). Runs where the
image runs (onnxruntime-gpu with its CUDA and cuDNN); docs/deployment.md shows the docker command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
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


def make_sessions(path: Path) -> tuple[Any, Any]:
    """CPU and CUDA sessions, configured as the service configures them where it is present."""
    try:
        from service.engine.runtime import make_session

        def build(providers: list[str]) -> Any:
            return make_session(path, providers)
    except ImportError:
        import onnxruntime as ort

        def build(providers: list[str]) -> Any:
            return ort.InferenceSession(str(path), providers=providers)

    cpu, cuda = build([CPU]), build([CUDA, CPU])
    if cuda.get_providers()[0] != CUDA:
        raise CheckFailed(f"the CUDA session for {path} runs {cuda.get_providers()}")
    return cpu, cuda


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


def rows_per_second(fn: Callable[[], object], rows: int, min_seconds: float = 0.5) -> float:
    fn()  # warm-up: memory arenas, CUDA kernels
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds or runs >= 200:
            return rows * runs / elapsed


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
    from made.errors import MadeError
    from made.store import list_names, open_model

    names = list_names(store)
    if name is None:
        if not names:
            raise CheckFailed(f"model store {store} holds no models (set --store or MADE_STORE)")
        name = "binarized-mnist" if "binarized-mnist" in names else names[0]
    try:
        return open_model(store, name)
    except MadeError as exc:
        raise CheckFailed(str(exc)) from None


def run(args: argparse.Namespace) -> tuple[str, bool]:
    import onnxruntime as ort

    probe_cuda(ort)
    model = pick_model(Path(args.store), args.model)
    cpu, cuda = make_sessions(model.onnx_path)
    x, source = parity_rows(model.dims, args.rows)
    ll_cpu, ll_cuda = mask_logliks(cpu, x, model.n_masks), mask_logliks(cuda, x, model.n_masks)
    diffs = np.abs(ll_cpu - ll_cuda).max(axis=1)  # (K,)
    mix_diff = float(np.abs(mixture(ll_cpu) - mixture(ll_cuda)).max())
    ok = bool((diffs <= args.tolerance).all() and mix_diff <= args.tolerance)

    lines = [
        "# GPU check",
        "",
        f"Generated by `python bench/gpu_check.py {shlex.join(sys.argv[1:])}` on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- GPU: {gpu_name()}; host: {platform.platform()}, {os.cpu_count()} CPUs",
        f"- onnxruntime: {ort_description(ort)}; CUDA session providers: {', '.join(cuda.get_providers())}",
        f"- NVIDIA_TF32_OVERRIDE={os.environ.get('NVIDIA_TF32_OVERRIDE', '(unset)')}; CUDA provider "
        f"use_tf32={cuda.get_provider_options().get(CUDA, {}).get('use_tf32', '?')}",
        f"- model: {model.name} version {model.version} (D={model.dims}, K={model.n_masks}); rows: {source}",
        "",
        f"## CPU/CUDA parity of log p(x), tolerance {args.tolerance:g} nats: {'passed' if ok else 'FAILED'}",
        "",
        "| mask | max abs difference (nats) | mean log p(x), CPU |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {diffs[k]:.2e} | {ll_cpu[k].mean():.3f} |" for k in range(model.n_masks)]
    lines += [f"| mixture | {mix_diff:.2e} | {mixture(ll_cpu).mean():.3f} |", ""]

    engine = None
    try:
        from service.engine import Engine

        engine = Engine(model, [CUDA, CPU])
    except ImportError:
        pass
    lines += [
        f"## Throughput, rows per second (log p(x) of the {model.n_masks}-mask mixture)",
        "",
        "| batch | log p CPU | log p CUDA | CUDA / CPU | sample (Engine.sample) |",
        "|---|---|---|---|---|",
    ]
    for b in args.batches:
        xb = np.resize(x, (b, model.dims))
        cpu_rate = rows_per_second(lambda: mixture(mask_logliks(cpu, xb, model.n_masks)), b)  # noqa: B023
        cuda_rate = rows_per_second(lambda: mixture(mask_logliks(cuda, xb, model.n_masks)), b)  # noqa: B023
        sample = "n/a (no service.engine)"
        if engine is not None:
            sample = f"{rows_per_second(lambda: engine.sample(b, seed=0), b):,.0f}"  # noqa: B023
        lines.append(f"| {b} | {cpu_rate:,.0f} | {cuda_rate:,.0f} | {cuda_rate / cpu_rate:.1f} | {sample} |")
    lines += [
        "",
        "The sampler steps through the network in numpy on the CPU whatever the provider, so its",
        "column does not depend on the GPU.",
        "",
    ]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("MADE_STORE", str(ROOT / "model_store")))
    parser.add_argument(
        "--model",
        default=os.environ.get("MADE_DEFAULT_MODEL") or None,
        help="default: binarized-mnist if in the store, else the first name",
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows for the parity check")
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64, 1024, 8192])
    parser.add_argument("--tolerance", type=float, default=1e-4, help="nats")
    parser.add_argument("--write", action="store_true", help="also write the markdown to --out")
    parser.add_argument("--out", default=str(ROOT / "docs" / "gpu-check.md"))
    args = parser.parse_args(argv)
    try:
        report, ok = run(args)
    except CheckFailed as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return exc.status
    print(report)
    if args.write:
        Path(args.out).write_text(report)
    if not ok:
        print(
            f"gpu_check: CPU and CUDA log p(x) differ by more than {args.tolerance:g} nats "
            "(see the parity table; TF32 matmuls are the usual cause: check the CUDA provider "
            "options above, or set NVIDIA_TF32_OVERRIDE=0)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
