// The operator console: live charts from /metrics, models and aliases from /admin/models
// (with swap and rollback through PUT /admin/aliases), usage from /v1/usage. Admin key needed.
import { askForKey, bindKeyButton, getJSON, getText, request } from "/web/api.js";
import { Chart, addFigure } from "/web/charts.js";
import { max, parse, quantile, rate, ratio, sum } from "/web/prom.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(250, parseInt(params.get("interval") || "2000", 10) || 2000);
const HISTORY = "cormorant.aliasHistory";
const ms = (v) => (v === null ? "–" : (v * 1000).toFixed(0) + " ms");
const pct = (v) => (v === null ? "–" : (v * 100).toFixed(0) + "%");
const per = (v) => v.toFixed(2) + "/s";

const CHARTS = [  // key (ids chart-KEY, canvas-KEY), title, series, format
  ["requests", "Requests running and waiting", ["running", "waiting"], (v) => v.toFixed(0)],
  ["kv", "KV-cache use (%)", ["KV"], pct],
  ["tokens", "Tokens per second", ["generated", "prompt"], (v) => v.toFixed(1) + "/s"],
  ["ttft", "Time to first token (ms)", ["p50", "p95"], ms],
  ["itl", "Inter-token latency (ms)", ["p50", "p95"], ms],
  ["preempt", "Preemptions per second", ["preemptions"], per],
  ["cache", "Cache hit rates (%)", ["prefix", "response"], pct],
  ["errors", "Refusals per second (429, 503)", ["429", "503"], per],
];
const charts = Object.fromEntries(CHARTS.map(([key, title, series, format]) =>
  [key, new Chart(addFigure($("charts"), key, title), series, format)]));

let previous = null, previousAt = 0, blocked = false, failing = false, noMetrics = false;

function setStatus(text) { $("status").textContent = text; }

function setError(text) {
  failing = true;
  setStatus(text);
}

async function guarded(work) {
  if (blocked) return;
  try {
    await work();
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      blocked = true;
      setError(err.message);
      const ok = await askForKey(err.status === 403 ? "The console needs a key with the admin scope."
                                                    : "The console needs an admin API key.");
      blocked = false;
      if (ok) refreshAll();
    } else {
      setError(err.message);
    }
  }
}

async function scrape() {
  if (noMetrics) return;
  const now = performance.now();
  let text;
  try {
    text = await getText("/metrics");
  } catch (err) {
    if (err.status !== 403) throw err;
    noMetrics = true;  // an admin key without the metrics scope: tables yes, charts no
    setError("This key lacks the metrics scope, so the charts stay empty.");
    return;
  }
  const cur = parse(text);
  const dt = previous ? (now - previousAt) / 1000 : 0;
  const status = (code) => (l) => l.status === code;
  charts.requests.push([sum(cur, "vllm:num_requests_running"), sum(cur, "vllm:num_requests_waiting")]);
  charts.kv.push([max(cur, "vllm:kv_cache_usage_perc")]);
  charts.tokens.push([rate(previous, cur, "vllm:generation_tokens_total", dt),
                      rate(previous, cur, "vllm:prompt_tokens_total", dt)]);
  charts.ttft.push([quantile(previous, cur, "vllm:time_to_first_token_seconds", 0.5),
                    quantile(previous, cur, "vllm:time_to_first_token_seconds", 0.95)]);
  charts.itl.push([quantile(previous, cur, "vllm:inter_token_latency_seconds", 0.5),
                   quantile(previous, cur, "vllm:inter_token_latency_seconds", 0.95)]);
  charts.preempt.push([rate(previous, cur, "vllm:num_preemptions_total", dt)]);
  charts.cache.push([ratio(previous, cur, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
                     ratio(previous, cur, "cormorant_response_cache_hits_total",
                           "cormorant_response_cache_lookups_total")]);
  charts.errors.push([rate(previous, cur, "cormorant_http_requests_total", dt, status("429")),
                      rate(previous, cur, "cormorant_http_requests_total", dt, status("503"))]);
  previous = cur;
  previousAt = now;
  const limited = (cur.get("cormorant_rate_limited_requests_total") || [])
    .map((s) => [s.labels.key_id || "", s.value.toFixed(0)]);
  fillTable("limited-table", limited);
  if (failing) setStatus("");  // the data flows again: the last error is over
  failing = false;
}

async function health() {
  const response = await fetch("/health");
  const body = await response.json();
  const e = body.engine || {};
  $("engine-summary").textContent = `· engine ${body.status} · ${e.num_free_blocks} of ` +
    `${e.num_total_blocks} KV blocks free · ${body.num_in_flight} in flight`;
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = String(content);
  row.append(td);
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((c) => cell(tr, c));
    return tr;
  }));
}

function button(label, onClick, name) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = label;
  if (name) b.setAttribute("aria-label", name);
  b.addEventListener("click", () => guarded(onClick));
  return b;
}

function history() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY) || "{}"); } catch (_) { return {}; }
}

async function setAlias(alias, targets, remember) {
  setStatus(`Moving ${alias}…`);
  const before = (await getJSON("/admin/models")).aliases[alias];
  await request("/admin/aliases/" + encodeURIComponent(alias), { method: "PUT", json: { targets } });
  const h = history();
  if (remember && before) (h[alias] = h[alias] || []).push(before);
  if (!remember && h[alias]) h[alias].pop();
  sessionStorage.setItem(HISTORY, JSON.stringify(h));
  setStatus(`${alias} now points at ${Object.keys(targets).join(", ")}.`);
  await models();
}

function aliasRow(alias, targets, versions) {
  const total = Object.values(targets).reduce((a, b) => a + b, 0) || 1;
  const shown = Object.entries(targets).map(([t, w]) => `${t} (${Math.round((w / total) * 100)}%)`)
    .join(", ");
  const select = document.createElement("select");
  select.id = "swap-" + alias;
  select.setAttribute("aria-label", `New target of ${alias}`);
  for (const id of versions) select.append(new Option(id, id));
  const actions = document.createElement("div");
  actions.className = "row";
  actions.append(button("Swap", () => setAlias(alias, { [select.value]: 100 }, true), `Swap ${alias}`));
  const past = (history()[alias] || []).slice(-1)[0];
  if (past) actions.append(button("Roll back", () => setAlias(alias, past, false), `Roll back ${alias}`));
  return [alias, shown, select, actions];
}

async function models() {
  const data = await getJSON("/admin/models");
  const chosen = {};  // keep what the operator picked across refreshes
  for (const select of document.querySelectorAll("#aliases-table select")) chosen[select.id] = select.value;
  const mib = (b) => (b ? (b / 1048576).toFixed(0) + " MiB" : "–");
  fillTable("models-table", data.models.map((m) => {
    const actions = document.createElement("div");
    actions.className = "row";
    const verb = m.loaded ? "unload" : "load";
    actions.append(button(verb[0].toUpperCase() + verb.slice(1), async () => {
      await request(`/admin/models/${encodeURIComponent(m.id)}/${verb}`, { method: "POST" });
      await models();
    }, `${verb} ${m.id}`));
    return [m.id, m.kind, m.loaded ? "yes" : "no", m.in_flight, mib(m.memory_bytes), actions];
  }));
  const versions = data.models.filter((m) => m.kind === "generate").map((m) => m.id);
  fillTable("aliases-table", Object.entries(data.aliases)
    .map(([alias, targets]) => aliasRow(alias, targets, versions)));
  for (const [id, value] of Object.entries(chosen)) {
    const select = document.getElementById(id);
    if (select && [...select.options].some((o) => o.value === value)) select.value = value;
  }
}

async function usage() {
  const data = await getJSON("/v1/usage");
  fillTable("usage-table", data.data.map((r) => [r.day, r.key_id, r.model, r.requests,
                                                 r.prompt_tokens, r.completion_tokens]));
}

function refreshAll() {
  noMetrics = false;
  guarded(scrape);
  guarded(models);
  guarded(usage);
  health().catch(() => {});
}

bindKeyButton(refreshAll);
refreshAll();
setInterval(() => { guarded(scrape); health().catch(() => {}); }, INTERVAL_MS);
setInterval(() => {
  guarded(usage);
  // Not while the operator is using the tables (a refresh would replace what has focus).
  if (!document.querySelector("#models-table :focus, #aliases-table :focus")) guarded(models);
}, Math.max(INTERVAL_MS, 5000));
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));
