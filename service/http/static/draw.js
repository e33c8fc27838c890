// Drawing helpers: elements, bit images and heatmaps on canvases, bar charts and histograms as
// plain elements (sized through the CSS object model, which the page's CSP allows). Every number
// shown also sits, exact, in a data-value attribute (or data-values, a JSON list, for images),
// so that the tests compare what the page shows with what the API answers.

export function $(id) {
  return document.getElementById(id);
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

export function fmt(x, digits = 2) {
  if (x === null || x === undefined) return "—";
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 1e5 ? x.toExponential(2) : x.toFixed(digits);
}

// An <output> (or any element) showing a number rounded, holding it exact in data-value.
export function show(node, value, digits = 2) {
  node.textContent = fmt(value, digits);
  node.dataset.value = value === null || value === undefined ? "null" : String(value);
}

// A seeded generator of uniforms in [0, 1) (mulberry32): the page's own noise is repeatable.
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// White (0) through orange to dark red (1).
export function heat(v) {
  const t = Math.max(0, Math.min(1, v));
  if (t < 0.5) return [255, Math.round(255 - 120 * t * 2), Math.round(255 - 255 * t * 2)];
  return [Math.round(255 - 135 * (t - 0.5) * 2), Math.round(135 - 135 * (t - 0.5) * 2), 0];
}

// Paint one value per pixel: color(value, index) -> [r, g, b].
export function paint(canvas, values, shape, color) {
  const [h, w] = shape;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  values.forEach((v, i) => {
    const [r, g, b] = color(v, i);
    img.data.set([r, g, b, 255], i * 4);
  });
  ctx.putImageData(img, 0, 0);
}

// A bit (0/1) or hidden (null) pixel: ink black, paper white, hidden light blue.
export function bitColor(v) {
  if (v === null) return [170, 205, 255];
  return v ? [20, 20, 20] : [255, 255, 255];
}

export function paintBits(canvas, bits, shape) {
  paint(canvas, bits, shape, bitColor);
  canvas.dataset.value = bits.map((b) => (b === null ? "?" : b)).join("");
}

// A canvas emptied (what it showed is gone, and so are its values).
export function blank(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.value;
  delete canvas.dataset.values;
}

export function paintHeat(canvas, values, shape, max = 1) {
  paint(canvas, values, shape, (v) => heat(v / max));
  canvas.dataset.values = JSON.stringify(values);
}

// A grid of small bit images (samples, completions).
export function bitGrid(container, rows, shape, label) {
  container.replaceChildren(
    ...rows.map((bits, i) => {
      const c = el("canvas", { class: "thumb", "aria-label": `${label} ${i + 1}` });
      paintBits(c, bits, shape);
      return c;
    }),
  );
}

// Horizontal bars: items [{label, value, text?}], value >= 0, scaled to the largest.
export function bars(container, items, digits = 2) {
  const max = Math.max(1e-12, ...items.map((it) => it.value || 0));
  container.replaceChildren(
    ...items.map((it) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(100 * (it.value || 0)) / max}%`;
      const num = el("span", { class: "num" });
      show(num, it.value, digits);
      if (it.text) num.textContent = it.text;
      return el("div", { class: "bar" }, el("span", { class: "label", title: it.label }, it.label), el("span", { class: "track" }, fill), num);
    }),
  );
}

// Counts of values in `edges.length - 1` bins (the last bin closed).
export function binCounts(values, edges) {
  const counts = new Array(edges.length - 1).fill(0);
  for (const v of values) {
    if (v === null || Number.isNaN(v)) continue;
    let i = edges.findIndex((e, j) => j > 0 && v < e) - 1;
    if (i < 0) i = v >= edges[edges.length - 1] ? edges.length - 2 : 0;
    counts[i] += 1;
  }
  return counts;
}

export function edgesOf(values, nbins) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (!(hi > lo)) {
    lo -= 0.5;
    hi += 0.5;
  }
  return Array.from({ length: nbins + 1 }, (_, i) => lo + ((hi - lo) * i) / nbins);
}

// Vertical histogram columns: series [{name, counts, class}] side by side per bin;
// mark(i) -> whether bin i is highlighted.
export function histogram(container, labels, series, mark = () => false) {
  const total = series.map((s) => s.counts.reduce((a, b) => a + b, 0) || 1);
  const max = Math.max(1e-12, ...series.flatMap((s, j) => s.counts.map((c) => c / total[j])));
  const cols = labels.map((label, i) => {
    const group = el("div", { class: `bin${mark(i) ? " marked" : ""}`, title: label });
    series.forEach((s, j) => {
      const col = el("span", { class: `col ${s.class || ""}`, data: { value: String(s.counts[i]) } });
      col.style.height = `${(100 * s.counts[i]) / total[j] / max}%`;
      group.append(col);
    });
    return group;
  });
  container.replaceChildren(el("div", { class: "cols" }, ...cols), el("div", { class: "axis" },
    el("span", {}, labels[0]), el("span", {}, labels[labels.length - 1])));
}

// A whole number from a number input, at least `least` (empty or not a number: `least`); the
// field then shows the number used, so that -3 or 2.5 is not used as another number unseen.
export function wholeOf(id, least) {
  const field = $(id);
  const used = Math.max(least, Math.floor(Number(field.value) || least));
  if (field.value !== String(used)) field.value = String(used);
  return used;
}

// A seed from a number input: a whole number, 0 or more (shown in the field, wholeOf).
export function seedOf(id) {
  return wholeOf(id, 0);
}
