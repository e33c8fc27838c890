"""Check and measure the GPU path on a CUDA machine in one run; write docs/gpu-check.md with --write.

    python bench/gpu_check.py [--store DIR] [--model NAME] [--rows 1000] [--write] [--out FILE]
    python bench/gpu_check.py --cpu-dry-run [--store DIR] [--model NAME] [--out FILE --write]

1. onnxruntime's CUDA provider really runs (session.get_providers(), not just "available");
2. parity, CPU against CUDA, on --rows rows ($MADE_DATA_DIR/binarized_mnist.npz's test split when
   its width matches the model, else seeded random binary rows): log p(x) of the stored graph per
   mask and of the mixture, and of the engine's scores graph (every mask in one call), within
   --tolerance nats; Jacobi samples on CUDA against the CPU's stepping sampler on the same noise
   (rows that differ, and how close to p their first differing draw was);
3. roofline: a bare graph of the model's float32 MatMuls (no masks), inputs and outputs on the
   device (IOBinding), TF32 off;
4. log p(x) rows/s, one mask and the K-mask mixture, at a range of batches: the engine's per-mask
   passes and the scores graph on the device, the CPU engine beside them, and each as a fraction
   of the roofline;
5. samples/s: Jacobi iteration on the device against the CPU's numpy stepping sampler, on the
   same noise, with the Jacobi pass counts;
6. imputation rows/s (the second half of mask 0's ordering missing) with either sampler;
7. p50/p99 latency of single-row calls;
8. HTTP: `made serve` with MADE_PROVIDERS=cuda, then with MADE_PROVIDERS=cpu, each driven in turn
   by `hey` (bench/gpu_http.py). Without `hey` on PATH, or without the service's dependencies,
   the step says so and is skipped.

--cpu-dry-run runs every step on the CPU provider with small sizes (no GPU needed; what the
tests run): its numbers say nothing about a GPU. `--http-seconds 0` skips the HTTP step. The
report grows as the run goes (bench/gpu_report.py): each step is printed when it ends and, with
--write, the file is rewritten with every step so far (marked unfinished until the end), so a run
stopped by a device call's time limit keeps what it measured; a step that raises is reported in
its section and the others still run. Exit status: 0 all good, 1 parity off or a step failed, 2
no usable CUDA provider (or no model). docs/gpu-check-howto.md gives the procedure on a bare
machine (scripts/gpu_bundle.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench/, made/ and service/ importable

from bench import gpu_steps  # noqa: E402
from bench.gpu_device import CPU, CUDA, DRY_SIZES, GPU_SIZES, CheckFailed, pick_model, probe_cuda  # noqa: E402
from bench.gpu_http import http_throughput  # noqa: E402
from bench.gpu_report import HOW_TO, Report  # noqa: E402


def run(args: argparse.Namespace, report: Report) -> bool:
    """Measure every step into `report`; False where the device's answers differ from the CPU's."""
    import onnxruntime as ort

    dry = args.cpu_dry_run
    sizes = DRY_SIZES if dry else GPU_SIZES
    device = CPU if dry else CUDA
    model = pick_model(Path(args.store), args.model)
    if not dry:
        probe_cuda(ort, model)
    started = time.perf_counter()
    steps = gpu_steps.Steps.start(model, device, dry, sizes, args.rows)
    ok, parity = steps.parity(args.tolerance)
    report.add([*steps.header(ort), *parity])
    seconds = args.http_seconds if args.http_seconds is not None else sizes.http_seconds
    report.step("Roofline", steps.roofline_step)
    report.step("log p(x)", steps.logprob_step)
    report.step("Sampling", steps.sampling_step)
    report.step("Imputation", steps.imputation_step)
    report.step("Single-row latency", steps.latency_step)
    report.step(
        "HTTP throughput",
        lambda lines: lines.extend(http_throughput(model, steps.x, dry, seconds, args.http_clients)),
    )
    report.add([*report.timings(started), "", *HOW_TO.splitlines()])
    return ok


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
