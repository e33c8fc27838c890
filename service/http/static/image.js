// The views of image models (binarized MNIST): samples, fill in (/impute), denoise (/denoise) and
// per-pixel surprisal (/logprob's explain on the digit as records x0..x{D-1}).

import { api, fresh, live, ready, run, setStatus } from "./api.js";
import { $, bitGrid, blank, el, fmt, paint, paintBits, paintHeat, heat, rng, seedOf, show } from "./draw.js";
import { referenceOf } from "./reference.js";

let st = null; // the page's state: the model, its manifest and columns
// The Fill-in canvas: ink (0 or 1) and hidden (true or false) per pixel; its row sends null where hidden.
const canvasBits = { ink: null, hidden: null };

function shape() {
  return st.manifest.image_shape;
}

function dims() {
  return st.manifest.dims;
}

async function digit(seed) {
  const answer = await api("sample", { model: st.model.name, n: 1, seed });
  return answer.samples[0];
}

// --- test digits: the reference's held-out examples, where the model has a reference -----------

let tests = []; // the test digits (bits), none without a reference
const FIRST_TEST = { impute: 0, denoise: 1, surprisal: 2 }; // the digit each view opens on
const offered = new Set(); // the views whose picker is filled for this model

// Fills `view`'s picker of test digits (hidden without a reference) and says whether it has any
// (null when the model changed meanwhile).
async function offerTests(view) {
  if (!offered.has(view)) {
    const current = live();
    offered.add(view);
    const loaded = await run("Loading the test digits", async () => {
      const reference = await referenceOf(st);
      tests = reference ? reference.examples || [] : [];
    });
    if (!current()) return null;
    if (!loaded) offered.delete(view); // failed (the server down): asked again the next time
    const picker = $(`${view}-test`);
    picker.replaceChildren(...tests.map((_, i) => el("option", { value: String(i) }, `${i + 1} of ${tests.length}`)));
    picker.value = String(Math.min(FIRST_TEST[view], tests.length - 1));
    $(`${view}-tests`).hidden = !tests.length;
    document.querySelector(`label[for="${view}-seed"]`).textContent = tests.length ? "Sample seed" : "Digit seed";
    $(`${view}-load`).textContent = tests.length ? "Load a model sample" : "Load digit";
    if (view === "impute") {
      $("impute-hint").textContent = tests.length
        ? "Draw with the mouse, or load a test digit (held-out data) or a digit drawn by the model; hide a region (drag a rectangle or brush, or use the buttons) and ask the model what it holds."
        : "Draw with the mouse, or load a digit drawn by the model; hide a region (drag a rectangle or brush, or use the buttons) and ask the model what it holds.";
    }
  }
  return tests.length > 0;
}

// A view whose test digits failed to load (the server down) asks again when its load button is
// pressed, instead of keeping the picker hidden until another model is chosen.
async function retryTests(view) {
  if (!offered.has(view)) await offerTests(view);
}

function testDigit(view) {
  return tests[Number($(`${view}-test`).value)].slice();
}

// --- samples ---------------------------------------------------------------------------------

function drawSamples() {
  const current = fresh("samples");
  return run("Drawing samples", async () => {
    const answer = await api("sample", { model: st.model.name, n: Number($("samples-n").value), seed: seedOf("samples-seed") });
    if (!current()) return;
    bitGrid($("samples-grid"), answer.samples, shape(), "sample");
    ready("samples");
  }, () => current() && $("samples-grid").replaceChildren());
}

// --- fill in ---------------------------------------------------------------------------------

function pixels() {
  return canvasBits.ink.map((v, i) => (canvasBits.hidden[i] ? null : v));
}

function paintCanvas() {
  paintBits($("impute-canvas"), pixels(), shape());
}

function setInk(ink) {
  canvasBits.ink = ink;
  canvasBits.hidden = ink.map(() => false);
  paintCanvas();
}

function hideWhere(test) {
  if (!canvasBits.ink) return;
  const [, w] = shape();
  canvasBits.hidden = canvasBits.hidden.map((v, i) => v || test(Math.floor(i / w), i % w));
  paintCanvas();
}

function pixelAt(event) {
  const canvas = $("impute-canvas");
  const box = canvas.getBoundingClientRect();
  const [h, w] = shape();
  const c = Math.min(w - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * w)));
  const r = Math.min(h - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * h)));
  return [r, c];
}

function brush(r, c, value, radius) {
  const [h, w] = shape();
  for (let dr = -radius; dr <= radius; dr++) {
    for (let dc = -radius; dc <= radius; dc++) {
      const rr = r + dr;
      const cc = c + dc;
      if (rr >= 0 && rr < h && cc >= 0 && cc < w && dr * dr + dc * dc <= radius * radius + 1) {
        if (value === null) canvasBits.hidden[rr * w + cc] = true;
        else canvasBits.ink[rr * w + cc] = value;
      }
    }
  }
}

function wireCanvas() {
  const canvas = $("impute-canvas");
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (!canvasBits.ink) return;
    canvas.setPointerCapture(e.pointerId);
    drag = { start: pixelAt(e), before: canvasBits.hidden.slice() };
    move(e);
  });
  const move = (e) => {
    if (!drag) return;
    const [r, c] = pixelAt(e);
    const tool = $("impute-tool").value;
    if (tool === "rect") {
      const [r0, c0] = drag.start;
      canvasBits.hidden = drag.before.slice();
      hideWhere((rr, cc) => rr >= Math.min(r, r0) && rr <= Math.max(r, r0) && cc >= Math.min(c, c0) && cc <= Math.max(c, c0));
      return;
    }
    brush(r, c, { ink: 1, erase: 0, hide: null }[tool], tool === "ink" ? 1 : 2);
    paintCanvas();
  };
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerup", () => {
    drag = null;
  });
}

function fillIn() {
  const current = fresh("impute");
  const x = pixels();
  return run("Filling in", async () => {
    const answer = await api("impute", { model: st.model.name, x: [x], n_samples: 4, seed: seedOf("impute-seed"), n_importance: 100 });
    if (!current()) return;
    const marginals = answer.marginals[0];
    const canvas = $("impute-heatmap");
    paint(canvas, marginals, shape(), (m, i) => (x[i] === null ? heat(m) : x[i] ? [90, 90, 90] : [235, 235, 235]));
    canvas.dataset.values = JSON.stringify(marginals);
    bitGrid($("impute-completions"), answer.samples[0], shape(), "completion");
    show($("impute-logprob"), answer.logprob_observed[0]);
    $("impute-exact").textContent = answer.exact[0] ? "yes" : "no (importance sampling)";
    $("impute-exact").dataset.value = String(answer.exact[0]);
    show($("impute-ess"), answer.ess[0], 1);
    ready("impute");
  }, () => current() && clearImpute());
}

// A failed request leaves no answer of the one before on screen.
function clearImpute() {
  blank($("impute-heatmap"));
  $("impute-completions").replaceChildren();
  for (const id of ["impute-logprob", "impute-exact", "impute-ess"]) show($(id), null);
}

async function loadCanvas() {
  await run("Loading a digit", async () => {
    setInk(await digit(seedOf("impute-seed")));
  });
}

async function showImpute() {
  const current = live();
  const hasTests = await offerTests("impute");
  if (!current()) return;
  if (hasTests) setInk(testDigit("impute"));
  else await loadCanvas();
  if (!current() || !canvasBits.ink) return;
  hideWhere((r) => r >= shape()[0] / 2);
  await fillIn();
}

// --- denoise ---------------------------------------------------------------------------------

const noisy = { clean: null, x: null };

function corrupt() {
  const eps = Number($("denoise-eps").value);
  const u = rng(seedOf("denoise-noise-seed"));
  noisy.x = noisy.clean.map((b) => (u() < eps ? 1 - b : b));
  show($("denoise-eps-value"), eps);
  paintBits($("denoise-noisy"), noisy.x, shape());
  show($("denoise-wrong-noisy"), noisy.x.filter((b, i) => b !== noisy.clean[i]).length, 0);
}

function denoise() {
  if (!noisy.clean) return undefined;
  corrupt();
  const current = fresh("denoise");
  const body = { model: st.model.name, x: [noisy.x], eps: Number($("denoise-eps").value), n_samples: 0, n_importance: 50, seed: seedOf("denoise-noise-seed") };
  return run("Denoising", async () => {
    const answer = await api("denoise", body);
    if (!current()) return;
    paintHeat($("denoise-marginals"), answer.marginals[0], shape());
    const best = answer.most_likely[0];
    paintBits($("denoise-most-likely"), best, shape());
    show($("denoise-wrong-denoised"), best.filter((b, i) => b !== noisy.clean[i]).length, 0);
    show($("denoise-logprob"), answer.logprob_noisy[0]);
    show($("denoise-stderr"), answer.stderr[0]);
    show($("denoise-ess"), answer.ess[0], 1);
    ready("denoise");
  }, () => current() && clearDenoise());
}

function clearDenoise() {
  blank($("denoise-marginals"));
  blank($("denoise-most-likely"));
  for (const id of ["denoise-wrong-denoised", "denoise-logprob", "denoise-stderr", "denoise-ess"]) show($(id), null);
}

function setClean(bits) {
  noisy.clean = bits;
  paintBits($("denoise-clean"), noisy.clean, shape());
}

async function loadNoisy() {
  const current = live();
  await run("Loading a digit", async () => {
    setClean(await digit(seedOf("denoise-seed")));
  });
  if (current()) await denoise();
}

async function showDenoise() {
  const current = live();
  const hasTests = await offerTests("denoise");
  if (!current()) return undefined;
  if (!hasTests) return loadNoisy();
  setClean(testDigit("denoise"));
  return denoise();
}

// --- surprisal -------------------------------------------------------------------------------

const explained = { bits: null, answer: null };

function paintSurprisal() {
  const kind = $("surprisal-kind").value;
  const s = explained.answer.surprisal[0];
  const values = Array.from({ length: dims() }, (_, d) => s[`x${d}`][kind]);
  paintHeat($("surprisal-heatmap"), values, shape(), Math.max(1, ...values));
  const w = shape()[1];
  const top = values.map((v, d) => [v, d]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  $("surprisal-top").textContent = top.map(([v, d]) => `(${Math.floor(d / w)}, ${d % w}) ${fmt(v)}`).join("; ");
  $("surprisal-top").dataset.value = JSON.stringify(top.map(([v, d]) => [d, v]));
}

function explain() {
  if (!explained.bits) return undefined;
  const current = fresh("surprisal");
  const record = Object.fromEntries(explained.bits.map((b, d) => [`x${d}`, b]));
  return run("Explaining", async () => {
    const answer = await api("logprob", { model: st.model.name, records: [record], explain: true });
    if (!current()) return;
    explained.answer = answer;
    show($("surprisal-logprob"), answer.logprob[0]);
    paintSurprisal();
    ready("surprisal");
  }, () => {
    if (!current()) return;
    explained.answer = null;
    blank($("surprisal-heatmap"));
    show($("surprisal-logprob"), null);
    show($("surprisal-top"), null);
  });
}

function setExplained(bits) {
  explained.bits = bits;
  explained.answer = null;
  paintBits($("surprisal-digit"), bits, shape());
}

async function loadExplained() {
  const current = live();
  await run("Loading a digit", async () => {
    setExplained(await digit(seedOf("surprisal-seed")));
  });
  if (current()) await explain();
}

async function showSurprisal() {
  const current = live();
  const hasTests = await offerTests("surprisal");
  if (!current()) return undefined;
  if (!hasTests) return loadExplained();
  setExplained(testDigit("surprisal"));
  return explain();
}

function fromCanvas() {
  if (!canvasBits.ink || canvasBits.hidden.includes(true)) {
    setStatus("The Fill-in canvas has hidden pixels (or none yet): show all of it first.", true);
    return;
  }
  setExplained(canvasBits.ink.slice());
  explain();
}

// --- wiring ----------------------------------------------------------------------------------

function on(id, event, handler) {
  $(id).addEventListener(event, handler);
}

on("samples-go", "click", drawSamples);
on("impute-load", "click", () => retryTests("impute").then(loadCanvas));
on("impute-clear", "click", () => setInk(new Array(dims()).fill(0)));
on("impute-hide-top", "click", () => hideWhere((r) => r < shape()[0] / 2));
on("impute-hide-bottom", "click", () => hideWhere((r) => r >= shape()[0] / 2));
on("impute-hide-left", "click", () => hideWhere((r, c) => c < shape()[1] / 2));
on("impute-hide-right", "click", () => hideWhere((r, c) => c >= shape()[1] / 2));
on("impute-show-all", "click", () => canvasBits.ink && setInk(canvasBits.ink));
on("impute-go", "click", () => canvasBits.ink && fillIn());
on("denoise-load", "click", () => retryTests("denoise").then(loadNoisy));
on("denoise-eps", "input", () => noisy.clean && corrupt());
on("denoise-eps", "change", denoise);
on("denoise-go", "click", denoise);
on("surprisal-load", "click", () => retryTests("surprisal").then(loadExplained));
on("surprisal-from-canvas", "click", fromCanvas);
on("surprisal-kind", "change", () => explained.answer && paintSurprisal());
on("surprisal-go", "click", explain);
const loadTest = {
  impute: () => setInk(testDigit("impute")),
  denoise: () => showDenoise(),
  surprisal: () => showSurprisal(),
};
for (const [view, load] of Object.entries(loadTest)) {
  on(`${view}-test`, "change", load);
  on(`${view}-load-test`, "click", load);
}
wireCanvas();

function reset(state) {
  st = state;
  canvasBits.ink = null;
  canvasBits.hidden = null;
  noisy.clean = null;
  explained.bits = null;
  tests = [];
  offered.clear();
}

export const imageViews = {
  samples: { reset, show: drawSamples },
  impute: { reset, show: showImpute },
  denoise: { reset, show: showDenoise },
  surprisal: { reset, show: showSurprisal },
};
