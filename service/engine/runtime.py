"""onnxruntime sessions: provider choice from MADE_PROVIDERS, and a check of what really runs.

onnxruntime-gpu silently falls back to the CPU when CUDA is missing, so after creating a
session we read session.get_providers() and log the providers actually in use.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from made.errors import ConfigError, ModelStoreError

log = logging.getLogger("made.engine")

_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}


def requested_providers(spec: str | None = None) -> list[str]:
    """Providers to ask for: MADE_PROVIDERS (e.g. 'cuda,cpu'), else CUDA when available, else CPU.

    Unavailable ones are dropped with a warning; the CPU provider is always the last resort.
    """
    spec = os.environ.get("MADE_PROVIDERS", "") if spec is None else spec
    available = ort.get_available_providers()
    if not spec.strip():
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name = _ALIASES.get(item.lower(), item)
            if not name.endswith("ExecutionProvider"):
                known = ", ".join(_ALIASES)
                raise ConfigError(f"unknown provider '{item}' in MADE_PROVIDERS (known: {known})")
            wanted.append(name)
    chosen = [p for p in wanted if p in available]
    dropped = [p for p in wanted if p not in available and p != "CUDAExecutionProvider" or
               (p == "CUDAExecutionProvider" and spec.strip() and p not in available)]
    for p in dropped:
        log.warning("provider %s requested but not available in this onnxruntime build", p)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


# Provider options that keep every provider's float32 arithmetic float32. onnxruntime's CUDA
# provider runs float32 MatMul/Gemm as TF32 on Ampere and later GPUs by default: on an H200 that
# moved log p(x) of the 784-dimensional model by up to 0.02 nats per row (docs/gpu-check.md).
_EXACT_FLOAT32 = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def provider_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """`providers` as onnxruntime takes them, with the options that keep float32 exact."""
    return [(p, _EXACT_FLOAT32[p]) if p in _EXACT_FLOAT32 else p for p in providers]


def make_session(path: Path, providers: list[str], threads: int | None = None,
                 model_bytes: bytes | None = None) -> ort.InferenceSession:
    """A session for the graph at `path`, or for `model_bytes` (a variant of it) when given."""
    options = ort.SessionOptions()
    threads = threads if threads is not None else int(os.environ.get("MADE_THREADS", "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    _use_shared_cpu_arena(options)
    source = model_bytes if model_bytes is not None else str(path)
    try:
        session = ort.InferenceSession(source, sess_options=options,
                                       providers=provider_options(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelStoreError(f"onnxruntime cannot load {path}: {exc}") from None
    actual = session.get_providers()
    if providers and providers[0] != actual[0]:
        log.warning("asked for %s but onnxruntime runs %s for %s", providers[0], actual[0], path)
    return session


_arena_lock = threading.Lock()
_arena_registered = False


def _use_shared_cpu_arena(options: ort.SessionOptions) -> None:
    """Draw the session's CPU memory from one arena shared by the whole process.

    An arena never gives memory back, and an engine holds K + 1 sessions per model: with one
    arena each, every session would keep the peak of its largest batch (~450 MB for the K=8
    MNIST model after 4096-row calls, against ~185 MB shared).
    """
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _arena_registered = True
    options.add_session_config_entry("session.use_env_allocators", "1")


def fix_mask_index(model: onnx.ModelProto, k: int) -> bytes:
    """The graph with input `mask_index` turned into the constant k, serialized.

    The stored graph rebuilds mask k from degrees on every call (Gather, compare, Cast, Mul over
    every weight). With mask_index constant, onnxruntime's constant folding does that once, at
    session creation: a single-row call is then several times faster, a batch of 1000 ~10%.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    inputs = [i for i in graph.input if i.name != "mask_index"]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.append(numpy_helper.from_array(np.array(k, dtype=np.int64), "mask_index"))
    return fixed.SerializeToString()
