"""`made score` throughput: rows/s locally and on an in-process Ray (`--ray local`, 2 CPUs), for a
CSV and a Parquet file of the model's own samples, and what a million rows would cost.

    .venv/bin/python bench/score_bench.py [--rows 200000] [--model mushrooms] [--write]

Each configuration runs once on the whole file. `made score` reports when its first block was
written: the time until then is the start-up (loading the model; for Ray, starting Ray and its
actors) and the rows after it give the steady rate; one million rows is extrapolated from both.
The outputs of the local and the Ray runs are compared byte for byte (CSV) or table for table
(Parquet). Ray runs are skipped, with a note, when Ray is not installed (pip install made[ray]).
--write puts the table in docs/score.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from made.store.versions import open_model  # noqa: E402
from service.batch.outputs import ScoreResult  # noqa: E402
from service.batch.score import score_file  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.engine.table_engine import TableEngine  # noqa: E402

COMMAND = ".venv/bin/python bench/score_bench.py --write"


def make_inputs(store: Path, name: str, rows: int, folder: Path) -> dict[str, Path]:
    """CSV and Parquet files of `rows` samples of the model (a table model's as records)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = open_model(store, name)
    if model.is_table:
        engine = TableEngine(model)
        records = engine.schema.decode_rows(engine.sample(rows, seed=0))
        table = pa.table({c: [r[c] for r in records] for c in engine.schema.names})
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(table, folder / "rows.csv", pa_csv.WriteOptions(quoting_style="needed"))
    else:
        bits = Engine(model).sample(rows, seed=0)
        np.savetxt(folder / "rows.csv", bits, fmt="%d", delimiter=",")
        table = pa.table({f"x_{j}": bits[:, j] for j in range(bits.shape[1])})
    pq.write_table(table, folder / "rows.parquet", row_group_size=65536)
    return {"csv": folder / "rows.csv", "parquet": folder / "rows.parquet"}


@dataclass
class Run:
    mode: str  # "local" | "ray local"
    kind: str  # "csv" | "parquet"
    size_mb: float
    seconds: float
    rate: float  # rows / s over the whole run, start-up included
    startup: float  # s until the first block was written
    steady: float  # rows / s after it
    million: float  # s for 1,000,000 rows, extrapolated: start-up + 1e6 / steady
    same: bool | None = None  # Ray's output equals the local one


def timed(store: Path, name: str, source: Path, output: Path, ray: str | None, batch: int) -> ScoreResult:
    return score_file(store, name, source, output, batch_size=batch, ray=ray, progress=False)


def same_output(a: Path, b: Path) -> bool:
    if a.suffix == ".csv":
        return a.read_bytes() == b.read_bytes()
    import pyarrow.parquet as pq

    return bool(pq.read_table(a).equals(pq.read_table(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the full file")
    parser.add_argument("--model", default="mushrooms")
    parser.add_argument("--store", default=str(ROOT / "model_store"))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--no-ray", action="store_true", help="local runs only")
    parser.add_argument("--write", action="store_true", help="write docs/score.md")
    args = parser.parse_args(argv)
    store = Path(args.store)
    try:
        import ray.data  # noqa: F401

        have_ray = not args.no_ray
    except ImportError:
        have_ray = False
    modes: list[tuple[str, str | None]] = [("local", None)] + ([("ray local", "local")] if have_ray else [])

    load_before = os.getloadavg()[0]
    results: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        folder = Path(tmp)
        print(f"sampling {args.rows:,} rows of {args.model} ...", file=sys.stderr, flush=True)
        inputs = make_inputs(store, args.model, args.rows, folder)
        for kind, full in inputs.items():
            outputs = {}
            for label, ray in modes:
                out = folder / f"out-{label.replace(' ', '-')}.{kind}"
                print(f"{label} {kind}: {args.rows:,} rows ...", file=sys.stderr, flush=True)
                r = timed(store, args.model, full, out, ray, args.batch_size)
                outputs[label] = out
                steady = r.steady_rows_per_s
                if not 0 < steady < float("inf"):  # every row came in the first block: no steady rate
                    steady = float("nan")
                results.append(
                    Run(
                        label,
                        kind,
                        full.stat().st_size / 1e6,
                        r.seconds,
                        r.rows / r.seconds,
                        r.first_block_seconds,
                        steady,
                        r.first_block_seconds + 1e6 / steady,
                    )
                )
            if len(outputs) == 2:
                results[-1].same = same_output(outputs["local"], outputs["ray local"])
    load_after = os.getloadavg()[0]

    model = open_model(store, args.model)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# `made score`: rows per second, locally and on Ray",
        "",
        f"Regenerate: `{COMMAND}` (`--rows N`, `--model NAME`; Ray rows need `pip install made[ray]`).",
        "",
        f"Model `{args.model}` version {model.version} (D = {model.dims}, K = {model.n_masks}) from "
        f"{store.name}/; input: {args.rows:,} of its own samples (seed 0), as a header-less CSV of 0/1 "
        f"and as Parquet (uint8 columns, row groups of 65,536); output of the same kind, `--batch-size "
        f"{args.batch_size}`. {os.cpu_count()} logical CPUs ({platform.machine()}), {when}; load average "
        f"{load_before:.1f} before, {load_after:.1f} after (the machine is shared: other jobs ran too).",
        "",
        "Start-up: the time until the first block was written (loading the model; for Ray also starting "
        "Ray with 2 CPUs and its actors, and scoring its first block); steady rows/s: the rows after that "
        "block over the time after it. One million rows = start-up + 1,000,000 / steady rate.",
        "",
        "| mode | file | MB | seconds | rows/s | start-up s | steady rows/s | 1M rows, s | same output as local |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        same = "" if r.same is None else "yes" if r.same else "**no**"
        steady, million = ("n/a", "n/a") if r.steady != r.steady else (f"{r.steady:,.0f}", f"{r.million:.0f}")
        lines.append(
            f"| {r.mode} | {r.kind} | {r.size_mb:.1f} | {r.seconds:.1f} | {r.rate:,.0f} | {r.startup:.1f} | "
            f"{steady} | {million} | {same} |"
        )
    if not have_ray:
        lines += [
            "",
            "Ray rows: not run ("
            + ("--no-ray" if args.no_ray else "Ray is not installed: pip install made[ray]")
            + ").",
        ]
    lines += ["", *notes(results), ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (ROOT / "docs" / "score.md").write_text(text, encoding="utf-8")
        print("wrote docs/score.md", file=sys.stderr)
    return 0


def notes(results: list[Run]) -> list[str]:
    by = {(r.mode, r.kind): r for r in results}
    out = []
    for kind in ("csv", "parquet"):
        local, ray = by.get(("local", kind)), by.get(("ray local", kind))
        if local and ray and local.steady == local.steady and ray.steady == ray.steady:
            out.append(
                f"- {kind}: one million rows take about {local.million:.0f} s locally and {ray.million:.0f} s "
                f"on the local Ray ({ray.million / local.million:.1f}x); Ray's start-up is "
                f"{ray.startup:.0f} s against {local.startup:.1f} s, its steady rate "
                f"{ray.steady / local.steady:.2f}x the local one."
            )
    out.append(
        "- Locally, `made score` reads and writes in the main thread and scores blocks on as many threads "
        "as there are cores (one onnxruntime thread each). On Ray the same work runs in actors, plus "
        "Arrow conversions and object-store copies, and the driver writes the one output file: on one "
        "machine it cannot beat the local path; it pays off on a cluster with many more cores than "
        "this machine, where the rate grows with the actors until the driver's reading of the results "
        "and writing of the one file limit it."
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
