"""`made report`: a stored table model's samples against held-out rows, as PNGs and one HTML page
(service.batch.report), with sdmetrics' scores computed by its definitions
(service.batch.report_metrics) and checked against sdmetrics itself where the bench extra is
installed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from made.cli import main
from service.batch.report_metrics import cramers_v, ks_complement, quality, tv_complement

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "model_store"


def made(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def held_out_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows drawn from the shipped diamonds model with another seed (held out from the
    report's own draw), plus a column the model does not have."""
    folder = tmp_path_factory.mktemp("held")
    rows = folder / "rows.csv"
    assert main(["sample", "--store", str(SHIPPED), "--name", "diamonds", "--n", "300", "--seed", "7",
                 "--out", str(rows)]) == 0  # fmt: skip
    lines = rows.read_text().splitlines()
    path = folder / "held_out.csv"
    path.write_text("\n".join([lines[0] + ",note", *(f"{line},x" for line in lines[1:])]) + "\n")
    return path


def test_report_writes_plots_scores_and_a_page_that_links_them(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code, stdout, err = made(capsys, "report", str(SHIPPED / "diamonds"), str(held_out_csv), "--out", str(out),
                             "--n", "400", "--seed", "1")  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["rows"] == 300 and summary["model"] == "diamonds"
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    names = json.loads((out / "scores.json").read_text())["columns"]
    assert len(images) == len(names) + 2  # a plot per column, the pair heatmap, the correlations
    for image in images:
        assert not Path(image).is_absolute() and (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads((out / "scores.json").read_text())
    for key in ("overall", "column_shapes", "column_pair_trends"):
        assert 0.0 <= scores[key] <= 1.0
        assert summary[key] == pytest.approx(scores[key], abs=1e-4)
    assert all(0.0 <= s <= 1.0 for s in scores["columns"].values())
    pair_scores = [p["score"] for p in scores["pairs"] if p["score"] is not None]
    assert len(scores["pairs"]) == 45 and all(0.0 <= s <= 1.0 for s in pair_scores)
    # the model against its own draws: close in every column (a broken sampler or reader is not)
    assert min(scores["columns"].values()) > 0.8 and scores["overall"] > 0.85
    assert "note" in page  # the CSV's extra column is named as left out


def test_report_errors_are_one_line_with_exit_2(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "r")
    code, _, err = made(capsys, "report", "no-such-model", str(held_out_csv), "--out", out, "--store", str(SHIPPED))
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("carat,cut\n0.3,Ideal\n")
    code, _, err = made(capsys, "report", "diamonds", str(lacking), "--out", out, "--store", str(SHIPPED))
    assert code == 2 and err.count("\n") == 1 and "lacks the model's columns color" in err
    code, _, err = made(capsys, "report", str(SHIPPED / "mushrooms"), str(held_out_csv), "--out", out)
    assert code == 2 and "bit model" in err
    code, _, err = made(capsys, "report", "diamonds", str(tmp_path / "none.csv"), "--out", out)
    assert code == 2 and "is not a file" in err
    bad = tmp_path / "bad.csv"
    header, first, *rest = held_out_csv.read_text().splitlines()
    bad.write_text("\n".join([header, "abc" + first[first.index(",") :], *rest]) + "\n")
    code, _, err = made(capsys, "report", "diamonds", str(bad), "--out", out, "--store", str(SHIPPED))
    assert code == 2 and "is not a number" in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "index.html").exists()


def test_report_takes_the_contracts_spelling(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONTRACT.md: `made report --store DIR --name M --dataset TEST.csv --output DIR` was refused
    (MODEL and TEST_CSV were required positionals, --output unknown); it is the same report as
    `made report M TEST.csv --out DIR`. A model or rows given twice, or not at all, is one line."""
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--n", "50", "--seed", "1"]
    code, one, err = made(capsys, "report", "diamonds", str(held_out_csv), "--store", str(SHIPPED), "--out",
                          str(first), *common)  # fmt: skip
    assert code == 0, err
    code, other, err = made(capsys, "report", "--store", str(SHIPPED), "--name", "diamonds", "--dataset",
                            str(held_out_csv), "--output", str(second), *common)  # fmt: skip
    assert code == 0, err
    assert json.loads(one)["overall"] == json.loads(other)["overall"]
    assert (first / "scores.json").read_bytes() == (second / "scores.json").read_bytes()
    code, _, err = made(capsys, "report", "diamonds", str(held_out_csv), "--name", "diamonds", "--out", str(first))
    assert code == 2 and err.count("\n") == 1 and "give the model and the test rows once" in err
    code, _, err = made(capsys, "report", "--name", "diamonds", "--store", str(SHIPPED), "--out", str(first))
    assert code == 2 and err.count("\n") == 1 and "needs a model and held-out rows" in err


def test_report_refuses_a_level_the_model_does_not_have_as_score_does(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header, first, *rest = held_out_csv.read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index("cut")] = "Idéal"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    out = tmp_path / "r"
    code, _, err = made(capsys, "report", "diamonds", str(bad), "--out", str(out), "--store", str(SHIPPED))
    expected = f"{bad} line 2, column 'cut': 'Idéal' is not a level of this column"
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    code, _, score_err = made(capsys, "score", "--store", str(SHIPPED), "--name", "diamonds", "--input", str(bad),
                              "--output", str(tmp_path / "s.csv"), "--no-progress")  # fmt: skip
    assert code == 2 and expected in score_err  # the same cell, the same words
    assert not out.exists()


def test_report_of_one_row_prints_json_with_null_where_a_score_cannot_be_computed(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = tmp_path / "one.csv"
    one.write_text("\n".join(held_out_csv.read_text().splitlines()[:2]) + "\n")
    out = tmp_path / "r"
    code, stdout, err = made(capsys, "report", "diamonds", str(one), "--out", str(out), "--store", str(SHIPPED),
                             "--n", "50")  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in {stdout}"))
    assert summary["rows"] == 1 and summary["column_pair_trends"] is None  # no pair of one row counts
    assert json.loads((out / "scores.json").read_text())["column_pair_trends"] is None


def test_report_into_a_file_or_under_one_is_one_line_before_sampling(
    held_out_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for out, expected in ((a_file, "is a file; name a folder"), (a_file / "sub", "a_file is a file")):
        code, _, err = made(capsys, "report", "diamonds", str(held_out_csv), "--out", str(out),
                            "--store", str(SHIPPED))  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert a_file.read_text() == "keep"


def test_scores_follow_sdmetrics_definitions() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert ks_complement(a, a.copy()) == 1.0
    assert ks_complement(a, a + 10.0) == 0.0
    assert ks_complement(a, np.array([1.0, 2.0, np.nan])) == pytest.approx(0.5)  # NaN left out
    assert tv_complement((np.array(["x", "x", "y", "y"]), np.array(["x", "x", "x", "y"]))) == pytest.approx(0.75)
    table_a, table_b = np.array(list("aabbab")), np.array(list("xxyyyx"))
    from scipy.stats.contingency import association, crosstab

    assert cramers_v(table_a, table_b) == pytest.approx(association(crosstab(table_a, table_b).count, "cramer"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    real = {"x": x, "y": 2 * x + rng.normal(size=500), "c": np.where(x > 0, "p", "n").astype(object)}
    q = quality(real, {k: v.copy() for k, v in real.items()})
    assert q.overall == pytest.approx(1.0) and all(p.counts for p in q.pairs)
    shuffled = {k: rng.permutation(v) for k, v in real.items()}
    assert quality(real, shuffled).column_pair_trends < 0.8  # shapes kept, pairs broken
    assert quality(real, shuffled).column_shapes == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sdmetrics 0.32 deprecates the single-table report
def test_scores_equal_sdmetrics_quality_report(held_out_csv: Path) -> None:
    """The report's scores are sdmetrics 0.32's QualityReport's (bench extra only)."""
    pd = pytest.importorskip("pandas")
    reports = pytest.importorskip("sdmetrics.reports.single_table", reason="sdmetrics: `make bench-extra`")
    from made.store.versions import open_model
    from service.batch.report import held_out, sampled
    from service.engine.registry import build_engine

    engine = build_engine(open_model(SHIPPED, "diamonds"))
    schema = engine.schema  # type: ignore[attr-defined]
    real, _, _ = held_out(schema, held_out_csv)
    samp = sampled(schema, np.asarray(engine.sample(400, 3)))
    ours = quality(real, samp)
    meta = {"columns": {c: {"sdtype": "numerical" if v.dtype.kind == "f" else "categorical"} for c, v in real.items()}}
    report = reports.QualityReport()
    report.generate(pd.DataFrame(real), pd.DataFrame(samp), meta, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    assert ours.overall == pytest.approx(report.get_score(), abs=1e-9)
    assert ours.column_shapes == pytest.approx(props["Column Shapes"], abs=1e-9)
    assert ours.column_pair_trends == pytest.approx(props["Column Pair Trends"], abs=1e-9)


def test_a_held_out_cell_is_compared_as_the_level_it_names() -> None:
    """Inference writes the levels of whole numbers that pandas wrote as 2.0 as '2' (the samples
    decode so), while the held-out file still holds '2.0': compared as text, every real cell
    differed from every sampled one (a column shape score near 0 for the same rows). A cell is
    compared as the level it names; an absent or unknown cell as before."""
    from made.core.schema import Column, Schema
    from made.io.tables import infer_column
    from service.batch.report import column_cells, sampled

    cells = ["2.0", "5.0", "", "7.0", "5.0", "2.0"] * 20
    col = infer_column("kids", cells, "t.csv")
    assert col.levels == ("2", "5", "7", "NA")
    real = column_cells(col, cells, lambda i: f"line {i + 2}")
    assert real[:4].tolist() == ["2", "5", "NA", "7"]
    codes = np.array([[float(col.level_of(c.strip() or "NA")), 0.0] for c in cells])  # type: ignore[arg-type]
    drawn = sampled(Schema((col, Column("other", "binary", ("a", "b")))), codes)["kids"]
    assert tv_complement((real, drawn)) == 1.0
    # a cell '?' stays unknown, not a level
    assert column_cells(col, ["?", "2"], lambda i: "x").tolist() == ["?", "2"]
