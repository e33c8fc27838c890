"""`made report`: how a stored table model's samples compare with held-out rows, as PNG plots and
one self-contained HTML page (docs/quality.md).

The model draws n rows (the engine's sample, the same as `made sample`); each column's real and
sampled cells are compared (histograms on shared bins or level bar charts, with sdmetrics'
column shape score), and each pair of columns (sdmetrics' pair trend score, a heatmap of them,
and the real and sampled correlation matrices). The scores are sdmetrics' QualityReport's, by
its definitions (service.batch.report_metrics), so the report needs no bench extra; the plots
need matplotlib (the train extra). The held-out rows are read as text by made's one table reader
and compared as they are: a cell outside the model's bounds is shown, not refused.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from made.core.errors import ConfigError, DataError
from made.core.schema import ABSENT_LEVEL, MISSING_CELLS, Column, Schema
from made.io.atomic import atomic_write_bytes, atomic_write_text, check_output_folder
from made.io.csv import encode_column
from made.io.tables import read_table
from made.store.versions import StoredModel
from service.batch.report_metrics import PairScore, Quality, quality
from service.engine.registry import build_engine

REAL, SAMPLED = "#1f77b4", "#ff7f0e"


@dataclass(frozen=True)
class Report:
    quality: Quality
    files: list[Path]  # every file written, the HTML page last
    rows: int  # held-out rows compared
    left_out: list[str]  # columns of the CSV the model does not have


def column_cells(col: Column, cells: list[str], where: Callable[[int], str]) -> np.ndarray:
    """A column's text cells -> float64 (NaN where absent) for a numeric column, else text (an
    absent cell: the level "NA"). A category's cells are read as every CSV is (made.io.csv's
    encode_column, as `made score` reads them): a level the model does not have is refused, and
    a cell is compared as the level it names, as the samples spell it ('2.0' is the level '2' of
    a column whose levels inference wrote as integers); `where(i)` names row i in errors."""
    if col.kind != "numeric":
        codes = encode_column(col, cells, where)
        shown = [ABSENT_LEVEL if c.strip() in MISSING_CELLS else c.strip() for c in cells]  # "?": unknown
        return np.array(
            [t if math.isnan(code) else col.levels[int(code)] for t, code in zip(shown, codes, strict=True)],
            dtype=object,
        )
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        text = cell.strip()
        try:
            out[i] = math.nan if text in MISSING_CELLS else float(text)
        except ValueError:
            raise DataError(f"{where(i)}, column '{col.name}': {cell!r} is not a number") from None
    return out


def held_out(schema: Schema, path: Path) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """The CSV's cells of each of the model's columns, its row count, and the columns it has that
    the model does not; a column of the model that the CSV lacks is an error."""
    header, rows, lines = read_table(path)
    missing = [n for n in schema.names if n not in header]
    if missing:
        raise DataError(
            f"{path} lacks the model's column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(the model has: {', '.join(schema.names)})"
        )

    def where(i: int) -> str:
        return f"{path} line {lines[i]}"

    cells = {col.name: column_cells(col, [r[header.index(col.name)] for r in rows], where) for col in schema.columns}
    return cells, len(rows), [h for h in header if h not in schema.names]


def sampled(schema: Schema, values: np.ndarray) -> dict[str, np.ndarray]:
    """The engine's encoded samples -> cells as held_out gives them."""
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(schema.columns):
        decoded = [col.decode(v) for v in values[:, j]]
        if col.kind == "numeric":
            out[col.name] = np.array([math.nan if d in (None, ABSENT_LEVEL) else float(d) for d in decoded])
        else:
            out[col.name] = np.array([str(d) for d in decoded], dtype=object)
    return out


def _png(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def column_plot(plt: Any, name: str, real: np.ndarray, samp: np.ndarray, score: float, path: Path) -> Path:
    """Real vs sampled: densities on shared bins over the real rows' 0.5-99.5% range (cells
    beyond it in the edge bins) for numbers, level frequencies for categories."""
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    if real.dtype.kind == "f":
        r, s = real[~np.isnan(real)], samp[~np.isnan(samp)]
        lo, hi = np.percentile(r, [0.5, 99.5]) if len(r) else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
        for data, color, label in ((r, REAL, "held-out"), (s, SAMPLED, "sampled")):
            ax.hist(np.clip(data, edges[0], edges[-1]), bins=edges, density=True, alpha=0.5, color=color, label=label)
    else:
        levels = sorted(set(real.tolist()) | set(samp.tolist()))[:30]
        x = np.arange(len(levels))
        for data, color, label, shift in ((real, REAL, "held-out", -0.2), (samp, SAMPLED, "sampled", 0.2)):
            freq = [np.mean(data == lv) for lv in levels]
            ax.bar(x + shift, freq, width=0.4, color=color, label=label)
        ax.set_xticks(x, levels, rotation=45 if len(levels) > 6 else 0, ha="right" if len(levels) > 6 else "center")
    ax.set_title(f"{name}  (score {score:.3f})", fontsize=10)
    ax.legend(fontsize=8)
    path = _png(fig, path)
    plt.close(fig)
    return path


def pair_heatmap(plt: Any, names: list[str], pairs: list[PairScore], path: Path) -> Path:
    """The pair trend score of every pair (grey: cannot be computed; a dot: counts in Column
    Pair Trends)."""
    idx = {n: i for i, n in enumerate(names)}
    grid = np.full((len(names), len(names)), np.nan)
    size = max(4.0, 0.45 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    for p in pairs:
        i, j = idx[p.a], idx[p.b]
        grid[i, j] = grid[j, i] = p.score
        if p.counts:
            ax.plot([j, i], [i, j], "k.", markersize=4)
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("pair trend score (dot: counts in Column Pair Trends)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    path = _png(fig, path)
    plt.close(fig)
    return path


def correlation_plot(plt: Any, real: dict[str, np.ndarray], samp: dict[str, np.ndarray], path: Path) -> Path | None:
    """Pearson correlations of the numeric columns, held-out beside sampled (None: < 2 numeric)."""
    names = [n for n, v in real.items() if v.dtype.kind == "f"]
    if len(names) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(3.5, 0.4 * len(names) + 2), max(3.0, 0.4 * len(names) + 1.5)))
    for ax, data, title in ((axes[0], real, "held-out"), (axes[1], samp, "sampled")):
        matrix = np.stack([data[n] for n in names], axis=1)
        matrix = matrix[~np.isnan(matrix).any(axis=1)]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(matrix, rowvar=False) if len(matrix) > 1 else np.full((len(names),) * 2, np.nan)
        image = ax.imshow(np.ma.masked_invalid(corr), vmin=-1.0, vmax=1.0, cmap="coolwarm")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"Pearson r, {title}", fontsize=10)
    fig.colorbar(image, ax=axes, fraction=0.046)
    path = _png(fig, path)
    plt.close(fig)
    return path


def _no_nan(value: Any) -> Any:
    """value with every NaN as None (null: JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def html_page(model: StoredModel, test_csv: Path, n: int, seed: int, report: Report, images: dict[str, str]) -> str:
    """One page: the scores, a row per column with its plot, the pairs worst first."""
    q = report.quality
    e = html.escape
    head = (
        f"<h1>made report: {e(model.name)} version {e(model.version)}</h1>"
        f"<p>{n} rows sampled (seed {seed}) against {report.rows} held-out rows of {e(str(test_csv))}. "
        "Scores as sdmetrics' QualityReport defines them (1 is best): KSComplement or TVComplement per column, "
        "CorrelationSimilarity or ContingencySimilarity per pair.</p>"
        f"<table><tr><th>overall</th><th>Column Shapes</th><th>Column Pair Trends</th></tr><tr><td>{_fmt(q.overall)}"
        f"</td><td>{_fmt(q.column_shapes)}</td><td>{_fmt(q.column_pair_trends)}</td></tr></table>"
    )
    if report.left_out:
        head += f"<p>Columns of the CSV the model does not have (left out): {e(', '.join(report.left_out))}</p>"
    cols = "".join(
        f'<tr><td>{e(c)}</td><td>{_fmt(s)}</td><td><img src="{e(images[c])}" alt="{e(c)}"></td></tr>'
        for c, s in q.shapes.items()
    )
    worst = sorted(q.pairs, key=lambda p: (not p.counts, np.nan_to_num(p.score, nan=2.0)))
    pairs = "".join(
        f"<tr><td>{e(p.a)}</td><td>{e(p.b)}</td><td>{p.metric}</td><td>{_fmt(p.score)}</td><td>{_fmt(p.real)}</td>"
        f"<td>{_fmt(p.sampled)}</td><td>{'yes' if p.counts else 'no'}</td></tr>"
        for p in worst
    )
    pictures = "".join(f'<p><img src="{e(images[k])}" alt="{k}"></p>' for k in ("pairs", "correlations") if k in images)
    style = (
        "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>made report: {e(model.name)}</title>"
        f"<style>{style}</style></head><body>{head}<h2>Columns</h2><table><tr><th>column</th><th>score</th>"
        f"<th>held-out vs sampled</th></tr>{cols}</table><h2>Pairs</h2>{pictures}<table><tr><th>column</th>"
        "<th>column</th><th>metric</th><th>score</th><th>real r / Cramér's V</th><th>sampled r</th>"
        f"<th>counts</th></tr>{pairs}</table></body></html>\n"
    )


def write_report(model: StoredModel, test_csv: Path, out: Path, n: int, seed: int) -> Report:
    """Sample n rows of the model, compare them with the CSV's rows, write out/index.html with
    its PNGs beside it (and out/scores.json); returns the scores and the files."""
    if n < 2:
        raise ConfigError(f"--n is {n}; a report compares at least 2 sampled rows")
    if not model.is_table:
        raise DataError(f"model {model.name} is a bit model; `made report` compares a table model's columns")
    check_output_folder(out)  # before the sampling, not after it
    engine: Any = build_engine(model)
    schema = engine.schema
    real, rows, left_out = held_out(schema, Path(test_csv))
    samp = sampled(schema, np.asarray(engine.sample(n, seed)))
    q = quality(real, samp)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot make the folder {out}: {exc.strerror or exc}") from None
    images: dict[str, str] = {}
    files: list[Path] = []
    for j, name in enumerate(schema.names):
        path = column_plot(plt, name, real[name], samp[name], q.shapes[name], out / f"column_{j:02d}.png")
        images[name] = path.name
        files.append(path)
    for key, path_or_none in (
        ("pairs", pair_heatmap(plt, schema.names, q.pairs, out / "pairs.png")),
        ("correlations", correlation_plot(plt, real, samp, out / "correlations.png")),
    ):
        if path_or_none is not None:
            images[key] = path_or_none.name
            files.append(path_or_none)
    report = Report(q, files, rows, left_out)
    scores = {
        "model": model.name,
        "version": model.version,
        "n": n,
        "seed": seed,
        "rows": rows,
        "overall": q.overall,
        "column_shapes": q.column_shapes,
        "column_pair_trends": q.column_pair_trends,
        "columns": q.shapes,
        "pairs": [p.__dict__ for p in q.pairs],
    }
    atomic_write_text(out / "scores.json", json.dumps(_no_nan(scores), indent=1, allow_nan=False))
    page = out / "index.html"
    atomic_write_text(page, html_page(model, Path(test_csv), n, seed, report, images))
    return Report(q, [*files, out / "scores.json", page], rows, left_out)
