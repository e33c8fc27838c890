// The model card: what GET /models/{name} holds, as a definition list.

import { ready } from "./api.js";
import { $, el, fmt } from "./draw.js";

function item(dl, term, ...content) {
  dl.append(el("dt", {}, term), el("dd", {}, ...content));
}

function number(value, digits = 3) {
  return el("span", { data: { value: String(value) } }, fmt(value, digits));
}

function schemaTable(columns) {
  const head = el("tr", {}, ...["column", "kind", "levels or encoding"].map((h) => el("th", { scope: "col" }, h)));
  const rows = columns.map((c) => {
    const what = c.levels
      ? c.levels.join(", ")
      : `${c.transform === "log" ? "log, " : ""}loc ${fmt(c.loc, 3)}, scale ${fmt(c.scale, 3)}` +
        `${c.decimals !== null && c.decimals !== undefined ? `, ${c.decimals} decimals` : ""}` +
        `${c.nullable ? ", may be absent" : ""}, ${c.components} mixture components`;
    return el("tr", {}, el("td", {}, c.name), el("td", {}, c.kind), el("td", {}, what));
  });
  return el("div", { class: "scroll" }, el("table", { id: "card-schema" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function orderings(manifest, columns) {
  const list = el("ol", { start: 0, class: "orderings" });
  for (const order of manifest.orderings || []) {
    const natural = order.every((d, i) => d === i);
    const text = natural
      ? "natural order"
      : columns && !manifest.image_shape
        ? order.map((d) => columns[d].name).join(" → ")
        : `${order.slice(0, 12).join(", ")}${order.length > 12 ? ", …" : ""}`;
    list.append(el("li", {}, text));
  }
  return list;
}

export function renderCard(state) {
  const m = state.manifest;
  const metrics = m.metrics || {};
  const model = (m.training && m.training.model) || {};
  const dl = $("card");
  dl.replaceChildren();
  item(dl, "name, version", `${m.name}, version ${m.version}`);
  item(dl, "created", m.created_at || "—");
  if (m.image_shape) item(dl, "image shape", `${m.image_shape.join(" × ")} bits (${m.dims} dimensions)`);
  else if (m.columns) item(dl, "schema", `${m.columns.length} columns`, schemaTable(m.columns));
  else item(dl, "data", `rows of ${m.dims} bits (columns x0 … x${m.dims - 1})`);
  item(dl, "training data", `${(m.dataset && m.dataset.name) || "—"} (${(m.dataset && m.dataset.source) || "—"})`);
  item(dl, "test NLL (nats)", number(metrics.test_nll), " ± ", number(metrics.test_nll_stderr),
    metrics.test_n ? ` on ${metrics.test_n} rows` : "");
  item(dl, "validation NLL (nats)", number(metrics.valid_nll));
  item(dl, "network", `hidden ${(m.hidden || []).join(" × ")}, activation ${m.activation}, ` +
    `${m.direct ? "direct input-to-output connections, " : ""}weights ${m.weight_dtype}`);
  item(dl, "masks", `${m.n_masks} (${model.order_agnostic ? "orderings drawn" : "one ordering"}, ` +
    `${model.connectivity_agnostic ? "connectivity drawn per mask" : "fixed connectivity"}); orderings:`,
    orderings(m, state.columns));
  if (metrics.epochs) item(dl, "training", `${metrics.epochs} epochs (best ${metrics.best_epoch}), ${fmt(metrics.train_seconds, 0)} s on ${metrics.hardware || "—"}`);
  const files = Object.entries(m.files || {}).map(([name, sha]) => el("li", {}, `${name}: `, el("code", { class: "sha" }, sha)));
  item(dl, "checksums (SHA-256)", el("ul", {}, ...files));
  ready("card");
}
