// Score a CSV: the file goes to POST /logprob as text/csv (the server reads it with the project's
// one CSV reader), once for the numbers (JSON) and once for the scored CSV (Accept: text/csv) to
// download, with the same seed so that both hold the same log p. A histogram of log p, and a
// slider: the share of rows flagged as the least likely.

import { api, query, ready, run } from "./api.js";
import { $, binCounts, edgesOf, el, fmt, histogram, show } from "./draw.js";

let st = null;
const scored = { rows: null, header: null, logprob: null, url: null };
let latest = 0;

// RFC 4180 cells, separated by the most frequent of , ; | and tab in the header line (as the
// server reads them); only for showing the flagged rows.
export function parseCsv(text) {
  const firstLine = text.split(/\r?\n/, 1)[0];
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
      if (row.some((c) => c.trim() !== "")) rows.push(row);
      row = [];
      cell = "";
    } else cell += ch;
  }
  row.push(cell);
  if (row.some((c) => c.trim() !== "")) rows.push(row);
  return rows;
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

function score(text) {
  latest += 1;
  const mine = latest;
  const path = `logprob?${query({ model: st.model.name, seed: Math.max(0, Math.floor(Number($("csv-seed").value) || 0)) })}`;
  return run("Scoring the CSV", async () => {
    const [answer, csvAnswer] = await Promise.all([api(path, text), api(path, text, { accept: "text/csv", raw: true })]);
    const blob = await csvAnswer.blob();
    if (mine !== latest) return;
    const parsed = parseCsv(text);
    scored.header = parsed[0];
    scored.rows = parsed.slice(1);
    scored.logprob = answer.logprob;
    show($("csv-rows"), answer.logprob.length, 0);
    if (scored.url) URL.revokeObjectURL(scored.url);
    scored.url = URL.createObjectURL(blob);
    $("csv-download").href = scored.url;
    $("csv-download").hidden = false;
    flag();
    ready("csv");
  });
}

async function example() {
  let text = null;
  await run("Drawing rows", async () => {
    const body = { model: st.model.name, n: 300, seed: Math.max(0, Math.floor(Number($("csv-seed").value) || 0)) };
    if (!st.manifest.columns) body.encoding = "records";
    text = csvOf(st.columns, (await api("sample", body)).records);
  });
  if (text) await score(text);
}

$("csv-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (file) await score(await file.text());
});
$("csv-example").addEventListener("click", example);
$("csv-threshold").addEventListener("input", flag);

export const csvView = {
  reset(state) {
    st = state;
    scored.logprob = null;
    $("csv-download").hidden = true;
  },
  show: example,
};
