/**
 * The MADE playground: the entry module of the page served at /ui/ (docs/playground.md).
 *
 * Navigation: `#model=NAME&view=VIEW` in the URL (or the picker and the view buttons). Every view is
 * a <section id="view-VIEW">, its button in the nav `nav-VIEW`; only the views of the model's kind
 * are offered. Global controls: `model-picker` (select), `api-key` + `api-key-save` (shown when the
 * server answers 401). Status and errors: `status`.
 *
 * Views and their controls (ids):
 * - card (every model): read-only `card`.
 * - samples (image models): `samples-seed`, `samples-n`, `samples-go`; out: `samples-grid`.
 * Where the model's version has a reference (GET /models/{name}/reference, reference.js), the
 * impute, denoise and surprisal views offer its test digits, `VIEW-test` (select) and
 * `VIEW-load-test`, in `VIEW-tests` (hidden without one), and the record view its held-out rows,
 * `record-example` and `record-load-example` in `record-examples`.
 * - impute (image models): `impute-seed`, `impute-load`, `impute-clear`, `impute-tool`,
 *   `impute-hide-top`, `impute-hide-bottom`, `impute-hide-left`, `impute-hide-right`,
 *   `impute-show-all`, `impute-go`, canvas `impute-canvas`; out: `impute-heatmap`,
 *   `impute-completions`, `impute-logprob`, `impute-exact`, `impute-ess`.
 * - denoise (image models): `denoise-seed`, `denoise-load`, `denoise-eps` (range),
 *   `denoise-noise-seed`, `denoise-go`; out: `denoise-clean`, `denoise-noisy`,
 *   `denoise-marginals`, `denoise-most-likely`, `denoise-logprob`, `denoise-stderr`, `denoise-ess`,
 *   `denoise-wrong-noisy`, `denoise-wrong-denoised`.
 * - surprisal (image models): `surprisal-seed`, `surprisal-load`, `surprisal-from-canvas`,
 *   `surprisal-kind`, `surprisal-go`; out: `surprisal-digit`, `surprisal-heatmap`,
 *   `surprisal-logprob`, `surprisal-top`.
 * - record (table models, and models of bits without an image shape, as columns x0..): `record-seed`,
 *   `record-fill`, `record-score`, per column i `record-col-I` and `record-unknown-I`; out:
 *   `record-logprob`, `record-percentile` (and what it is among, `record-percentile-among`),
 *   `record-surprisal`, `record-impute`.
 * - given (table models): per column i `given-use-I` and `given-col-I`, `given-n`, `given-seed`,
 *   `given-go`; out: `given-exact`, `given-ess`, `given-hists`, `given-rows`.
 * - csv (table models): `csv-file`, `csv-example`, `csv-seed`, `csv-threshold` (range),
 *   `csv-download` (a link, once scored; `csv-download-note` says why there is none); out: `csv-columns-note` (the header's
 *   columns the model lacks, and the model's the header lacks), `csv-rows`, `csv-flagged`, `csv-threshold-value`,
 *   `csv-hist`, `csv-table`.
 *
 * Enter in a seed or row count outside a form clicks the button named by its `data-enter`.
 * Each view draws its first answer when it is first shown for a model; the page sets
 * `document.body.dataset.busy` to the number of requests in flight, and each view's section
 * gets `data-ready="1"` once its answer is drawn (the tests and the screenshot script wait on it).
 */

import { api, apiKey, live, newModel, run, setApiKey, setStatus } from "./api.js";
import { renderCard } from "./card.js";
import { $, el } from "./draw.js";
import { imageViews } from "./image.js";
import { tableViews } from "./table.js";
import { csvView } from "./csv.js";

const TITLES = {
  card: "Model card", samples: "Samples", impute: "Fill in", denoise: "Denoise", surprisal: "Surprisal",
  record: "Score a record", given: "Conditional sampling", csv: "Score a CSV",
};
const VIEWS = { ...imageViews, ...tableViews, csv: csvView, card: { show: renderCard } };
const KINDS = { image: ["samples", "impute", "denoise", "surprisal", "card"], table: ["record", "given", "csv", "card"] };

const state = { models: [], model: null, manifest: null, columns: null, view: null, shown: new Set() };

function kindOf(model) {
  return model.image_shape ? "image" : "table";
}

// A model's columns: its schema, or, for a model of bits, x0..x{D-1} with levels "0" and "1".
function columnsOf(manifest) {
  if (manifest.columns) return manifest.columns;
  return Array.from({ length: manifest.dims }, (_, i) => ({ name: `x${i}`, kind: "binary", levels: ["0", "1"] }));
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { model: params.get("model"), view: params.get("view") };
}

function writeHash() {
  const hash = `#model=${encodeURIComponent(state.model.name)}&view=${state.view}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function showView(view) {
  const views = KINDS[kindOf(state.model)];
  state.view = views.includes(view) ? view : views[0];
  for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== `view-${state.view}`;
  for (const button of $("views").querySelectorAll("button")) {
    button.setAttribute("aria-current", button.dataset.view === state.view ? "page" : "false");
  }
  writeHash();
  if (!state.shown.has(state.view)) {
    state.shown.add(state.view);
    VIEWS[state.view].show(state);
  }
}

async function selectModel(name, view) {
  const model = state.models.find((m) => m.name === name) || state.models.find((m) => m.default) || state.models[0];
  $("model-picker").value = model.name;
  newModel(); // the answers still in flight are for the model shown before: dropped
  const current = live();
  await run(`Loading ${model.name}`, async () => {
    state.manifest = await api(`models/${encodeURIComponent(model.name)}`);
  });
  if (!state.manifest || state.manifest.name !== model.name) {
    // not loaded (and not overtaken by a later pick): the picker names the model still shown
    if (current() && state.model) {
      $("model-picker").value = state.model.name;
      writeHash();
    }
    return;
  }
  newModel(); // and those asked for while it loaded
  state.model = model;
  state.columns = columnsOf(state.manifest);
  state.shown = new Set();
  for (const v of Object.values(VIEWS)) v.reset?.(state);
  for (const section of document.querySelectorAll("section.view")) delete section.dataset.ready;
  $("views").replaceChildren(
    ...KINDS[kindOf(model)].map((v) => {
      const button = el("button", { type: "button", id: `nav-${v}`, data: { view: v } }, TITLES[v]);
      button.addEventListener("click", () => showView(v));
      return button;
    }),
  );
  showView(view);
}

async function start() {
  await run("Loading the models", async () => {
    const answer = await api("models");
    state.models = answer.models;
  });
  if (!state.models.length) return;
  const picker = $("model-picker");
  picker.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, `${m.name} (v${m.version})`)));
  picker.disabled = false;
  const wanted = readHash();
  await selectModel(wanted.model, wanted.view);
}

$("model-picker").addEventListener("change", (e) => selectModel(e.target.value, null));
$("api-key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  // A header carries printable ASCII only: another character would fail every request (fetch
  // refuses it) and, kept for the tab, leave the page with no way to give another key.
  if (/[^\x20-\x7e]/.test(key)) {
    setStatus("That API key holds a character other than printable ASCII, which cannot be sent: check it and try again.", true);
    $("api-key").focus();
    return;
  }
  setApiKey(key);
  $("api-key-form").hidden = !!apiKey();
  if (!state.models.length) start();
  else selectModel(state.model ? state.model.name : null, state.view);
});
window.addEventListener("hashchange", () => {
  const wanted = readHash();
  if (!state.model) return;
  if (wanted.model && wanted.model !== state.model.name) selectModel(wanted.model, wanted.view);
  else if (wanted.view && wanted.view !== state.view) showView(wanted.view);
});
// Enter in a field outside a form (a seed, a row count) clicks the button its data-enter names.
document.addEventListener("keydown", (e) => {
  const target = e.target.dataset && e.target.dataset.enter;
  if (e.key !== "Enter" || !target || e.isComposing) return;
  e.preventDefault();
  $(target).click();
});
if (apiKey()) $("api-key").value = apiKey();
start();
