// The held-out data a model's version may carry, GET /models/{name}/reference (docs/api.md): the
// quantiles of its held-out rows' log p, up to 16 of those rows, and the training split's
// marginals. A version without one answers 404: the views then fall back to draws from the model
// (and say so).

import { ApiError, api } from "./api.js";

const cache = new Map(); // "name@version" -> Promise of the reference, or of null (404)

export function referenceOf(st) {
  const key = `${st.model.name}@${st.model.version}`;
  if (!cache.has(key)) {
    const answer = api(`models/${encodeURIComponent(st.model.name)}/reference`).catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null;
      cache.delete(key); // another error: asked again next time
      throw err;
    });
    cache.set(key, answer);
  }
  return cache.get(key);
}

// The percentile of lp among the held-out rows, linear between the reference's quantiles
// (q = 0, 0.01, ..., 1, ascending): with k the last quantile at most lp, k + the way from it to
// the next, in hundredths; 0 below the lowest (or for a log p of null, -inf), 100 from the highest.
export function heldOutPercentile(quantiles, lp) {
  const last = quantiles.length - 1;
  if (lp === null || lp === undefined || !(lp >= quantiles[0])) return 0;
  let k = 0;
  while (k < last && quantiles[k + 1] <= lp) k += 1;
  if (k === last) return 100;
  return (100 * (k + (lp - quantiles[k]) / (quantiles[k + 1] - quantiles[k]))) / last;
}

// The held-out rows as records {column: value}: a model of bits answers them as lists of 0/1.
export function exampleRecords(reference) {
  return (reference.examples || []).map((e) => (Array.isArray(e) ? Object.fromEntries(e.map((b, d) => [`x${d}`, b])) : e));
}

// "5,394 held-out rows (test)"
export function heldOutText(reference) {
  return `${Number(reference.n_rows).toLocaleString("en-US")} held-out rows (${reference.split})`;
}
