"""The playground's fixes after a tester's report, in a real browser against `made serve` of the
shipped store (the fixtures of tests/browser.py, the helpers of tests/test_ui_views.py): late
answers after a model change, a CSV's rows as the server reads them, sampling without a condition,
results cleared after a failed request, the record form's checks, its percentile with unknown cells,
the card at a phone's width, Enter in the forms, a CSV that cannot be answered as CSV.

A request is held (its route kept, continued later) to make an answer come late, and a failed
request is a route fulfilled with an error, expected with `ui_expect_status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from test_ui_views import SLOW_MS, close, form_record, model_of, open_view, post, settled, value

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.slow

DIAMONDS = "carat,cut,color,clarity,depth,table,price,x,y,z\n"


def hold(page: Page, matches: Any, n: int) -> list[Route]:
    """Holds the first `n` requests whose URL `matches`: their routes, continued by the caller
    (the later ones go through)."""
    held: list[Route] = []
    page.route(matches, lambda route: held.append(route) if len(held) < n else route.continue_())
    return held


def wait_held(page: Page, held: list[Route], n: int) -> None:
    for _ in range(SLOW_MS // 50):
        if len(held) >= n:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{len(held)} of {n} requests held")


def csv_logprob(url: str) -> bool:
    return "/logprob?" in url


def status(page: Page) -> str:
    return page.inner_text("#status")


def fail(route: Route) -> None:
    route.fulfill(status=503, content_type="application/json", body='{"detail": "busy, try again"}')


# --- 1. an answer for the model shown before is dropped ------------------------------------------


def test_a_late_image_answer_is_dropped_when_a_table_model_is_picked(ui_page: Page) -> None:
    open_view(ui_page, "binarized-mnist", "samples")
    held = hold(ui_page, "**/sample", 1)
    ui_page.click("#samples-go")
    wait_held(ui_page, held, 1)
    ui_page.select_option("#model-picker", "diamonds")
    ui_page.wait_for_selector('#view-record[data-ready="1"]', timeout=SLOW_MS)
    held[0].continue_()
    settled(ui_page)
    assert "failed" not in status(ui_page)
    assert ui_page.is_visible("#view-record")


def test_a_late_csv_answer_is_not_drawn_under_another_table_model(
    ui_page: Page, ui_base_url: str, tmp_path: Path
) -> None:
    open_view(ui_page, "diamonds", "csv")
    path = tmp_path / "diamonds.csv"
    path.write_text(DIAMONDS + "0.5,Ideal,E,VS1,61.5,55,1500,5.1,5.1,3.1\n")
    held = hold(ui_page, csv_logprob, 2)
    ui_page.set_input_files("#csv-file", str(path))
    wait_held(ui_page, held, 2)  # the JSON request and the CSV one
    ui_page.select_option("#model-picker", "health-insurance")
    ui_page.wait_for_selector('#view-record[data-ready="1"]', timeout=SLOW_MS)
    for route in held:
        route.continue_()
    settled(ui_page)
    assert ui_page.get_attribute("#csv-rows", "data-value") is None
    assert ui_page.eval_on_selector_all("#csv-table tr", "trs => trs.length") == 0
    assert ui_page.is_hidden("#csv-download")
    ui_page.click("#nav-csv")  # health-insurance's own rows
    ui_page.wait_for_selector('#view-csv[data-ready="1"]', timeout=SLOW_MS)
    settled(ui_page)
    assert value(ui_page, "#csv-rows") == 300
    header = ui_page.eval_on_selector_all("#csv-table thead th", "ths => ths.map(t => t.textContent)")
    assert header[2:] == [c["name"] for c in model_of(ui_base_url, "health-insurance")["columns"]]


# --- 2. a CSV's rows, as the server reads them -----------------------------------------------------


def test_a_line_of_empty_cells_is_a_row_beside_its_log_p(ui_page: Page, ui_base_url: str, tmp_path: Path) -> None:
    lines = ["0.5,Ideal,E,VS1,61.5,55,1500,5.1,5.1,3.1", ",,,,,,,,,", "1.2,Fair,G,SI1,60,58,5200,6.8,6.7,4.1", "   "]
    csv = DIAMONDS + "\n".join(lines) + "\n"
    path = tmp_path / "gaps.csv"
    path.write_text(csv)
    open_view(ui_page, "diamonds", "csv")
    ui_page.fill("#csv-seed", "1")
    ui_page.set_input_files("#csv-file", str(path))
    ui_page.wait_for_selector('#csv-rows[data-value="3"]', timeout=SLOW_MS)
    settled(ui_page)
    answer = httpx.post(
        f"{ui_base_url}/logprob?model=diamonds&seed=1", content=csv, headers={"Content-Type": "text/csv"}, timeout=60
    ).json()
    assert len(answer["logprob"]) == 3
    ui_page.fill("#csv-threshold", "0.5")
    ui_page.dispatch_event("#csv-threshold", "input")
    shown = ui_page.eval_on_selector_all(
        "#csv-table tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.dataset.value ?? td.textContent))"
    )
    assert len(shown) == 2
    for row in shown:
        i = int(row[0])
        assert close(float(row[1]), answer["logprob"][i])
        assert row[2:] == lines[i].split(",")  # the cells of the row scored, not of the next one


# --- 3. conditional sampling without a condition ------------------------------------------------


def test_conditional_sampling_with_nothing_ticked_samples_without_a_condition(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "diamonds", "given")
    ui_page.uncheck("#given-use-1")
    assert ui_page.eval_on_selector_all("#given-form input[type=checkbox]:checked", "cs => cs.length") == 0
    ui_page.fill("#given-n", "20")
    ui_page.fill("#given-seed", "4")
    with ui_page.expect_request(lambda r: r.url.endswith("/sample")) as request:
        ui_page.click("#given-go")
    settled(ui_page)
    assert "given" not in (request.value.post_data_json or {})
    assert "failed" not in status(ui_page)
    answer = post(ui_base_url, "/sample", {"model": "diamonds", "n": 20, "seed": 4})
    rows = ui_page.eval_on_selector_all(
        "#given-rows tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => JSON.parse(td.dataset.value)))"
    )
    columns = [c["name"] for c in model_of(ui_base_url, "diamonds")["columns"]]
    assert rows == [[r[c] for c in columns] for r in answer["records"]]


# --- 4. a failed request leaves nothing of the answer before ------------------------------------


@pytest.mark.ui_expect_status(503)
def test_a_failed_request_clears_the_table_views_results(ui_page: Page, tmp_path: Path) -> None:
    open_view(ui_page, "diamonds", "record")
    assert value(ui_page, "#record-logprob") is not None
    ui_page.route("**/logprob", fail)
    ui_page.click("#record-score")
    settled(ui_page)
    assert "Scoring failed" in status(ui_page)
    assert value(ui_page, "#record-logprob") is None and value(ui_page, "#record-percentile") is None
    assert ui_page.eval_on_selector_all("#record-surprisal > *", "bs => bs.length") == 0

    open_view(ui_page, "diamonds", "given")
    assert ui_page.eval_on_selector_all("#given-rows tbody tr", "trs => trs.length") > 0
    ui_page.route("**/sample", fail)
    ui_page.click("#given-go")
    settled(ui_page)
    assert "Sampling failed" in status(ui_page)
    assert ui_page.eval_on_selector_all("#given-rows tr, #given-hists > *", "xs => xs.length") == 0
    assert value(ui_page, "#given-ess") is None

    ui_page.unroute("**/sample")
    open_view(ui_page, "diamonds", "csv")
    assert value(ui_page, "#csv-rows") == 300
    ui_page.route(csv_logprob, fail)
    path = tmp_path / "second.csv"
    path.write_text(DIAMONDS + "0.5,Ideal,E,VS1,61.5,55,1500,5.1,5.1,3.1\n")
    ui_page.set_input_files("#csv-file", str(path))
    settled(ui_page)
    assert "Scoring the CSV failed" in status(ui_page)
    assert ui_page.get_attribute("#csv-rows", "data-value") is None
    assert ui_page.eval_on_selector_all("#csv-table tr, #csv-hist > *", "xs => xs.length") == 0
    assert ui_page.is_hidden("#csv-download")


@pytest.mark.ui_expect_status(503)
def test_a_failed_request_clears_the_image_views_results(ui_page: Page) -> None:
    open_view(ui_page, "binarized-mnist", "denoise")
    assert ui_page.get_attribute("#denoise-marginals", "data-values") is not None
    ui_page.route("**/denoise", fail)
    ui_page.click("#denoise-go")
    settled(ui_page)
    assert "Denoising failed" in status(ui_page)
    assert ui_page.get_attribute("#denoise-marginals", "data-values") is None
    assert value(ui_page, "#denoise-logprob") is None

    open_view(ui_page, "binarized-mnist", "impute")
    ui_page.route("**/impute", fail)
    ui_page.click("#impute-go")
    settled(ui_page)
    assert ui_page.get_attribute("#impute-heatmap", "data-values") is None
    assert ui_page.eval_on_selector_all("#impute-completions canvas", "cs => cs.length") == 0


# --- 5, 6. the record form's checks, and no percentile with unknown cells -------------------------


def test_an_empty_or_refused_number_is_named_not_scored_as_unknown(ui_page: Page) -> None:
    open_view(ui_page, "diamonds", "record")
    sent: list[str] = []
    ui_page.on("request", lambda r: sent.append(r.url) if "/logprob" in r.url or "/impute" in r.url else None)

    def refused(enter: Any, says: str) -> None:
        enter()
        ui_page.click("#record-score")
        settled(ui_page)
        assert "carat" in status(ui_page) and says in status(ui_page)
        assert ui_page.get_attribute("#record-col-0", "aria-invalid") == "true"
        assert value(ui_page, "#record-logprob") is None
        assert sent == []

    refused(lambda: ui_page.fill("#record-col-0", ""), "is empty")
    refused(lambda: ui_page.fill("#record-col-0", "9"), "bounds")  # carat's upper bound is 5.08
    ui_page.fill("#record-col-0", "")
    ui_page.focus("#record-col-0")
    refused(lambda: ui_page.keyboard.type("0.3e"), "not a number")
    ui_page.fill("#record-col-0", "0.7")
    ui_page.click("#record-score")
    settled(ui_page)
    assert len(sent) == 1 and ui_page.get_attribute("#record-col-0", "aria-invalid") is None
    assert value(ui_page, "#record-logprob") is not None


def test_with_unknown_cells_no_percentile_is_shown(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "diamonds", "record")
    assert value(ui_page, "#record-percentile") is not None
    ui_page.check("#record-unknown-6")  # price
    ui_page.click("#record-score")
    settled(ui_page)
    record = form_record(ui_page, ui_base_url, "diamonds")
    lp = post(ui_base_url, "/logprob", {"model": "diamonds", "records": [record], "seed": 0})["logprob"][0]
    assert close(value(ui_page, "#record-logprob"), lp)
    assert value(ui_page, "#record-percentile") is None
    assert "unknown cells" in ui_page.inner_text("#record-percentile-among")


# --- 7. the card at a phone's width -------------------------------------------------------------


def test_the_card_fits_a_phones_width(ui_page: Page, ui_base_url: str) -> None:
    ui_page.set_viewport_size({"width": 375, "height": 800})
    for name in ("diamonds", "binarized-mnist"):
        open_view(ui_page, name, "card")
        assert ui_page.evaluate("document.documentElement.scrollWidth") <= 375, name
        card = ui_page.eval_on_selector("#card", "c => [c.scrollWidth, c.clientWidth, c.getBoundingClientRect().right]")
        assert card[0] <= card[1] and card[2] <= 375, name


# --- 8. Enter submits ---------------------------------------------------------------------------


def test_enter_scores_the_record_and_samples_the_condition(ui_page: Page, ui_base_url: str) -> None:
    open_view(ui_page, "diamonds", "record")
    ui_page.fill("#record-col-0", "0.71")
    ui_page.focus("#record-col-0")
    with ui_page.expect_request(lambda r: r.url.endswith("/logprob")):
        ui_page.keyboard.press("Enter")
    settled(ui_page)
    record = form_record(ui_page, ui_base_url, "diamonds")
    assert record["carat"] == 0.71
    lp = post(ui_base_url, "/logprob", {"model": "diamonds", "records": [record], "seed": 0})["logprob"][0]
    assert close(value(ui_page, "#record-logprob"), lp)

    open_view(ui_page, "diamonds", "given")
    ui_page.focus("#given-use-1")
    with ui_page.expect_request(lambda r: r.url.endswith("/sample")):
        ui_page.keyboard.press("Enter")
    settled(ui_page)


# --- 9, 11. a CSV the server cannot answer as CSV, or cannot read -------------------------------


@pytest.mark.ui_expect_status(422, "/logprob")
def test_a_csv_with_a_logprob_column_is_scored_without_its_download(ui_page: Page, tmp_path: Path) -> None:
    open_view(ui_page, "diamonds", "csv")
    path = tmp_path / "scored.csv"
    path.write_text("carat,cut,logprob\n0.5,Ideal,-3\n1.1,Fair,-4\n")
    ui_page.set_input_files("#csv-file", str(path))
    ui_page.wait_for_selector('#csv-rows[data-value="2"]', timeout=SLOW_MS)
    settled(ui_page)
    assert ui_page.is_hidden("#csv-download")
    assert "already has the column 'logprob'" in ui_page.inner_text("#csv-download-note")
    assert "failed" not in status(ui_page)


@pytest.mark.ui_expect_status(422, "/logprob")
def test_a_file_that_is_not_utf8_gets_the_servers_message(ui_page: Page, tmp_path: Path) -> None:
    open_view(ui_page, "diamonds", "csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes("carat,cut,color\n0.5,Ideal,É\n".encode("latin-1"))
    ui_page.set_input_files("#csv-file", str(path))
    ui_page.wait_for_selector("#status.error", timeout=SLOW_MS)
    settled(ui_page)
    assert "not UTF-8" in status(ui_page)


def test_a_whole_number_columns_range_has_no_decimals(ui_page: Page) -> None:
    open_view(ui_page, "diamonds", "record")
    price = ui_page.get_attribute("#record-col-6", "placeholder") or ""  # price: 0 decimals
    assert " to " in price and "." not in price
    carat = ui_page.get_attribute("#record-col-0", "placeholder") or ""  # carat: 2 decimals
    assert all(len(end.split(".")[1]) == 2 for end in carat.split(" to "))


# --- a number the page cannot use as typed -----------------------------------------------------


def test_a_seed_or_row_count_out_of_range_shows_the_number_used(ui_page: Page, ui_base_url: str) -> None:
    """A negative seed or a row count of 0 is not sent as another number unseen: the field shows
    the number the request used (seed 0, one row) and the answer is the API's for it."""
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.fill("#samples-seed", "-3")
    ui_page.select_option("#samples-n", "16")
    ui_page.click("#samples-go")
    settled(ui_page)
    assert ui_page.input_value("#samples-seed") == "0"
    shown = ui_page.eval_on_selector_all("#samples-grid canvas", "cs => cs.map(c => c.dataset.value)")
    answer = post(ui_base_url, "/sample", {"n": 16, "seed": 0})
    assert shown == ["".join(map(str, row)) for row in answer["samples"]]
    open_view(ui_page, "diamonds", "given")
    ui_page.fill("#given-n", "0")
    ui_page.fill("#given-seed", "2.5")
    with ui_page.expect_request(lambda r: r.url.endswith("/sample")) as request:
        ui_page.click("#given-go")
    settled(ui_page)
    assert (ui_page.input_value("#given-n"), ui_page.input_value("#given-seed")) == ("1", "2")
    sent = request.value.post_data_json or {}
    assert (sent.get("n"), sent.get("seed")) == (1, 2)


# --- a second tester's pass: header, picker, server gone, API key, long names, Enter ------------


def test_a_csv_header_naming_other_columns_says_which(ui_page: Page, tmp_path: Path) -> None:
    """The server leaves a column it does not know out of log p and takes a model column the header
    lacks as unknown in every row: "Carat" for "carat" is scored without carat, and the page says so."""
    open_view(ui_page, "diamonds", "csv")
    assert ui_page.is_hidden("#csv-columns-note")  # the drawn rows: the model's own header
    path = tmp_path / "capitalised.csv"
    path.write_text(DIAMONDS.replace("carat", "Carat") + "0.5,Ideal,E,VS1,61.5,55,1500,5.1,5.1,3.1\n")
    ui_page.set_input_files("#csv-file", str(path))
    ui_page.wait_for_selector('#csv-rows[data-value="1"]', timeout=SLOW_MS)
    settled(ui_page)
    note = ui_page.inner_text("#csv-columns-note")
    assert ui_page.is_visible("#csv-columns-note")
    assert "left out of log p: Carat;" in note and "unknown in every row (summed out): carat." in note
    spaced = tmp_path / "spaced.csv"  # spaces after the commas: the same names, as the server reads them
    spaced.write_text(DIAMONDS.replace(",", ", ") + "0.5,Ideal,E,VS1,61.5,55,1500,5.1,5.1,3.1\n")
    ui_page.set_input_files("#csv-file", str(spaced))
    ui_page.wait_for_selector("#csv-columns-note", state="hidden", timeout=SLOW_MS)
    settled(ui_page)
    assert value(ui_page, "#csv-rows") == 1


@pytest.mark.ui_expect_status(503, "/models/diamonds")
def test_a_model_that_fails_to_load_leaves_the_picker_on_the_model_shown(ui_page: Page) -> None:
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.route("**/models/diamonds", fail)
    ui_page.select_option("#model-picker", "diamonds")
    ui_page.wait_for_selector("#status.error", timeout=SLOW_MS)
    settled(ui_page)
    assert "Loading diamonds failed" in status(ui_page)
    assert ui_page.input_value("#model-picker") == "binarized-mnist"  # the model still shown and used
    assert "model=binarized-mnist" in ui_page.url and ui_page.is_visible("#view-samples")
    ui_page.unroute("**/models/diamonds")
    ui_page.select_option("#model-picker", "diamonds")  # picked again: a change, loaded now
    ui_page.wait_for_selector('#view-record[data-ready="1"]', timeout=SLOW_MS)
    settled(ui_page)


def test_a_server_that_cannot_be_reached_is_named(ui_page: Page) -> None:
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.route("**/sample", lambda route: route.abort("aborted"))
    ui_page.click("#samples-go")
    ui_page.wait_for_selector("#status.error", timeout=SLOW_MS)
    settled(ui_page)
    assert "could not be reached" in status(ui_page)


def test_an_api_key_that_cannot_be_sent_is_refused_not_kept(ui_page: Page) -> None:
    """fetch refuses a header with a character past Latin-1: kept for the tab, that key failed
    every request without a 401, so the key's input never came back."""
    # the first view loaded and drawn: its load, still running, could clear the status line
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.evaluate("document.getElementById('api-key-form').hidden = false")
    ui_page.fill("#api-key", "s3crét…")
    ui_page.press("#api-key", "Enter")
    assert "printable ASCII" in status(ui_page)
    assert ui_page.evaluate("sessionStorage.getItem('made-api-key')") is None
    assert ui_page.is_visible("#api-key-form")


def test_a_long_column_name_or_message_stays_within_a_phones_width(ui_page: Page) -> None:
    ui_page.set_viewport_size({"width": 375, "height": 800})
    long = "Column_with_a_very_long_name_" + "x" * 120
    for view in ("record", "given"):
        open_view(ui_page, "diamonds", view)
        ui_page.eval_on_selector(f"#{view}-form .name", "(l, t) => { l.textContent = t; }", long)
        ui_page.eval_on_selector("#status", "(s, t) => { s.textContent = t; }", f"failed: 422: column '{long}'")
        assert ui_page.evaluate("document.documentElement.scrollWidth") <= 375, view
        right = ui_page.eval_on_selector(f"#{view}-col-0", "i => i.getBoundingClientRect().right")
        assert right <= 375, view


def test_enter_in_a_seed_or_row_count_runs_its_view(ui_page: Page) -> None:
    open_view(ui_page, "binarized-mnist", "samples")
    ui_page.fill("#samples-seed", "5")
    with ui_page.expect_request(lambda r: r.url.endswith("/sample")) as request:
        ui_page.press("#samples-seed", "Enter")
    assert (request.value.post_data_json or {}).get("seed") == 5
    settled(ui_page)
    open_view(ui_page, "diamonds", "given")
    ui_page.fill("#given-n", "30")
    with ui_page.expect_request(lambda r: r.url.endswith("/sample")) as request:
        ui_page.press("#given-n", "Enter")
    assert (request.value.post_data_json or {}).get("n") == 30
    settled(ui_page)


def test_the_csv_seed_shows_the_number_used(ui_page: Page) -> None:
    open_view(ui_page, "diamonds", "csv")
    ui_page.fill("#csv-seed", "-3")
    with ui_page.expect_request(lambda r: "/logprob?" in r.url) as request:
        ui_page.click("#csv-example")
    settled(ui_page)
    assert ui_page.input_value("#csv-seed") == "0" and "seed=0" in request.value.url


def test_test_digits_that_failed_to_load_are_asked_for_again(ui_page: Page) -> None:
    """The reference's test digits failing to load (a server restarting) left the view's picker of
    them hidden until another model was chosen; the view's load button asks again."""
    ui_page.route("**/models/binarized-mnist/reference", lambda route: route.abort("aborted"))
    open_view(ui_page, "binarized-mnist", "impute")
    settled(ui_page)
    assert not ui_page.is_visible("#impute-tests")
    ui_page.unroute("**/models/binarized-mnist/reference")
    ui_page.click("#impute-load")
    ui_page.wait_for_selector("#impute-tests", state="visible", timeout=SLOW_MS)
    settled(ui_page)
    assert ui_page.locator("#impute-test option").count() > 0
