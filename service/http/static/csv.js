// Score a CSV: the file goes to POST /logprob as text/csv (the server reads it with the project's
// one CSV reader), once for the numbers (JSON) and once for the scored CSV (Accept: text/csv) to
// download, with the same seed so that both hold the same log p (a CSV the server cannot answer
// as CSV, one with a `logprob` column, is scored all the same, its download left out with the
// server's reason). A histogram of log p, and a slider: the share of rows flagged as the least
// likely. A file goes as its bytes, so that the server's message says what is wrong with them.

import { ApiError, api, fresh, live, query, ready, run } from "./api.js";
import { $, binCounts, edgesOf, el, fmt, histogram, seedOf, show } from "./draw.js";

let st = null;
const scored = { rows: null, header: null, logprob: null, url: null };

// RFC 4180 cells, separated by the most frequent of , ; | and tab in the header line, rows as the
// server reads them (made/io/csv.py: only a line of nothing but spaces is no row, a line of empty
// cells is one), so that row i is the row of the server's log p i; only for showing the flagged rows.
export function parseCsv(text) {
  text = text.replace(/^\uFEFF/, "");
  const firstLine = text.split("\n", 1)[0];
  const sep = [",", ";", "|", "\t"].reduce((best, s) => (firstLine.split(s).length > firstLine.split(best).length ? s : best), ",");
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === sep) {
      row.push(cell);
      cell = "";
    } else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(cell);
      if (!blank(row)) rows.push(row);
      row = [];
      cell = "";
    } else cell += ch;
  }
  row.push(cell);
  if (!blank(row)) rows.push(row);
  return rows;
}

// A line of one cell of nothing but spaces: no row (a line of separators holds empty cells: a row).
function blank(row) {
  return row.length === 1 && row[0].trim() === "";
}

function csvOf(columns, records) {
  const quote = (v) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  const names = columns.map((c) => c.name);
  return [names.map(quote).join(","), ...records.map((r) => names.map((n) => quote(r[n])).join(","))].join("\n") + "\n";
}

// The k = round(share × n) least likely rows are flagged; the threshold is the largest of them.
function flag() {
  if (!scored.logprob) return;
  const share = Number($("csv-threshold").value);
  show($("csv-share"), share);
  $("csv-share").textContent = `${Math.round(share * 100)}%`;
  const order = scored.logprob.map((v, i) => [v === null ? -Infinity : v, i]).sort((a, b) => a[0] - b[0]);
  const k = Math.round(share * order.length);
  const threshold = k > 0 ? order[k - 1][0] : null;
  show($("csv-flagged"), k, 0);
  show($("csv-threshold-value"), threshold, 3);
  const finite = scored.logprob.filter((v) => v !== null);
  const edges = edgesOf(finite, 30);
  histogram($("csv-hist"), edges.slice(0, -1).map((e) => fmt(e, 1)), [{ counts: binCounts(finite, edges), class: "given" }],
    (i) => threshold !== null && edges[i] <= threshold);
  const head = el("tr", {}, el("th", { scope: "col" }, "row"), el("th", { scope: "col" }, "log p"),
    ...scored.header.map((h) => el("th", { scope: "col" }, h)));
  const body = order.slice(0, Math.min(k, 25)).map(([v, i]) => {
    const lp = el("td");
    show(lp, scored.logprob[i], 3);
    return el("tr", {}, el("td", {}, String(i)), lp, ...(scored.rows[i] || []).map((c) => el("td", {}, c)));
  });
  $("csv-table").replaceChildren(el("caption", {}, k > 25 ? `the 25 least likely of ${k} flagged rows` : "flagged rows, least likely first"),
    el("thead", {}, head), el("tbody", {}, ...body));
}

// The server scores the columns of the header it knows, keeps the others out of the log p, and
// takes a column of the model the header lacks as unknown in every row (docs/api.md): a header
// with a misspelled or capitalised name ("Carat") is scored without that column, so the page says
// which names it set aside and which of the model's columns every row's log p sums out.
function noteColumns(header) {
  const names = header.map((h) => h.trim());
  const model = st.columns.map((c) => c.name);
  const ignored = names.filter((n) => n !== "" && !model.includes(n));
  const missing = model.filter((n) => !names.includes(n));
  const parts = [];
  if (ignored.length) parts.push(`not columns of ${st.model.name}, left out of log p: ${ignored.join(", ")}`);
  if (missing.length) parts.push(`not in the file, so unknown in every row (summed out): ${missing.join(", ")}`);
  $("csv-columns-note").textContent = parts.length ? `Header: ${parts.join("; ")}.` : "";
  $("csv-columns-note").hidden = !parts.length;
}

// Nothing of a file scored before stays on screen (a failed request, another model).
function clear() {
  scored.logprob = null;
  for (const id of ["csv-rows", "csv-flagged", "csv-threshold-value"]) {
    $(id).textContent = "";
    delete $(id).dataset.value;
  }
  $("csv-hist").replaceChildren();
  $("csv-table").replaceChildren();
  $("csv-download").hidden = true;
  $("csv-download").removeAttribute("href");
  $("csv-download-note").textContent = "";
  $("csv-columns-note").textContent = "";
  $("csv-columns-note").hidden = true;
  if (scored.url) URL.revokeObjectURL(scored.url);
  scored.url = null;
}

// body: the CSV's text, or a file (a Blob, sent as its bytes).
function score(body) {
  const current = fresh("csv");
  const path = `logprob?${query({ model: st.model.name, seed: seedOf("csv-seed") })}`;
  return run("Scoring the CSV", async () => {
    const [answer, csvAnswer] = await Promise.allSettled([api(path, body), api(path, body, { accept: "text/csv", raw: true })]);
    if (answer.status === "rejected") throw answer.reason;
    const blob = csvAnswer.status === "fulfilled" ? await csvAnswer.value.blob() : null;
    if (!current()) return;
    if (!blob && !(csvAnswer.reason instanceof ApiError)) throw csvAnswer.reason;
    const parsed = parseCsv(typeof body === "string" ? body : await body.text());
    if (!current()) return;
    clear();
    scored.header = parsed[0];
    scored.rows = parsed.slice(1);
    scored.logprob = answer.value.logprob;
    show($("csv-rows"), scored.logprob.length, 0);
    noteColumns(scored.header);
    if (blob) {
      scored.url = URL.createObjectURL(blob);
      $("csv-download").href = scored.url;
      $("csv-download").hidden = false;
    } else {
      $("csv-download-note").textContent = `No download of the scored CSV: ${csvAnswer.reason.detail}`;
    }
    flag();
    ready("csv");
  }, () => current() && clear());
}

async function example() {
  const current = live();
  let text = null;
  await run("Drawing rows", async () => {
    const body = { model: st.model.name, n: 300, seed: seedOf("csv-seed") };
    if (!st.manifest.columns) body.encoding = "records";
    text = csvOf(st.columns, (await api("sample", body)).records);
  }, clear);
  if (text && current()) await score(text);
}

$("csv-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (file) await score(file);
});
$("csv-example").addEventListener("click", example);
$("csv-threshold").addEventListener("input", flag);

export const csvView = {
  reset(state) {
    st = state;
    clear();
  },
  show: example,
};
