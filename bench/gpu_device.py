"""bench/gpu_check.py's device, model and parity helpers: which onnxruntime runs, whether its
CUDA provider really starts, the model and rows to measure, the per-mask log-likelihoods of one
session and what one run measures (the GPU run's sizes or the CPU dry run's small ones)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT

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


def probe_cuda(ort: Any, model: Any) -> None:
    """Refuse early, with the reason, unless a CUDA session of the model's stored dense graph
    really runs on the GPU (the serving image has no onnx to build a probe graph with)."""
    from made.store.files import DENSE_GRAPH

    available = ort.get_available_providers()
    if CUDA not in available:
        raise CheckFailed(
            f"no CUDA provider: {ort_description(ort)} offers {', '.join(available)}; run this on "
            "an NVIDIA GPU machine with onnxruntime-gpu and the CUDA and cuDNN versions its build "
            "needs, e.g. in the made:gpu image (docs/deployment.md)"
        )
    session = ort.InferenceSession(str(model.file(DENSE_GRAPH)), providers=[CUDA, CPU])
    actual = session.get_providers()
    if actual[0] != CUDA:
        raise CheckFailed(
            f"the CUDA provider of {ort_description(ort)} is listed but did not start (the session "
            f"runs {', '.join(actual)}): check nvidia-smi, that the CUDA and cuDNN libraries this "
            "build needs are on the library path, and that the container was given a GPU"
        )


def providers_for(device: str) -> list[str]:
    return [device] if device == CPU else [device, CPU]


def make_sessions(model: Any, device: str = CUDA) -> tuple[Any, Any]:
    """CPU and `device` sessions of the model's stored graph (its weights fed from the version's
    weights file), configured as the service configures them."""
    from service.engine.runtime import make_session

    path, weights = model.onnx_path, model.weights()
    cpu, dev = make_session(path, [CPU], None, weights), make_session(path, providers_for(device), None, weights)
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
