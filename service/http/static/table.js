// The views of table models (and of models of bits without an image, as columns x0..): a record
// scored with its percentile among the held-out rows, per-column surprisal and the unknown cells'
// distributions; and conditional sampling (`given`) beside the training data's marginals. Both use
// the model's reference (reference.js); a version without one falls back to rows drawn from the
// model: the percentile among 500 of them, the histograms beside as many as the condition's.

import { api, fresh, live, ready, run, setStatus } from "./api.js";
import { $, bars, binCounts, edgesOf, el, fmt, histogram, seedOf, show, wholeOf } from "./draw.js";
import { exampleRecords, heldOutPercentile, heldOutText, referenceOf } from "./reference.js";

let st = null;
const DRAWN = { n: 500, seed: 0 }; // without a reference, the rows a record's percentile is taken among
let drawnRows = null; // {model, logprobs (ascending, null first)}
const DRAWN_TEXT = "among 500 rows drawn from the model (seed 0), not held-out data";
const UNKNOWN_TEXT = "none: with unknown cells, log p is that of the known cells, not comparable with complete rows'";

function numeric(col) {
  return col.kind === "numeric";
}

// Records drawn from the model: a model of bits answers records only when asked.
async function sampleRecords(n, seed, given) {
  const body = { model: st.model.name, n, seed };
  if (given) body.given = given;
  else if (!st.manifest.columns) body.encoding = "records";
  return api("sample", body);
}

// --- one control per column ------------------------------------------------------------------

// A number's input: the column's step, and its bounds (the schema's lower and upper, which the
// server holds a value to: one outside them is a 422) as min and max.
function valueControl(id, col) {
  if (!numeric(col)) return el("select", { id }, ...col.levels.map((l) => el("option", { value: l }, l)));
  const step = col.decimals === null || col.decimals === undefined ? "any" : String(10 ** -col.decimals);
  const input = el("input", { id, type: "number", step, required: !col.nullable });
  if (col.lower !== null && col.lower !== undefined) input.min = String(col.lower);
  else if (col.transform === "log") input.min = step === "any" ? "0" : step; // a log column holds positive numbers
  if (col.upper !== null && col.upper !== undefined) input.max = String(col.upper);
  return input;
}

function buildForm(form, prefix, toggle) {
  form.replaceChildren(
    ...st.columns.map((col, i) => {
      const control = valueControl(`${prefix}-col-${i}`, col);
      const check = el("input", { type: "checkbox", id: `${prefix}-${toggle.id}-${i}` });
      const checkLabel = el("label", { htmlFor: check.id, class: "toggle" }, check, el("span", { class: "sr" }, `${col.name} `), toggle.text);
      return el("div", { class: "column" }, el("label", { htmlFor: control.id, class: "name" }, col.name), control, checkLabel);
    }),
  );
}

function setValues(prefix, record) {
  st.columns.forEach((col, i) => {
    const v = record[col.name];
    $(`${prefix}-col-${i}`).value = v === null || v === undefined || v === "NA" ? "" : String(v);
  });
}

// A cell's value: a level, a number, or "NA" for an empty number of a column that can be absent.
function valueOf(prefix, i) {
  const col = st.columns[i];
  const raw = $(`${prefix}-col-${i}`).value;
  if (!numeric(col)) return raw;
  return raw === "" ? "NA" : Number(raw);
}

// Why a number's input cannot be sent (empty where the column cannot be absent, not a number,
// outside the column's bounds), or null.
function problemOf(prefix, i) {
  const col = st.columns[i];
  const input = $(`${prefix}-col-${i}`);
  if (!numeric(col)) return null;
  const v = input.validity;
  if (v.badInput) return `${col.name} is not a number`;
  if (input.value === "" && !col.nullable) return `${col.name} is empty`;
  if (v.rangeUnderflow || v.rangeOverflow) return `${col.name}: ${input.value} is outside the column's bounds, ${input.min || "−∞"} to ${input.max || "∞"}`;
  return null;
}

// Whether a column in use (its value sent) cannot be sent: each such input is marked invalid
// (aria-invalid), the first named in the status line (with `hint`, what to do) and focused.
function refused(prefix, used, what, hint) {
  const problems = st.columns.map((_, i) => (used(i) ? problemOf(prefix, i) : null));
  problems.forEach((p, i) => {
    const input = $(`${prefix}-col-${i}`);
    if (p) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  });
  const i = problems.findIndex((p) => p);
  if (i < 0) return false;
  setStatus(`${what}: ${problems[i]} (${hint}).`, true);
  $(`${prefix}-col-${i}`).focus();
  return true;
}

// --- score a record --------------------------------------------------------------------------

async function drawnLogprobs() {
  if (drawnRows && drawnRows.model === st.model.name) return drawnRows.logprobs;
  const drawn = await sampleRecords(DRAWN.n, DRAWN.seed);
  const scored = await api("logprob", { model: st.model.name, records: drawn.records, seed: DRAWN.seed });
  const logprobs = scored.logprob.map((v) => (v === null ? -Infinity : v)).sort((a, b) => a - b);
  drawnRows = { model: st.model.name, logprobs };
  return logprobs;
}

// The share (in %) of the drawn rows whose log p is at most lp.
function drawnPercentile(sorted, lp) {
  const value = lp === null ? -Infinity : lp;
  const below = sorted.filter((v) => v <= value).length;
  return (100 * below) / sorted.length;
}

// lp -> [percentile, what it is taken among]: the held-out rows where the model has a reference.
async function percentileOf() {
  const reference = await referenceOf(st);
  if (reference) return (lp) => [heldOutPercentile(reference.logprob_quantiles, lp), `among ${heldOutText(reference)}`];
  const sorted = await drawnLogprobs();
  return (lp) => [drawnPercentile(sorted, lp), DRAWN_TEXT];
}

function record() {
  const rec = {};
  st.columns.forEach((col, i) => {
    rec[col.name] = $(`record-unknown-${i}`).checked ? null : valueOf("record", i);
  });
  return rec;
}

function quantileBand(d) {
  const lo = d.q05 - (d.q95 - d.q05) * 0.2;
  const hi = d.q95 + (d.q95 - d.q05) * 0.2;
  const at = (v) => (hi > lo ? (100 * (v - lo)) / (hi - lo) : 50);
  const band = el("span", { class: "band" });
  band.style.left = `${at(d.q05)}%`;
  band.style.width = `${at(d.q95) - at(d.q05)}%`;
  const mid = el("span", { class: "median" });
  mid.style.left = `${at(d.q50)}%`;
  const numbers = ["q05", "q50", "q95", "mean", "sd"].map((k) => {
    const n = el("output", { class: `q-${k}` });
    show(n, d[k]);
    return el("span", {}, `${k === "q50" ? "median" : k} `, n);
  });
  return el("div", {}, el("div", { class: "quantiles" }, band, mid), el("div", { class: "qnums" }, ...numbers));
}

function drawDistributions(distributions) {
  const box = $("record-impute");
  const names = Object.keys(distributions);
  if (!names.length) {
    box.replaceChildren(el("p", { class: "hint" }, "Tick “unknown” on a column to see what the model believes it holds."));
    return;
  }
  box.replaceChildren(
    ...names.map((name) => {
      const d = distributions[name];
      const body = el("div", { class: "bars" });
      if ("q50" in d) return el("div", { class: "dist", data: { column: name } }, el("h3", {}, name), quantileBand(d));
      bars(body, Object.entries(d).map(([label, p]) => ({ label, value: p })), 3);
      return el("div", { class: "dist", data: { column: name } }, el("h3", {}, name), body);
    }),
  );
}

// A failed request (or a form that cannot be sent) leaves no answer of the one before on screen.
function clearRecord() {
  show($("record-logprob"), null);
  show($("record-percentile"), null);
  $("record-surprisal").replaceChildren();
  $("record-impute").replaceChildren();
}

function score() {
  const current = fresh("record");
  if (refused("record", (i) => !$(`record-unknown-${i}`).checked, "Not scored", "give a number, or tick its “unknown” box")) {
    clearRecord();
    return undefined;
  }
  const rec = record();
  const complete = Object.values(rec).every((v) => v !== null);
  return run("Scoring", async () => {
    const body = { model: st.model.name, records: [rec], seed: 0 };
    if (complete) body.explain = true;
    const [answer, percentile, imputed] = await Promise.all([
      api("logprob", body),
      percentileOf(),
      complete ? null : api("impute", { model: st.model.name, records: [rec], seed: 0, n_samples: 1 }),
    ]);
    if (!current()) return;
    const lp = answer.logprob[0];
    show($("record-logprob"), lp, 3);
    if (complete) {
      const [p, among] = percentile(lp);
      show($("record-percentile"), p, 1);
      $("record-percentile-among").textContent = among;
    } else {
      // the log p of the known cells only: not comparable with complete rows' log p
      show($("record-percentile"), null);
      $("record-percentile-among").textContent = UNKNOWN_TEXT;
    }
    if (answer.surprisal) {
      const s = answer.surprisal[0];
      bars($("record-surprisal"), st.columns.map((c) => ({ label: c.name, value: s[c.name].given_others })));
    } else {
      $("record-surprisal").replaceChildren(el("p", { class: "hint" }, "Surprisal per column needs every column known."));
    }
    drawDistributions(imputed ? imputed.distributions[0] : {});
    ready("record");
  }, () => current() && clearRecord());
}

function setRecord(rec) {
  setValues("record", rec);
  st.columns.forEach((_, i) => {
    $(`record-unknown-${i}`).checked = false;
  });
}

async function fillRecord() {
  const current = live();
  await run("Drawing a row", async () => {
    const drawn = await sampleRecords(1, seedOf("record-seed"));
    setRecord(drawn.records[0]);
  });
  if (current()) await score();
}

let heldOut = []; // the reference's held-out rows as records (none without a reference)

// The held-out rows offered in the record view (a picker and its button, hidden without them).
async function offerHeldOut() {
  const current = live();
  heldOut = [];
  await run("Loading the held-out rows", async () => {
    const reference = await referenceOf(st);
    heldOut = reference ? exampleRecords(reference) : [];
  });
  if (!current()) return;
  const picker = $("record-example");
  picker.replaceChildren(...heldOut.map((_, i) => el("option", { value: String(i) }, `row ${i + 1} of ${heldOut.length}`)));
  $("record-examples").hidden = !heldOut.length;
}

async function loadHeldOut() {
  const rec = heldOut[Number($("record-example").value)];
  if (!rec) return;
  setRecord(rec);
  await score();
}

// A number's training range (its reference marginal's first and last edge, with the column's
// decimals) as the input's hint: within the column's bounds (min and max, which the server holds
// a value to), a value outside the training range is what an anomaly looks like.
async function showRanges(prefix) {
  const current = live();
  const reference = await referenceOf(st);
  if (!reference || !current()) return;
  st.columns.forEach((col, i) => {
    const m = reference.marginals[col.name];
    if (!numeric(col) || !m || m.kind !== "number") return;
    const digits = col.decimals ?? 2;
    const [lo, hi] = [fmt(m.edges[0], digits), fmt(m.edges[m.edges.length - 1], digits)];
    const input = $(`${prefix}-col-${i}`);
    input.placeholder = `${lo} to ${hi}`;
    input.title = `training range: ${lo} to ${hi}`;
    input.dataset.range = `${m.edges[0]},${m.edges[m.edges.length - 1]}`;
  });
}

async function showRecord() {
  const current = live();
  buildForm($("record-form"), "record", { id: "unknown", text: "unknown" });
  await offerHeldOut();
  await showRanges("record");
  if (!current()) return;
  if (heldOut.length) await loadHeldOut();
  else await fillRecord();
}

// --- conditional sampling --------------------------------------------------------------------

// The condition: the ticked columns' values, or null where none is ticked (sampled without one).
function given() {
  const out = {};
  st.columns.forEach((col, i) => {
    if ($(`given-use-${i}`).checked) out[col.name] = valueOf("given", i);
  });
  return Object.keys(out).length ? out : null;
}

function present(v) {
  return v !== null && v !== undefined && v !== "NA";
}

// A column's histogram: the rows meeting the condition beside `other`, either the rows drawn without
// it (a list of records) or the column's training marginal from the reference (its bins: the
// marginal's edges for a number, its levels for a category; its counts or frequencies as they are).
function columnHistogram(col, conditional, other) {
  const a = conditional.map((r) => r[col.name]);
  const marginal = Array.isArray(other) ? null : other;
  const b = marginal ? [] : other.map((r) => r[col.name]);
  let labels;
  let series;
  let absent = null; // [share absent in the conditional rows, in the training rows], numbers only
  if (marginal && marginal.kind === "number") {
    const edges = marginal.edges;
    labels = edges.slice(0, -1).map((e) => fmt(e, col.decimals ?? 2));
    series = [binCounts(a.filter(present).map(Number), edges), marginal.counts];
    absent = [a.filter((v) => !present(v)).length / Math.max(1, a.length), marginal.p_absent || 0];
  } else if (marginal) {
    labels = [...Object.keys(marginal.levels), ...(col.levels || []).filter((l) => !(l in marginal.levels))];
    series = [labels.map((l) => a.filter((v) => String(v) === l).length), labels.map((l) => marginal.levels[l] ?? 0)];
  } else if (numeric(col)) {
    const edges = edgesOf([...a, ...b].map(Number), 16);
    labels = edges.slice(0, -1).map((e) => fmt(e, col.decimals ?? 2));
    series = [binCounts(a.map(Number), edges), binCounts(b.map(Number), edges)];
  } else {
    labels = col.levels;
    series = [a, b].map((vs) => col.levels.map((l) => vs.filter((v) => String(v) === l).length));
  }
  const box = el("div", { class: "hist", data: { column: col.name } });
  histogram(box, labels, [{ counts: series[0], class: "given" }, { counts: series[1], class: marginal ? "free training" : "free" }]);
  const caption = el("figcaption", {}, col.name);
  if (absent && (absent[0] > 0 || absent[1] > 0)) {
    const [mine, training] = absent.map((share) => {
      const out = el("output");
      show(out, 100 * share, 1);
      return out;
    });
    caption.append(" · absent: ", mine, "% of these rows, ", training, "% in training");
  }
  return el("figure", {}, caption, box);
}

function rowsTable(table, rows) {
  const names = st.columns.map((c) => c.name);
  const head = el("tr", {}, ...names.map((n) => el("th", { scope: "col" }, n)));
  const body = rows.slice(0, 50).map((r) => el("tr", {}, ...names.map((n) => el("td", { data: { value: JSON.stringify(r[n]) } }, String(r[n])))));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function clearGiven() {
  $("given-exact").textContent = "";
  show($("given-ess"), null);
  $("given-hists").replaceChildren();
  $("given-rows").replaceChildren();
}

function sampleGiven() {
  const current = fresh("given");
  if (refused("given", (i) => $(`given-use-${i}`).checked, "Not sampled", "give a number, or untick it")) {
    clearGiven();
    return undefined;
  }
  const condition = given();
  const n = wholeOf("given-n", 1);
  const seed = seedOf("given-seed");
  return run("Sampling", async () => {
    const reference = await referenceOf(st);
    const [cond, free] = await Promise.all([sampleRecords(n, seed, condition), reference ? null : sampleRecords(n, seed)]);
    if (!current()) return;
    $("given-exact").textContent = cond.exact === undefined ? "yes (no condition)" : cond.exact ? "yes" : "no (resampled)";
    show($("given-ess"), cond.ess ?? null, 1);
    const shown = st.columns.length > 16 ? st.columns.slice(0, 16) : st.columns;
    const other = reference ? "the training data's marginals" : "rows drawn without it (the model's own marginals)";
    $("given-hists").replaceChildren(
      el("p", { class: "legend" }, el("span", { class: "key given" }), " rows meeting the condition ",
        el("span", { class: "key free" }, ""), ` ${other}`),
      ...shown.map((col) => columnHistogram(col, cond.records, reference ? reference.marginals[col.name] || [] : free.records)),
    );
    rowsTable($("given-rows"), cond.records);
    ready("given");
  }, () => current() && clearGiven());
}

async function showGiven() {
  const current = live();
  buildForm($("given-form"), "given", { id: "use", text: "condition on it" });
  await run("Drawing a row", async () => {
    const reference = await referenceOf(st); // the first held-out row, or a row drawn from the model
    const first = reference ? exampleRecords(reference)[0] : null;
    setValues("given", first || (await sampleRecords(1, 0)).records[0]);
    await showRanges("given");
  });
  if (!current()) return;
  const first = st.columns.findIndex((c) => !numeric(c));
  $(`given-use-${Math.max(0, first)}`).checked = true;
  await sampleGiven();
}

$("record-fill").addEventListener("click", fillRecord);
$("record-example").addEventListener("change", loadHeldOut);
$("record-load-example").addEventListener("click", loadHeldOut);
$("record-form").addEventListener("submit", (e) => {
  e.preventDefault();
  score();
});
$("given-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sampleGiven();
});

function reset(state) {
  st = state;
}

export const tableViews = {
  record: { reset, show: showRecord },
  given: { reset, show: showGiven },
};
