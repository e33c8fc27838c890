"""Where a table model's training epoch goes, and what the grouped heads save: bounded runs on the
shared tables (../shared/data/tables), written into docs/tables.md ("Training cost").

    .venv/bin/python bench/train_cost.py [--tables diamonds,health_insurance,movies] [--batches 150]
        [--threads 1,2] [--batch-sizes 100,500] [--epochs 2] [--rounds 2] [--baseline /work/today]
        [--parts profile,quality,epochs] [--no-doc]

Three parts, each bounded by its arguments (a few hundred minibatches, a few epochs), on the
model of docs/tables.md (bench/tables.py's TABLE_ARGS: 2x256 hidden units, 8 masks, direct):
- profile: the seconds of one epoch split into encoding the rows, per-minibatch data, forward,
  the columns' heads (the loss), backward, optimizer step, and one validation pass (all masks),
  from `--batches` timed minibatches, for the per-column heads with per-minibatch encoding (the
  loop training/table_model.py's reference heads run) and for the grouped heads on rows encoded
  once (training/table_heads.py), at each --threads and --batch-sizes.
- quality: --epochs epochs of training (same seed, full training split) with each of the two,
  valid NLL after each: the same model, so the same NLL to float32 rounding.
- epochs: whole `Trainer` epochs side by side with --baseline (a checkout of the code before,
  run with PYTHONPATH=BASELINE), alternating the two for --rounds rounds: seconds an epoch
  (training and validation, checkpoints included) and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import data_dir  # noqa: E402

DOC = ROOT / "docs" / "tables.md"
DROP = {"movies": ("title",)}
MODEL = {"hidden": [256, 256], "n_masks": 8, "order_agnostic": True, "connectivity_agnostic": True, "direct": True}
PHASES = ("data", "forward", "heads", "backward", "optimizer")

# One bounded training run, in a fresh interpreter with whichever code PYTHONPATH names (this
# checkout or the baseline's): prints {"epoch_seconds": [...], "valid_nll": ...}.
WORKER = """
import json, sys, tempfile, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from made.io.tables import load_table_dataset
from training.table_model import TableMADEConfig
from training.train import Trainer, TrainConfig
data = load_table_dataset(args["path"], drop_columns=tuple(args["drop"]))
cfg = TrainConfig(dataset=args["path"], model=TableMADEConfig(columns=data.schema.to_json(), **args["model"]),
                  max_epochs=args["epochs"], patience=1000, batch_size=args["batch_size"])
with tempfile.TemporaryDirectory() as run:
    started = time.perf_counter()
    trainer = Trainer(cfg, run, data)
    trainer.run(progress=False)
    rows = [json.loads(line) for line in open(run + "/log.jsonl")]
seconds = [rows[0]["seconds"]] + [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])]
print(json.dumps({"epoch_seconds": seconds, "valid_nll": rows[-1]["valid_nll"]}))
"""


def table_path(name: str) -> Path:
    return data_dir() / "tables" / f"{name}_train.csv"


def load(name: str) -> Any:
    from made.io.tables import load_table_dataset

    return load_table_dataset(str(table_path(name)), drop_columns=DROP.get(name, ()))


def build(data: Any, grouped: bool) -> Any:
    """The bench's model of `data`, with grouped heads or every column on the per-column reference."""
    import torch

    from training import table_heads
    from training.table_model import TableMADE, TableMADEConfig

    torch.manual_seed(0)
    model = TableMADE(TableMADEConfig(columns=data.schema.to_json(), **MODEL))
    if not grouped:
        model.heads = table_heads.ColumnHeads(data.schema, grouped=False)
    return model


# --- profile ----------------------------------------------------------------------------------------
def profile(data: Any, grouped: bool, batch_size: int, batches: int) -> dict[str, float]:
    """Seconds per minibatch of each phase (mean over `batches` after 5 warm-up ones), the
    seconds of encoding the training rows once (grouped) and of one validation pass."""
    import torch

    from training.train import build_optimizer, nll_per_example

    model = build(data, grouped)
    opt = build_optimizer(_cfg(data), model)
    x = torch.from_numpy(data.split("train"))
    started = time.perf_counter()
    encoded = model.encode(x) if grouped else None
    encode_s = time.perf_counter() - started
    n = len(x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shuffled = encoded.take(order) if encoded is not None else None
    totals = dict.fromkeys(PHASES, 0.0)
    for b in range(batches + 5):
        start = (b * batch_size) % max(n - batch_size, 1)
        t0 = time.perf_counter()
        if shuffled is not None:
            rows = shuffled.slice(start, start + batch_size)
        else:  # the per-minibatch encoding of the reference: network inputs and every column's bins
            rows = model.heads.encode(x[order[start : start + batch_size]])
        t1 = time.perf_counter()
        params = model(rows.inputs, b % model.n_masks)
        t2 = time.perf_counter()
        loss = -model.heads.logliks(params, rows, model._column_loglik).sum(dim=1).mean()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if b >= 5:
            for phase, (a, z) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True):
                totals[phase] += z - a
    out = {phase: s / batches for phase, s in totals.items()}
    started = time.perf_counter()
    nll_per_example(model, data.split("valid"), None)
    out["validation"] = time.perf_counter() - started
    out["encode"] = encode_s
    out["batches_per_epoch"] = -(-n // batch_size)
    # an epoch: its minibatches and a validation pass (the grouped heads encode once per run)
    out["epoch"] = sum(out[p] for p in PHASES) * out["batches_per_epoch"] + out["validation"]
    return out


def _cfg(data: Any) -> Any:
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig

    return TrainConfig(dataset="bench", model=TableMADEConfig(columns=data.schema.to_json(), **MODEL))


# --- quality ----------------------------------------------------------------------------------------
def quality(data: Any, epochs: int, batch_size: int) -> dict[str, list[float]]:
    """Valid NLL after each of `epochs` epochs, trained (same seed, same minibatches and masks)
    with the per-column heads and with the grouped heads."""
    from training import table_heads
    from training.train import Trainer

    out: dict[str, list[float]] = {}
    for label, grouped in (("per-column", False), ("grouped", True)):
        cfg = _cfg(data)
        cfg.max_epochs, cfg.patience, cfg.batch_size = epochs, 1000, batch_size
        real = table_heads.groupable
        table_heads.groupable = real if grouped else (lambda col: False)  # the reference for every column
        try:
            with tempfile.TemporaryDirectory() as run:
                Trainer(cfg, run, data).run(progress=False)
                rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
        finally:
            table_heads.groupable = real
        out[label] = [r["valid_nll"] for r in rows]
    return out


# --- epochs side by side --------------------------------------------------------------------------
def epochs_side_by_side(
    name: str, baseline: Path, epochs: int, rounds: int, threads: int, batch_size: int
) -> dict[str, Any]:
    """Per-epoch seconds (the median over rounds of each run's mean epoch) of this checkout and of
    the baseline, run alternately in fresh interpreters, and each one's last valid NLL."""
    args = {
        "path": str(table_path(name)),
        "drop": list(DROP.get(name, ())),
        "model": MODEL,
        "epochs": epochs,
        "threads": threads,
        "batch_size": batch_size,
    }
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    nll: dict[str, float] = {}
    for _ in range(rounds):
        for label, code in (("before", baseline), ("after", ROOT)):
            env = {**os.environ, "PYTHONPATH": str(code)}
            done = subprocess.run(
                [sys.executable, "-c", WORKER, json.dumps(args)],
                cwd=code,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[label].append(sum(result["epoch_seconds"]) / len(result["epoch_seconds"]))
            nll[label] = result["valid_nll"]
    med = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    return {"seconds": seconds, "median": med, "ratio": med["before"] / med["after"], "valid_nll": nll}


# --- the document -----------------------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def write_doc(results: dict[str, Any], command: str) -> None:
    from bench.common import write_sections
    from training.recipe import small_data_recipe

    busy = (
        "busy (other work ran beside it), so read the ratios, not the seconds"
        if max(results["load"]) > 1.5
        else "quiet"
    )
    lines = ["## Training cost", ""]
    lines += [
        f"Generated by `{command}` (bounded: {results['batches']} timed minibatches a setting, "
        f"{results['n_epochs']} epochs a run). Model: docs/tables.md's ({MODEL['hidden']} hidden units, "
        f"{MODEL['n_masks']} masks, order- and connectivity-agnostic, direct). Load average "
        f"{results['load'][0]:.1f} at the start, {results['load'][1]:.1f} at the end on "
        f"{os.cpu_count()} cores: the machine was {busy}.",
        "",
    ]
    if results.get("profile"):
        lines += [
            "Where a minibatch's time goes (ms per minibatch; `per-column`: every column's head by its own calls, "
            "with its bins computed per minibatch and per mask, as before; `grouped`: columns of a kind scored by one "
            "tensor operation per group, on rows encoded once a run), and the seconds of an epoch they make "
            "(its minibatches and one validation pass over all masks):",
            "",
            "| table | heads | threads | batch | data | forward | heads (loss) | backward | optimizer "
            "| validation s | epoch s | encoding once s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["profile"]:
            lines.append(
                f"| {r['table']} | {r['path']} | {r['threads']} | {r['batch_size']} | "
                + " | ".join(_ms(r[p]) for p in PHASES)
                + f" | {r['validation']:.2f} | {r['epoch']:.1f} | {r['encode']:.2f} |"
            )
        lines.append("")
    if results.get("quality"):
        lines += [
            "The same model either way: valid NLL after each epoch of the same run (same seed, minibatches and masks):",
            "",
            "| table | per-column | grouped | largest difference |",
            "|---|---|---|---|",
        ]
        for name, q in results["quality"].items():
            diff = max(abs(a - b) for a, b in zip(q["per-column"], q["grouped"], strict=True))
            lines.append(
                f"| {name} | {', '.join(f'{v:.4f}' for v in q['per-column'])} | "
                f"{', '.join(f'{v:.4f}' for v in q['grouped'])} | {diff:.1e} |"
            )
        lines.append("")
    if results.get("epochs"):
        lines += [
            f"Whole epochs side by side with the code before (`{results['baseline']}`, alternated, "
            f"{results['rounds']} rounds, median; `Trainer` epochs with validation and checkpoints, "
            f"{results['side_threads']} thread, batch {results['side_batch']}). The code before had no bounds, "
            "so its numeric heads did less (no truncation): the ratio is a lower bound. Its schema also differs "
            "(no bounds, precision inferred otherwise), so its NLLs are not comparable with those after; the "
            "same-model check is the table above.",
            "",
            "| table | before s/epoch | after s/epoch | faster | valid NLL before / after |",
            "|---|---|---|---|---|",
        ]
        for name, e in results["epochs"].items():
            lines.append(
                f"| {name} | {e['median']['before']:.2f} | {e['median']['after']:.2f} | {e['ratio']:.1f}x | "
                f"{e['valid_nll']['before']:.3f} / {e['valid_nll']['after']:.3f} |"
            )
        lines.append("")
    recipe = [(n, *small_data_recipe(n)) for n in (124, 500, 1000, 5000, 43152)]
    lines += [
        "Small tables: `made train` derives --batch-size, --max-epochs and --patience from the training rows "
        "unless given (training/recipe.py): at least 10 updates an epoch, 10,000 updates "
        "before --max-epochs stops a run and 1,000 before patience does; from 1,000 rows up the defaults are "
        "those of before (100, 200, 20).",
        "",
        "| training rows | batch size | updates an epoch | max epochs | patience |",
        "|---|---|---|---|---|",
        *(f"| {n} | {bs} | {-(-n // bs)} | {ep} | {pat} |" for n, bs, ep, pat in recipe),
        "",
        "Threads: `made train` runs a table model on 1 torch thread unless --threads says otherwise: its "
        "matrices are small (2 threads gain at most the matmuls' share), and on a shared machine 2 threads made "
        "every minibatch several times slower in the table above.",
        "",
        "A run whose best validation epoch is its last prints `still improving: ... train longer with "
        "--max-epochs N` and records it in metrics.json (`still_improving`, `warning`); rerunning with the same "
        "--out and a larger --max-epochs resumes it.",
        "",
    ]
    write_sections(DOC, lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="diamonds,health_insurance,movies")
    parser.add_argument("--parts", default="profile,quality,epochs")
    parser.add_argument("--batches", type=int, default=150, help="timed minibatches a profile setting")
    parser.add_argument("--threads", default="1,2", help="torch threads of the profile")
    parser.add_argument("--batch-sizes", default="100,500", help="batch sizes of the profile")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each quality and side-by-side run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the side-by-side runs")
    parser.add_argument("--baseline", default="/work/today", help="checkout of the code to compare with")
    parser.add_argument("--no-doc", action="store_true", help="print the figures only")
    args = parser.parse_args()
    import torch

    tables, parts = args.tables.split(","), args.parts.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    results: dict[str, Any] = {
        "batches": args.batches,
        "n_epochs": args.epochs,
        "rounds": args.rounds,
        "baseline": args.baseline,
        "side_threads": 1,
        "side_batch": 100,
        "profile": [],
        "quality": {},
        "epochs": {},
    }
    load_start = os.getloadavg()[0]
    for name in tables:
        data = load(name)
        if "profile" in parts:
            # every batch size at the first thread count; the other thread counts at the first size
            settings = [(threads[0], bs) for bs in sizes] + [(t, sizes[0]) for t in threads[1:]]
            for (t, bs), heads in itertools.product(settings, ("per-column", "grouped")):
                torch.set_num_threads(t)
                r = profile(data, heads == "grouped", bs, args.batches)
                results["profile"].append({"table": name, "path": heads, "threads": t, "batch_size": bs, **r})
                print(json.dumps(results["profile"][-1]), flush=True)
        torch.set_num_threads(1)
        if "quality" in parts:
            results["quality"][name] = quality(data, args.epochs, 100)
            print(name, json.dumps(results["quality"][name]), flush=True)
        if "epochs" in parts:
            results["epochs"][name] = epochs_side_by_side(name, Path(args.baseline), args.epochs, args.rounds, 1, 100)
            print(name, json.dumps(results["epochs"][name]), flush=True)
    results["load"] = (load_start, os.getloadavg()[0])
    if not args.no_doc:
        write_doc(results, "bench/train_cost.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "bench/train_cost.py")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
