// The public HTTP API, as any client calls it (docs/api.md): the page lives at /ui/, the API at
// the page's parent, so a proxy's path prefix is kept. The API key, when the server asks for one,
// is kept in sessionStorage and sent as `Authorization: Bearer <key>`.

const BASE = new URL("..", document.baseURI);
const KEY = "made-api-key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

// An answer that came after the page's model changed: it is for the old model, and dropped.
export class StaleAnswer extends Error {
  constructor() {
    super("an answer for the model shown before");
  }
}

// The page's model generation: newModel() (app.js, when the picker changes) drops every answer
// still in flight, since each was asked for the model shown before.
let epoch = 0;
export function newModel() {
  epoch += 1;
}

// Whether the model is still the one shown when live() was called.
export function live() {
  const mine = epoch;
  return () => epoch === mine;
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

// GET when body is undefined; a string or a Blob (a file's bytes, as they are) goes as CSV,
// anything else as JSON. opts.accept sets Accept; opts.raw answers the Response (for CSV), else
// the parsed JSON. An answer that comes after the model changed rejects with StaleAnswer.
export async function api(path, body, opts = {}) {
  const current = live();
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (opts.accept) headers.Accept = opts.accept;
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (typeof body === "string" || body instanceof Blob) {
    headers["Content-Type"] = "text/csv";
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, BASE), init);
  } catch (err) {
    if (!current()) throw new StaleAnswer();
    // fetch says only "Failed to fetch": the server is stopped, restarting or unreachable
    throw new Error(`the server could not be reached (${err.message}); is it running?`);
  }
  if (!current()) throw new StaleAnswer();
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch {
      // not JSON: the status line says it
    }
    throw new ApiError(response.status, detail);
  }
  if (opts.raw) return response;
  const answer = await response.json();
  if (!current()) throw new StaleAnswer();
  return answer;
}

// A query string for the CSV endpoints (their options come in the query, docs/api.md).
export function query(params) {
  return new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)])).toString();
}

let busy = 0;

export function setStatus(text, error = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

// Runs an action of a view: counted in body[data-busy] while it runs, its error reported in the
// status line (a 401 shows the API key's input) and passed to failed(err), where the view clears
// what it showed before. An answer for the model shown before (StaleAnswer) is dropped silently.
// Resolves to whether the action went through.
export async function run(label, action, failed = null) {
  const current = live();
  busy += 1;
  document.body.dataset.busy = String(busy);
  setStatus(`${label}…`);
  try {
    await action();
    setStatus("");
    return true;
  } catch (err) {
    if (err instanceof StaleAnswer || !current()) {
      if (busy === 1 && !document.getElementById("status").classList.contains("error")) setStatus("");
      return false;
    }
    if (failed) failed(err);
    if (err instanceof ApiError && err.status === 401) {
      document.getElementById("api-key-form").hidden = false;
      document.getElementById("api-key").focus();
    }
    setStatus(`${label} failed: ${err.message}`, true);
    return false;
  } finally {
    busy -= 1;
    document.body.dataset.busy = String(busy);
  }
}

// Marks a view's section as drawn (the tests and the screenshot script wait on data-ready).
export function ready(view) {
  document.getElementById(`view-${view}`).dataset.ready = "1";
}

// A view's answers may arrive out of order: fresh(view) numbers its latest request, and the
// function it returns says whether that request is still the latest when its answer comes (and
// the model still the one it was asked for).
const latest = {};
export function fresh(view) {
  latest[view] = (latest[view] || 0) + 1;
  const mine = latest[view];
  const model = live();
  return () => latest[view] === mine && model();
}
