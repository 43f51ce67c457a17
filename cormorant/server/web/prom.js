// Prometheus text exposition -> samples, and what the console derives from two scrapes:
// rates of counters and quantiles of histograms over the interval between them.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parse(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(LINE);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(LABEL)) labels[l[1]] = l[2];
    const value = m[3] === "+Inf" ? Infinity : parseFloat(m[3]);
    if (!samples.has(m[1])) samples.set(m[1], []);
    samples.get(m[1]).push({ labels, value });
  }
  return samples;
}

export function sum(samples, name, where = () => true) {
  return (samples.get(name) || []).filter((s) => where(s.labels))
    .reduce((acc, s) => acc + s.value, 0);
}

export function max(samples, name) {
  const values = (samples.get(name) || []).map((s) => s.value);
  return values.length ? Math.max(...values) : 0;
}

// Per second, between the previous scrape and this one (0 when there is no previous one or
// a counter went down: a restart).
export function rate(prev, cur, name, dt, where) {
  if (!prev || dt <= 0) return 0;
  const d = sum(cur, name, where) - sum(prev, name, where);
  return d > 0 ? d / dt : 0;
}

// The ratio of two counters' increases (e.g. cache hits / lookups); null without lookups.
export function ratio(prev, cur, part, whole) {
  if (!prev) return null;
  const d = sum(cur, whole) - sum(prev, whole);
  return d > 0 ? (sum(cur, part) - sum(prev, part)) / d : null;
}

function buckets(samples, name) {
  const out = new Map();
  for (const s of samples.get(name + "_bucket") || []) {
    const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
    out.set(le, (out.get(le) || 0) + s.value);
  }
  return out;
}

// The q-quantile of what a histogram observed between the two scrapes (linear inside a
// bucket, as Prometheus' histogram_quantile does); null if it observed nothing.
export function quantile(prev, cur, name, q) {
  const now = buckets(cur, name);
  const before = prev ? buckets(prev, name) : new Map();
  const bounds = [...now.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => now.get(le) - (before.get(le) || 0));
  const total = counts.length ? counts[counts.length - 1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const lower = i ? bounds[i - 1] : 0;
      const below = i ? counts[i - 1] : 0;
      if (bounds[i] === Infinity) return lower;
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + (bounds[i] - lower) * ((rank - below) / inBucket) : bounds[i];
    }
  }
  return null;
}
