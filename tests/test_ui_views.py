"""The playground's views in a real browser (issue 27), against `made serve` of the shipped store.

For each view: it loads with no console error and no failed or off-host request (the `ui_page`
fixture fails the test otherwise); an interaction (a seed, an erased half, the noise slider, the
form, a CSV) shows the numbers the API answers to the same request, sent here with httpx (the page
holds each number it shows, exact, in a data-value attribute, and each image in data-value or
data-values); keyboard-only use (Tab) reaches every control of the view, and every control has a
label. The ids are those listed at the top of service/http/static/app.js.

Where a model's version has a reference (GET /models/{name}/reference: held-out rows' log p
quantiles, a few held-out rows, the training marginals), the page ranks a record among the
held-out rows, sets conditional samples beside the training marginals and offers the held-out rows
(test digits); where it answers 404 the page falls back to draws from the model, and that 404 is
expected (`references` below), not a failed request.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

IMAGE_VIEWS = ["samples", "impute", "denoise", "surprisal", "card"]
TABLE_VIEWS = ["record", "given", "csv", "card"]
SLOW_MS = 60_000  # an answer of the shipped models on a busy 2-core machine (explain, denoise)


def post(base: str, path: str, body: Any, **kwargs: Any) -> Any:
    r = httpx.post(base + path, json=body, timeout=120, **kwargs)
    r.raise_for_status()
    return r.json()


def settled(page: Page) -> None:
    """Every request the page started has been answered and drawn."""
    page.wait_for_selector('body[data-busy="0"]', state="attached", timeout=SLOW_MS)


def open_view(page: Page, model: str, view: str) -> None:
    page.wait_for_selector("#model-picker:not([disabled])")
    if page.input_value("#model-picker") != model:
        page.select_option("#model-picker", model)
        page.wait_for_selector(f"#nav-{view}")
    page.click(f"#nav-{view}")
    page.wait_for_selector(f'#view-{view}[data-ready="1"]', timeout=SLOW_MS)
    settled(page)


def value(page: Page, selector: str) -> Any:
    raw = page.get_attribute(selector, "data-value")
    assert raw is not None, f"{selector} shows no value"
    return None if raw == "null" else json.loads(raw) if raw[:1] in "[{" else float(raw)


def values(page: Page, selector: str) -> list[float]:
    raw = page.get_attribute(selector, "data-values")
    assert raw is not None, f"{selector} shows no values"
    return [float(v) for v in json.loads(raw)]


def bits_of(text: str) -> list[int | None]:
    return [None if c == "?" else int(c) for c in text]


def close(a: float | None, b: float | None, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def model_of(base: str, name: str) -> dict[str, Any]:
    return httpx.get(f"{base}/models/{name}", timeout=30).json()


def reference_of(base: str, name: str) -> dict[str, Any] | None:
    """GET /models/{name}/reference; None where the served version has none (404)."""
    r = httpx.get(f"{base}/models/{name}/reference", timeout=30)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="session")
def references(ui_base_url: str) -> dict[str, dict[str, Any] | None]:
    """Every served model's reference, or None."""
    models = httpx.get(ui_base_url + "/models", timeout=30).json()["models"]
    return {m["name"]: reference_of(ui_base_url, m["name"]) for m in models}


@pytest.fixture(autouse=True)
def _absent_references_are_expected(request: pytest.FixtureRequest) -> None:
    """The page asks for a model's reference and falls back on its 404: for the models without
    one (and only for their reference's path), that 404 is not a problem of the page."""
    if "ui_page" not in request.fixturenames:
        return
    recorder = request.getfixturevalue("ui_recorder")
    for name, reference in request.getfixturevalue("references").items():
        if reference is None:
            recorder.expect_status(404, f"/models/{name}/reference")


# --- each view's interaction shows the API's numbers ---------------------------------------------


def test_root_redirects_to_the_playground_and_the_default_model_opens_on_its_samples(
    ui_page: Page, ui_base_url: str
) -> None:
    r = httpx.get(ui_base_url + "/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    ui_page.wait_for_selector('#view-samples[data-ready="1"]', timeout=SLOW_MS)
    assert ui_page.input_value("#model-picker") == "binarized-mnist"
    assert "view=samples" in ui_page.url


def test_every_model_has_a_card_with_its_manifest(ui_page: Page, ui_base_url: str) -> None:
    models = httpx.get(ui_base_url + "/models", timeout=30).json()["models"]
    for m in models:
        manifest = model_of(ui_base_url, m["name"])
        open_view(ui_page, m["name"], "card")
        card = ui_page.inner_text("#card")
        assert f"version {manifest['version']}" in card
        assert manifest["dataset"]["name"] in card and manifest["activation"] in card
        for sha in manifest["files"].values():
            assert sha in card
        nll = ui_page.get_attribute("#card [data-value]", "data-value")
        assert nll is not None and close(float(nll), manifest["metrics"]["test_nll"])


def test_samples_show_the_apis_samples_for_a_seed(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.fill("#samples-seed", "5")
    ui_page.select_option("#samples-n", "16")
    ui_page.click("#samples-go")
    settled(ui_page)
    shown = ui_page.eval_on_selector_all("#samples-grid canvas", "cs => cs.map(c => c.dataset.value)")
    answer = post(ui_base_url, "/sample", {"n": 16, "seed": 5})
    assert shown == ["".join(map(str, row)) for row in answer["samples"]]


def test_erasing_a_half_shows_the_apis_imputation(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "binarized-mnist", "impute")
    ui_page.fill("#impute-seed", "7")
    ui_page.click("#impute-load")
    settled(ui_page)
    ui_page.click("#impute-hide-right")
    ui_page.click("#impute-go")
    settled(ui_page)
    x = bits_of(ui_page.get_attribute("#impute-canvas", "data-value") or "")
    assert x.count(None) == 28 * 14  # the right half, hidden
    answer = post(ui_base_url, "/impute", {"x": [x], "n_samples": 4, "seed": 7, "n_importance": 100})
    assert values(ui_page, "#impute-heatmap") == answer["marginals"][0]
    assert close(value(ui_page, "#impute-logprob"), answer["logprob_observed"][0])
    assert close(value(ui_page, "#impute-ess"), answer["ess"][0])
    completions = ui_page.eval_on_selector_all("#impute-completions canvas", "cs => cs.map(c => c.dataset.value)")
    assert completions == ["".join(map(str, row)) for row in answer["samples"][0]]


def test_the_noise_slider_shows_the_apis_denoised_marginals(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "binarized-mnist", "denoise")
    ui_page.focus("#denoise-eps")
    ui_page.keyboard.press("ArrowRight")  # 0.10 -> 0.11, denoised on change
    settled(ui_page)
    assert value(ui_page, "#denoise-eps-value") == pytest.approx(0.11)
    noisy = bits_of(ui_page.get_attribute("#denoise-noisy", "data-value") or "")
    clean = bits_of(ui_page.get_attribute("#denoise-clean", "data-value") or "")
    wrong = sum(a != b for a, b in zip(noisy, clean, strict=True))
    assert value(ui_page, "#denoise-wrong-noisy") == wrong > 0
    body = {"x": [noisy], "eps": 0.11, "n_samples": 0, "n_importance": 50, "seed": 0}
    answer = post(ui_base_url, "/denoise", body)
    assert values(ui_page, "#denoise-marginals") == answer["marginals"][0]
    assert close(value(ui_page, "#denoise-logprob"), answer["logprob_noisy"][0])
    assert ui_page.get_attribute("#denoise-most-likely", "data-value") == "".join(map(str, answer["most_likely"][0]))


def test_per_pixel_surprisal_is_the_apis_explain(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "binarized-mnist", "surprisal")
    ui_page.fill("#surprisal-seed", "4")
    ui_page.click("#surprisal-load")
    settled(ui_page)
    digit = post(ui_base_url, "/sample", {"n": 1, "seed": 4})["samples"][0]
    assert ui_page.get_attribute("#surprisal-digit", "data-value") == "".join(map(str, digit))
    record = {f"x{d}": b for d, b in enumerate(digit)}
    answer = post(ui_base_url, "/logprob", {"records": [record], "explain": True})
    surprisal = answer["surprisal"][0]
    assert values(ui_page, "#surprisal-heatmap") == [surprisal[f"x{d}"]["given_others"] for d in range(784)]
    assert close(value(ui_page, "#surprisal-logprob"), answer["logprob"][0])
    ui_page.select_option("#surprisal-kind", "in_order")
    assert values(ui_page, "#surprisal-heatmap") == [surprisal[f"x{d}"]["in_order"] for d in range(784)]


def form_record(page: Page, base: str, model: str) -> dict[str, Any]:
    """The record the form holds, as the page sends it."""
    columns = model_of(base, model)["columns"]
    record: dict[str, Any] = {}
    for i, col in enumerate(columns):
        if page.is_checked(f"#record-unknown-{i}"):
            record[col["name"]] = None
            continue
        raw = page.input_value(f"#record-col-{i}")
        record[col["name"]] = float(raw) if col["kind"] == "numeric" else raw
    return record


def percentile_among_drawn_rows(base: str, model: str, lp: float) -> float:
    drawn = post(base, "/sample", {"model": model, "n": 500, "seed": 0})["records"]
    scored = post(base, "/logprob", {"model": model, "records": drawn, "seed": 0})["logprob"]
    return 100 * sum(v is not None and v <= lp for v in scored) / len(scored)


def percentile_among_held_out_rows(reference: dict[str, Any], lp: float) -> float:
    """Linear between the reference's 101 quantiles (q = 0, 0.01, ..., 1), clipped to 0..100."""
    return float(np.interp(lp, reference["logprob_quantiles"], np.linspace(0, 100, 101)))


def expected_percentile(base: str, reference: dict[str, Any] | None, model: str, lp: float) -> tuple[float, str]:
    """The percentile the page should show for log p `lp`, and what it says it is among."""
    if reference is None:
        among = "among 500 rows drawn from the model (seed 0), not held-out data"
        return percentile_among_drawn_rows(base, model, lp), among
    among = f"among {reference['n_rows']:,} held-out rows ({reference['split']})"
    return percentile_among_held_out_rows(reference, lp), among


def test_the_record_form_shows_the_apis_logprob_surprisal_and_imputation(
    ui_page: Page, ui_base_url: str, references: dict[str, Any]
) -> None:
    reference = references["diamonds"]
    open_view(ui_page, "diamonds", "record")
    ui_page.select_option("#record-col-1", "Fair")  # cut
    ui_page.click("#record-score")
    settled(ui_page)
    record = form_record(ui_page, ui_base_url, "diamonds")
    assert record["cut"] == "Fair" and None not in record.values()
    answer = post(ui_base_url, "/logprob", {"model": "diamonds", "records": [record], "seed": 0, "explain": True})
    lp = answer["logprob"][0]
    assert close(value(ui_page, "#record-logprob"), lp)
    percentile, among = expected_percentile(ui_base_url, reference, "diamonds", lp)
    assert close(value(ui_page, "#record-percentile"), percentile)
    assert ui_page.inner_text("#record-percentile-among") == among
    bars = ui_page.eval_on_selector_all("#record-surprisal .num", "ns => ns.map(n => Number(n.dataset.value))")
    columns = list(record)
    assert bars == [answer["surprisal"][0][c]["given_others"] for c in columns]

    ui_page.check("#record-unknown-6")  # price
    ui_page.check("#record-unknown-2")  # color
    ui_page.click("#record-score")
    settled(ui_page)
    record = form_record(ui_page, ui_base_url, "diamonds")
    answer = post(ui_base_url, "/logprob", {"model": "diamonds", "records": [record], "seed": 0})
    assert close(value(ui_page, "#record-logprob"), answer["logprob"][0])
    imputed = post(ui_base_url, "/impute", {"model": "diamonds", "records": [record], "seed": 0, "n_samples": 1})
    dist = imputed["distributions"][0]
    for q in ("q05", "q50", "q95", "mean", "sd"):
        assert close(value(ui_page, f'#record-impute [data-column="price"] .q-{q}'), dist["price"][q])
    levels = ui_page.eval_on_selector_all(
        '#record-impute [data-column="color"] .bar',
        "bs => bs.map(b => [b.querySelector('.label').textContent, Number(b.querySelector('.num').dataset.value)])",
    )
    assert dict(levels) == dist["color"]


def test_a_held_out_record_is_loaded_and_ranked_among_the_held_out_rows(
    ui_page: Page, ui_base_url: str, references: dict[str, Any]
) -> None:
    reference = references["diamonds"]
    open_view(ui_page, "diamonds", "record")
    if reference is None or not reference["examples"]:  # the page offers no held-out row
        assert ui_page.is_hidden("#record-examples")
        pytest.skip("diamonds' served version has no reference (GET /models/diamonds/reference: 404)")
    examples = reference["examples"]
    assert form_record(ui_page, ui_base_url, "diamonds") == examples[0]  # the view opens on the first
    i = min(2, len(examples) - 1)
    ui_page.focus("#record-example")
    ui_page.select_option("#record-example", str(i))  # loaded and scored on change
    settled(ui_page)
    record = form_record(ui_page, ui_base_url, "diamonds")
    assert record == examples[i]
    # every number's input shows its training range (a hint: the reference's first and last edge)
    ranges = ui_page.eval_on_selector_all("#record-form input[data-range]", "els => els.map(e => e.dataset.range)")
    numbers = [m for m in reference["marginals"].values() if m["kind"] == "number"]
    assert sorted(ranges) == sorted(f"{js_number(m['edges'][0])},{js_number(m['edges'][-1])}" for m in numbers)
    body = {"model": "diamonds", "records": [record], "seed": 0, "explain": True}
    lp = post(ui_base_url, "/logprob", body)["logprob"][0]
    assert close(value(ui_page, "#record-logprob"), lp)
    assert close(value(ui_page, "#record-percentile"), percentile_among_held_out_rows(reference, lp))


def js_number(x: float) -> str:
    """x as JavaScript's String(x) writes it (whole numbers without a decimal point)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def hist_bins(page: Page, column: str) -> list[tuple[str, list[float]]]:
    """A histogram of the given view: (bin label, [conditional rows, beside]) per bin."""
    return [
        (title, [float(v) for v in vals])
        for title, vals in page.eval_on_selector_all(
            f'#given-hists [data-column="{column}"] .bin',
            "bs => bs.map(b => [b.title, [...b.children].map(c => c.dataset.value)])",
        )
    ]


def test_conditional_sampling_shows_the_apis_rows(ui_page: Page, ui_base_url: str, references: dict[str, Any]) -> None:
    reference = references["diamonds"]
    open_view(ui_page, "diamonds", "given")
    assert ui_page.is_checked("#given-use-1")  # the first category (cut) is ticked at first
    ui_page.select_option("#given-col-1", "Premium")
    ui_page.check("#given-use-3")  # clarity, at the drawn row's level
    ui_page.fill("#given-n", "40")
    ui_page.fill("#given-seed", "3")
    ui_page.click("#given-go")
    settled(ui_page)
    clarity = ui_page.input_value("#given-col-3")
    answer = post(
        ui_base_url,
        "/sample",
        {"model": "diamonds", "n": 40, "seed": 3, "given": {"cut": "Premium", "clarity": clarity}},
    )
    rows = ui_page.eval_on_selector_all(
        "#given-rows tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => JSON.parse(td.dataset.value)))"
    )
    columns = [c["name"] for c in model_of(ui_base_url, "diamonds")["columns"]]
    assert rows == [[r[c] for c in columns] for r in answer["records"]]
    assert all(r[1] == "Premium" and r[3] == clarity for r in rows)
    assert close(value(ui_page, "#given-ess"), answer.get("ess"))
    cut_bins = hist_bins(ui_page, "cut")
    levels = ("Fair", "Good", "Ideal", "Premium", "Very Good")
    assert [label for label, _ in cut_bins] == list(levels)
    assert [given for _, (given, _) in cut_bins] == [40 if level == "Premium" else 0 for level in levels]
    legend = ui_page.inner_text("#given-hists .legend")
    if reference is None:
        # each histogram counts the conditional rows and as many drawn without the condition
        assert "rows drawn without it" in legend
        assert sum(free for _, (_, free) in cut_bins) == 40
        return
    # each histogram counts the conditional rows beside the training marginal: a category's level
    # frequencies, a number's counts in the reference's bins
    assert "the training data's marginals" in legend
    marginals = reference["marginals"]
    assert {label: free for label, (_, free) in cut_bins} == marginals["cut"]["levels"]
    carat = marginals["carat"]
    carat_bins = hist_bins(ui_page, "carat")
    assert [free for _, (_, free) in carat_bins] == carat["counts"]
    assert len(carat_bins) == len(carat["edges"]) - 1
    counts, _ = np.histogram(np.clip([r[0] for r in rows], carat["edges"][0], carat["edges"][-1]), bins=carat["edges"])
    assert [given for _, (given, _) in carat_bins] == counts.tolist()


def test_a_csv_upload_is_scored_flagged_and_downloadable(ui_page: Page, ui_base_url: str, tmp_path: Path) -> None:
    open_view(ui_page, "diamonds", "csv")
    csv = (
        "carat,cut,color,clarity,price\n0.5,Ideal,E,VS1,1500\n1.2,,G,SI1,5200\n"
        '2.5,Fair,J,I1,300\n0.3,"Very Good",D,IF,900\n'
    )
    path = tmp_path / "mine.csv"
    path.write_text(csv)
    ui_page.fill("#csv-seed", "2")
    ui_page.set_input_files("#csv-file", str(path))
    ui_page.wait_for_selector('#csv-rows[data-value="4"]', timeout=SLOW_MS)
    settled(ui_page)
    url = f"{ui_base_url}/logprob?model=diamonds&seed=2"
    answer = httpx.post(url, content=csv, headers={"Content-Type": "text/csv"}, timeout=60).json()
    ui_page.fill("#csv-threshold", "0.5")
    ui_page.dispatch_event("#csv-threshold", "input")
    assert value(ui_page, "#csv-flagged") == 2
    lowest = sorted(answer["logprob"])[:2]
    assert close(value(ui_page, "#csv-threshold-value"), lowest[-1])
    shown = ui_page.eval_on_selector_all(
        "#csv-table tbody tr", "trs => trs.map(tr => Number(tr.cells[1].dataset.value))"
    )
    assert shown == lowest
    href = ui_page.get_attribute("#csv-download", "href") or ""
    assert href.startswith("blob:")
    with ui_page.expect_download() as download:
        ui_page.click("#csv-download")
    assert download.value.suggested_filename == "scored.csv"
    downloaded = download.value.path().read_text(encoding="utf-8")
    scored = httpx.post(url, content=csv, headers={"Content-Type": "text/csv", "Accept": "text/csv"}, timeout=60).text
    assert downloaded == scored and "logprob" in downloaded.splitlines()[0]


def test_a_test_digit_is_one_of_the_references_examples(
    ui_page: Page, ui_base_url: str, references: dict[str, Any]
) -> None:
    reference = references["binarized-mnist"]
    open_view(ui_page, "binarized-mnist", "impute")
    if reference is None or not reference["examples"]:  # today's digit drawn by the model, labelled so
        assert ui_page.is_hidden("#impute-tests")
        assert ui_page.inner_text("#impute-load") == "Load digit"
        pytest.skip("binarized-mnist's served version has no reference (GET /models/binarized-mnist/reference: 404)")
    examples = ["".join(map(str, e)) for e in reference["examples"]]
    shown = ui_page.get_attribute("#impute-canvas", "data-value") or ""
    assert shown.replace("?", "") == examples[0][: shown.index("?")]  # the first test digit, its bottom half hidden
    i = len(examples) - 1
    ui_page.focus("#impute-test")
    ui_page.select_option("#impute-test", str(i))
    assert ui_page.get_attribute("#impute-canvas", "data-value") == examples[i]
    ui_page.select_option("#impute-test", "0")
    ui_page.click("#impute-hide-right")
    ui_page.click("#impute-go")
    settled(ui_page)
    x = bits_of(ui_page.get_attribute("#impute-canvas", "data-value") or "")
    assert [b for b in x if b is not None] == [int(c) for j, c in enumerate(examples[0]) if j % 28 < 14]
    answer = post(ui_base_url, "/impute", {"x": [x], "n_samples": 4, "seed": 1, "n_importance": 100})
    assert values(ui_page, "#impute-heatmap") == answer["marginals"][0]
    # the denoise view opens on the second test digit
    open_view(ui_page, "binarized-mnist", "denoise")
    assert ui_page.get_attribute("#denoise-clean", "data-value") == examples[min(1, len(examples) - 1)]


def test_a_bits_model_without_an_image_is_served_as_columns(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "mushrooms", "record")
    record = {f"x{i}": ui_page.input_value(f"#record-col-{i}") for i in range(112)}
    answer = post(ui_base_url, "/logprob", {"model": "mushrooms", "records": [record], "seed": 0})
    assert close(value(ui_page, "#record-logprob"), answer["logprob"][0])


# --- a model without a reference ----------------------------------------------------------------


@pytest.fixture(scope="module")
def store_without_references(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """binarized-mnist and diamonds as shipped, less their reference.json."""
    from browser import SHIPPED

    from made.store.reference import REFERENCE
    from made.store.versions import open_model, write_version

    store = tmp_path_factory.mktemp("store")
    for name in ("binarized-mnist", "diamonds"):
        model = open_model(SHIPPED, name)
        files = {f: (model.path / f).read_bytes() for f in model.manifest.files if f != REFERENCE}
        fields = model.manifest.as_json()
        for key in ("format_version", "name", "version", "files"):
            del fields[key]
        write_version(store, name, files, fields, model.version)
    return store


def test_without_a_reference_the_page_falls_back_to_draws_from_the_model(
    ui_browser: Any, store_without_references: Path
) -> None:
    from browser import Recorder, open_page, settle

    from service.testing import made_serve

    with made_serve(store_without_references, env={"OMP_NUM_THREADS": "1"}) as server:
        base = server.url
        assert httpx.get(f"{base}/models/diamonds/reference", timeout=30).status_code == 404
        recorder = Recorder(base)
        recorder.expect_status(404, "/models/diamonds/reference")
        recorder.expect_status(404, "/models/binarized-mnist/reference")
        with open_page(ui_browser, base, "/ui/#model=diamonds&view=record", recorder=recorder) as page:
            page.wait_for_selector('#view-record[data-ready="1"]', timeout=SLOW_MS)
            settled(page)
            assert page.is_hidden("#record-examples")
            record = form_record(page, base, "diamonds")
            assert record == post(base, "/sample", {"model": "diamonds", "n": 1, "seed": 0})["records"][0]
            lp = post(base, "/logprob", {"model": "diamonds", "records": [record], "seed": 0})["logprob"][0]
            percentile, among = expected_percentile(base, None, "diamonds", lp)
            assert close(value(page, "#record-percentile"), percentile)
            assert page.inner_text("#record-percentile-among") == among

            page.click("#nav-given")
            page.wait_for_selector('#view-given[data-ready="1"]', timeout=SLOW_MS)
            settled(page)
            assert "rows drawn without it" in page.inner_text("#given-hists .legend")
            assert sum(free for _, (_, free) in hist_bins(page, "cut")) == int(page.input_value("#given-n"))

            page.select_option("#model-picker", "binarized-mnist")
            page.click("#nav-impute")
            page.wait_for_selector('#view-impute[data-ready="1"]', timeout=SLOW_MS)
            settled(page)
            assert page.is_hidden("#impute-tests")
            assert page.inner_text("#impute-load") == "Load digit"
            assert page.inner_text('label[for="impute-seed"]') == "Digit seed"
            digit = "".join(map(str, post(base, "/sample", {"n": 1, "seed": 1})["samples"][0]))
            shown = page.get_attribute("#impute-canvas", "data-value") or ""
            assert shown == digit[: len(digit) // 2] + "?" * (len(digit) // 2)
            settle(page)
        assert recorder.problems() == []


# --- keyboard and labels -----------------------------------------------------------------------

CONTROLS = """root => [...root.querySelectorAll('input, select, button, a[href], textarea')]
  .filter(e => !e.disabled && e.getClientRects().length > 0).map(e => e.id)"""

UNLABELLED = """root => [...root.querySelectorAll('input, select, button, a[href], textarea, canvas')]
  .filter(e => e.getClientRects().length > 0)
  .filter(e => {
    const aria = (e.getAttribute('aria-label') || '').trim();
    if (aria) return false;
    const by = e.getAttribute('aria-labelledby');
    if (by && by.split(/\\s+/).some(id => (document.getElementById(id)?.textContent || '').trim())) return false;
    if (e.labels && [...e.labels].some(l => l.textContent.trim())) return false;
    if (['BUTTON', 'A'].includes(e.tagName) && e.textContent.trim()) return false;
    return true;
  }).map(e => e.id || e.outerHTML.slice(0, 80))"""


def tab_through(page: Page, limit: int) -> list[str]:
    """The ids of the elements Tab focuses, from the top of the page, once round."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.evaluate("window.scrollTo(0, 0)")
    page.focus("body")
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement ? document.activeElement.id : ''")
        if focused in seen:
            break
        seen.append(focused)
    return seen


VIEWS = [("binarized-mnist", v) for v in IMAGE_VIEWS] + [("diamonds", v) for v in TABLE_VIEWS]


@pytest.mark.parametrize(("model", "view"), VIEWS, ids=[f"{m}-{v}" for m, v in VIEWS])
def test_keyboard_reaches_every_control_and_every_control_has_a_label(ui_page: Page, model: str, view: str) -> None:
    open_view(ui_page, model, view)
    section = ui_page.query_selector(f"#view-{view}")
    header = ui_page.query_selector("header")
    nav = ui_page.query_selector("#views")
    assert section and header and nav
    controls = [*header.evaluate(CONTROLS), *nav.evaluate(CONTROLS), *section.evaluate(CONTROLS)]
    assert all(controls), "every control has an id"
    reached = tab_through(ui_page, limit=len(controls) + 20)
    assert set(controls) <= set(reached), f"not reached by Tab: {sorted(set(controls) - set(reached))}"
    unlabelled = [*header.evaluate(UNLABELLED), *nav.evaluate(UNLABELLED), *section.evaluate(UNLABELLED)]
    assert unlabelled == [], f"controls without a label: {unlabelled}"
    # focus is visible: the focused control draws an outline
    ui_page.focus(f"#{controls[-1]}")
    style = ui_page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert style != "none"


# --- the API key -------------------------------------------------------------------------------


def test_with_an_api_key_the_page_asks_for_it_once_and_sends_it(ui_browser: Any) -> None:
    from browser import SHIPPED, Recorder, open_page, settle

    from service.testing import made_serve

    with made_serve(SHIPPED, env={"OMP_NUM_THREADS": "1", "MADE_API_KEY": "s3cret"}) as server:
        recorder = Recorder(server.url)
        recorder.expect_status(401, "/models")  # the first call, before the key is given
        with open_page(ui_browser, server.url, recorder=recorder) as page:
            page.wait_for_selector("#api-key-form:not([hidden])")
            assert page.evaluate("document.activeElement.id") == "api-key"
            page.fill("#api-key", "s3cret")
            page.keyboard.press("Enter")
            page.wait_for_selector('#view-samples[data-ready="1"]', timeout=SLOW_MS)
            assert page.is_hidden("#api-key-form")
            assert page.evaluate("sessionStorage.getItem('made-api-key')") == "s3cret"
            page.reload()  # kept for the session: not asked again
            page.wait_for_selector('#view-samples[data-ready="1"]', timeout=SLOW_MS)
            settle(page)
        statuses = [s for s, _ in recorder.bad_status]
        assert recorder.problems() == [] and statuses == []
