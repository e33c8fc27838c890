"""Engine benchmark: fast vs naive sampling, log p(x) against the dense-GEMM roofline, latency.

    .venv/bin/python bench/engine_bench.py [--store model_store] [--name binarized-mnist]
                                           [--threads 1] [--naive-rows 1000] [--write]

Every figure is a ratio of two measurements taken side by side in this one run, so that a busy
or slow machine moves both sides together:
1. sampling n rows: the stepping sampler vs Engine.naive_sample (one graph run per dimension),
   on the same noise; by default both in full, n = 1000.
2. log p(x) rows/s at batch 1000 (one mask, and the K-mask mixture) times the FLOPs a row needs
   (Network.flops_per_row(), K times that for the mixture), over the float32 FLOP/s of the same
   dense matmuls in numpy and in a bare onnxruntime graph of MatMuls: the roofline fraction.
3. single-row latency, p50 and p99, of logprob and of sample(n=1); and of sample(n=64), a
   merged batch of single-sample requests.
Throughputs are the best of --repeats interleaved runs (least disturbed by other work).
Without the model in the store (the default model is trained separately), a randomly
initialised model of the same shape stands in and the output says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# BLAS fixes its thread count when numpy is first imported: read --threads before that.
_THREADS = "1"
for _i, _arg in enumerate(sys.argv):
    if _arg == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
    elif _arg.startswith("--threads="):
        _THREADS = _arg.split("=", 1)[1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _THREADS

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dense_matmul_graph, latencies  # noqa: E402
from made.core.errors import ModelNotFound  # noqa: E402
from made.store.versions import open_model  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.engine.network import Network, load_network  # noqa: E402
from service.engine.runtime import make_session  # noqa: E402
from training.export import export_random_model  # noqa: E402

BATCH = 1000
DOC = ROOT / "docs" / "engine-bench.md"


def random_default_model(store: Path, name: str, seed: int = 0) -> Path:
    """A stand-in for the default model: D=784, hidden [500, 500], K=8 connectivity-agnostic
    masks in natural order, direct connections, random weights; written to `store`."""
    return export_random_model(store, name, 784, [500, 500], 8, direct=True, seed=seed)


def dense_matmul_session(net: Network, threads: int) -> ort.InferenceSession:
    """A bare onnxruntime graph of the network's dense matmuls (no masks, bias or ReLU): what
    onnxruntime's own MatMul reaches on these shapes."""
    graph, _ = dense_matmul_graph(net)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])


def numpy_dense(net: Network) -> Callable[[np.ndarray], object]:
    """The same dense matmuls in numpy (its BLAS) into preallocated outputs."""
    weights = [np.ascontiguousarray(w) for w in net.weights]
    if net.direct is not None:
        weights.append(np.ascontiguousarray(net.direct))
    rng = np.random.default_rng(0)
    inputs = [rng.random((BATCH, w.shape[0]), dtype=np.float32) for w in weights]
    outputs = [np.empty((BATCH, w.shape[1]), dtype=np.float32) for w in weights]

    def run(x: np.ndarray) -> object:
        inputs[0] = x
        if net.direct is not None:
            inputs[-1] = x
        for a, w, out in zip(inputs, weights, outputs, strict=True):
            np.matmul(a, w, out=out)
        return outputs

    return run


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds, the functions interleaved."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stored_session(engine: Engine, threads: int) -> ort.InferenceSession:
    """The model's graph as stored (masks rebuilt per call, mask_index as input)."""
    return make_session(engine.model.onnx_path, engine.providers, threads, engine.model.weights())


def sampling_rows(engine: Engine, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Figure 1: the stepping sampler against the naive one (a graph run per dimension), on the
    same noise, mask 0."""
    dims = engine.dims
    u = np.random.default_rng(0).random((args.n, dims))
    naive_rows = min(args.naive_rows or args.n, args.n)
    fast_time = best_of({"fast": lambda: engine.sampler.run(0, u)}, args.repeats)["fast"]
    print(f"naive sampler: {dims} graph runs on {naive_rows} rows...", file=sys.stderr)
    start = time.perf_counter()
    naive = engine.naive_sample(u[:naive_rows], 0)
    naive_time = (time.perf_counter() - start) * args.n / naive_rows
    fast = engine.sampler.run(0, u[:naive_rows])[0]
    same = int((fast == naive).all(axis=1).sum())
    how = "timed in full, once"
    if naive_rows < args.n:
        how = f"**extrapolated**: timed on {naive_rows} rows, scaled x{args.n / naive_rows:g}"
    return [
        ("sampling", f"fast sampler, n={args.n}, mask 0", f"{fast_time:.3f} s", "best of runs"),
        ("sampling", f"naive sampler ({dims} graph runs), n={args.n}", f"{naive_time:.1f} s", how),
        (
            "sampling",
            "**speed-up, fast vs naive**",
            f"**{naive_time / fast_time:.0f}x**",
            f"target >= 30x; identical samples on {same}/{naive_rows} rows",
        ),
    ]


def roofline_rows(engine: Engine, net: Network, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Figure 2: log p(x) at batch 1000 against the dense-MatMul roofline (numpy's and
    onnxruntime's), and the stored graph against the engine's dense pass."""
    dims, k = engine.dims, engine.n_masks
    rows: list[tuple[str, str, str, str]] = []
    x = (np.random.default_rng(1).random((BATCH, dims)) < 0.3).astype(np.float64)
    xf = x.astype(np.float32)
    flops = net.flops_per_row()
    dense_ort = dense_matmul_session(net, args.threads)
    dense_np = numpy_dense(net)
    stored_k = np.array(0, dtype=np.int64)
    stored = stored_session(engine, args.threads)
    times = best_of(
        {
            "numpy": lambda: dense_np(xf),
            "ort": lambda: dense_ort.run(None, {"x": xf}),
            "one": lambda: engine.logprob(x, masks=0),
            "mix": lambda: engine.logprob(x, masks="all"),
            "stored": lambda: stored.run(["logits"], {"x": xf, "mask_index": stored_k}),
            "dense": lambda: engine.logits(xf, 0),
            # every mask in one graph (the engine's path on CUDA; not on the CPU)
            "graph_mix": lambda: engine.graph_scores().scores(xf),
        },
        args.repeats,
    )
    gemm_np = flops * BATCH / times["numpy"]
    gemm_ort = flops * BATCH / times["ort"]
    roofline = max(gemm_np, gemm_ort)
    direct = " + 2 D^2" if net.direct is not None else ""
    rows.append(
        (
            "roofline",
            f"FLOPs per row, one mask (2 x sum fan_in x fan_out{direct})",
            f"{flops / 1e6:.2f} M",
            f"the mixture needs K={k} times that",
        )
    )
    rows.append(
        (
            "roofline",
            f"dense float32 matmul, numpy, batch {BATCH}",
            f"{gemm_np / 1e9:.1f} GFLOP/s",
            "same shapes, same threads",
        )
    )
    rows.append(
        (
            "roofline",
            f"dense float32 MatMul, onnxruntime, batch {BATCH}",
            f"{gemm_ort / 1e9:.1f} GFLOP/s",
            "a bare graph of the same MatMuls",
        )
    )
    rows.append(
        ("roofline", "**roofline**: the faster of the two", f"{roofline / 1e9:.1f} GFLOP/s", "the denominator below")
    )
    for key, label, work in (("one", "log p(x), one mask", flops), ("mix", f"log p(x), mixture of {k}", k * flops)):
        rate = BATCH / times[key]
        achieved = rate * work
        rows.append(("roofline", f"{label}, batch {BATCH}", f"{rate:,.0f} rows/s", f"{achieved / 1e9:.1f} GFLOP/s"))
        rows.append(
            (
                "roofline",
                f"**{label}: fraction of roofline**",
                f"**{achieved / roofline:.2f}**",
                f"target >= 0.5; {achieved / gemm_np:.2f} of numpy's, {achieved / gemm_ort:.2f} of onnxruntime's",
            )
        )
    graph_rate = BATCH / times["graph_mix"]
    rows.append(
        (
            "roofline",
            f"log p(x), mixture of {k}, scores graph (all masks in one call, the CUDA path), batch {BATCH}",
            f"{graph_rate:,.0f} rows/s",
            f"{graph_rate * k * flops / roofline:.2f} of roofline; "
            f"{times['mix'] / times['graph_mix']:.2f}x the engine's",
        )
    )
    rows.append(
        (
            "roofline",
            "logits only, stored graph (masks rebuilt per call), batch 1000",
            f"{BATCH / times['stored']:,.0f} rows/s",
            "mask_index as input",
        )
    )
    rows.append(
        (
            "roofline",
            "logits only, the mask's weights fed to one dense pass (what the engine runs), batch 1000",
            f"{BATCH / times['dense']:,.0f} rows/s",
            f"{times['stored'] / times['dense']:.2f}x the stored graph",
        )
    )
    return rows


def latency_rows(engine: Engine, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Figure 3: single-row latency, p50 and p99."""
    x = (np.random.default_rng(1).random((BATCH, engine.dims)) < 0.3).astype(np.float64)
    xf = x.astype(np.float32)
    stored_k = np.array(0, dtype=np.int64)
    stored = stored_session(engine, args.threads)
    rows: list[tuple[str, str, str, str]] = []
    x1, x1f = x[:1], xf[:1]
    for label, fn in (
        ("logprob, 1 row, mixture", lambda: engine.logprob(x1)),
        ("logprob, 1 row, one mask", lambda: engine.logprob(x1, masks=0)),
        (
            "logits, 1 row, stored graph (masks rebuilt per call)",
            lambda: stored.run(["logits"], {"x": x1f, "mask_index": stored_k}),
        ),
        ("logits, 1 row, the engine's dense pass", lambda: engine.logits(x1f, 0)),
        ("sample(n=1), mixture", lambda: engine.sample(1, seed=0)),
        # what dynamic batching hands the engine: 64 single-sample requests, all K masks in one
        # stepping loop
        ("sample(n=64), mixture", lambda: engine.sample(64, seed=0)),
    ):
        calls = args.calls if "sample" not in label else max(20, args.calls // 5)
        p50, p99 = latencies(fn, calls)
        rows.append(("latency", label, f"p50 {p50:.3f} ms", f"p99 {p99:.3f} ms ({calls} calls)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "model_store"))
    parser.add_argument("--name", default="binarized-mnist")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op and BLAS threads (default 1)")
    parser.add_argument("--n", type=int, default=1000, help="rows sampled by both samplers")
    parser.add_argument(
        "--naive-rows", type=int, default=None, help="time the naive sampler on fewer rows and extrapolate (default: n)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="rounds for throughputs")
    parser.add_argument("--calls", type=int, default=300, help="calls for each latency")
    parser.add_argument("--write", action="store_true", help=f"write the table to {DOC}")
    args = parser.parse_args(argv)
    if str(args.threads) != _THREADS:
        parser.error("--threads must be given as a separate argument")  # read before numpy

    tmp = None
    try:
        model = open_model(Path(args.store), args.name)
        source = f"`{args.name}` version {model.version} from {args.store}"
    except ModelNotFound:
        tmp = tempfile.TemporaryDirectory(prefix="engine-bench-")
        model = open_model(random_default_model(Path(tmp.name), args.name), args.name)
        source = (
            f"**stand-in**: `{args.name}` is not in {args.store} yet, so a randomly "
            "initialised model of the same shape (D=784, hidden [500, 500], K=8, direct) "
            "built with made.onnx_graph.build_graph"
        )
    print(f"model: {source}", file=sys.stderr)
    engine = Engine(model, ["CPUExecutionProvider"], threads=args.threads)
    net = load_network(engine.model)
    rows = [*sampling_rows(engine, args), *roofline_rows(engine, net, args), *latency_rows(engine, args)]

    table = render(rows, source, args, engine)
    print(table)
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(table)
        print(f"wrote {DOC}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


def render(rows: list[tuple[str, str, str, str]], source: str, args: argparse.Namespace, engine: Engine) -> str:
    lines = [
        "# Engine benchmark",
        "",
        f"Model: {source}; D={engine.dims}, hidden {engine.manifest.hidden}, "
        f"K={engine.n_masks}, direct connections: {engine.direct}.",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs; onnxruntime {ort.__version__} "
        f"({', '.join(engine.providers)}), numpy {np.__version__}; {args.threads} thread(s) for "
        "onnxruntime and BLAS alike; best of "
        f"{args.repeats} interleaved runs for throughputs. {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine shows "
        "mostly in the p99s).",
        "",
        f"Regenerate: `.venv/bin/python bench/engine_bench.py --threads {args.threads} --write` "
        "(`make bench` prints the same table without writing it).",
        "",
        "| figure | measurement | value | note |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
