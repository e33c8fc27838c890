"""onnxruntime sessions: provider choice (Settings.providers), and a check of what really runs.

onnxruntime-gpu silently falls back to the CPU when CUDA is missing, so after creating a
session we read session.get_providers() and log the providers actually in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from made.core.errors import ConfigError, ModelStoreError
from service.settings import PROVIDER_ALIASES

log = logging.getLogger("made.engine")

_ALIASES = PROVIDER_ALIASES


def requested_providers(spec: Sequence[str] = ()) -> list[str]:
    """Providers to ask for: `spec` (Settings.providers, from MADE_PROVIDERS, e.g. ['cuda',
    'cpu']), else CUDA when available, else CPU.

    Unavailable ones are dropped with a warning; the CPU provider is always the last resort.
    """
    available = ort.get_available_providers()
    explicit = any(item.strip() for item in spec)
    if not explicit:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = []
        for item in spec:
            item = item.strip()
            if not item:
                continue
            name = _ALIASES.get(item.lower(), item)
            if not name.endswith("ExecutionProvider"):
                known = ", ".join(_ALIASES)
                raise ConfigError(f"unknown provider '{item}' in MADE_PROVIDERS (known: {known})")
            wanted.append(name)
    chosen = [p for p in wanted if p in available]
    dropped = [
        p
        for p in wanted
        if p not in available
        and p != "CUDAExecutionProvider"
        or (p == "CUDAExecutionProvider" and explicit and p not in available)
    ]
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


# The arrays a session's initializers read (make_session's `initializers`): onnxruntime uses
# their memory as it is, so they live as long as the session does.
_FED: weakref.WeakKeyDictionary[ort.InferenceSession, list[ort.OrtValue]] = weakref.WeakKeyDictionary()


def make_session(
    path: Path,
    providers: list[str],
    threads: int | None = None,
    initializers: Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """A session for the stored graph at `path`; `threads` intra-op threads (Settings.threads;
    None or 0: onnxruntime's choice). A stored graph's external initializers are read by
    onnxruntime from the file they name, beside `path` (made.store.files: weights.safetensors,
    checked by open_model), into memory it owns; `initializers` supplies them instead, from
    arrays that must then live as long as the session (they are kept with it). Serving passes
    none: onnxruntime copies what it is given, so fed arrays would be held twice."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No CPU arena: an arena keeps the peak of the largest batch for good (~65 MB after one
    # 4096-row call of the MNIST model); without it, a call's buffers go back to malloc, and
    # large ones to the system (release_freed_memory).
    options.enable_cpu_mem_arena = False
    # No spinning: by default onnxruntime's intra-op threads spin-wait for the next run, taking
    # the cores the sampler and the HTTP loop need. Under bench/load.py's mix (2 cores) turning it
    # off served 45-55 requests/s instead of 27-33 with lower p99 on /logprob and /conditionals;
    # single-row /logprob alone stayed within run-to-run noise (168-215 vs 182-184 req/s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fed = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in (initializers or {}).values()]
    if initializers:
        options.add_external_initializers(list(initializers), fed)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=provider_options(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelStoreError(f"onnxruntime cannot load {path}: {exc}") from None
    _FED[session] = fed
    actual = session.get_providers()
    if providers and providers[0] != actual[0]:
        log.warning("asked for %s but onnxruntime runs %s for %s", providers[0], actual[0], path)
    return session


def release_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the system: allocations from 256 KiB up are
    mapped and unmapped on their own (glibc's default raises that threshold to the largest
    block freed so far, up to 32 MiB, and then keeps such blocks in the heap after a request
    has used them). No effect outside glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 << 10)
    mallopt(m_trim_threshold, 1 << 20)


def rows_alike(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """run(x) for a graph whose outputs are per row, a single row sent as two copies of itself:
    onnxruntime multiplies one row by another kernel than several, rounding the float32 sums
    another way, and a row's answer is to be the same to the bit alone or in a batch (merged by
    the batcher, or a particle filter's pass of one row)."""
    if len(x) != 1:
        return run(x)
    return run(np.repeat(x, 2, axis=0))[:1]


def limit_blas_threads(threads: int) -> None:
    """Cap at `threads` the threads numpy's BLAS (OpenBLAS, MKL or BLIS, through threadpoolctl)
    uses for one matrix product, for the whole process (Settings.blas_threads); 0 leaves the
    library's setting. Call it from the main thread: OpenBLAS may ignore a cap set from another
    thread once the main thread has set one (OpenBLAS 0.3.31, tests/test_service_settings.py)."""
    if threads > 0:
        threadpool_limits(limits=threads, user_api="blas")


def trim_heap() -> None:
    """Hand the free pages inside glibc's heap back to the system (malloc_trim): loading a model
    frees many small blocks (files read, graphs built, the stored network), which would
    otherwise stay resident for the life of the server. No effect outside glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)
