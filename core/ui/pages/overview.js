// Overview: requests, tokens, spend, error rate and latency over time; spend by team, model and
// provider. Everything comes from the admin API's usage aggregates.

import { call } from "../api.js";
import { barChart, timeChart } from "../charts.js";
import { compact, errorBox, h, loading, ms, num, pct, replace, usd, usdShort } from "../dom.js";

const RANGES = {
  "1h": { label: "Last hour", ms: 3600e3, bucket: "minute", step: 60e3 },
  "24h": { label: "Last 24 hours", ms: 86400e3, bucket: "hour", step: 3600e3 },
  "7d": { label: "Last 7 days", ms: 7 * 86400e3, bucket: "day", step: 86400e3 },
  "30d": { label: "Last 30 days", ms: 30 * 86400e3, bucket: "day", step: 86400e3 },
};

function floorTo(t, step) {
  return Math.floor(t / step) * step;
}

export async function render(section, ctx) {
  const rangeKey = RANGES[ctx.query.range] ? ctx.query.range : "24h";
  const range = RANGES[rangeKey];
  const picker = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Period" },
    Object.entries(RANGES).map(([k, r]) =>
      h("button", { type: "button", class: k === rangeKey ? "active" : "ghost", onclick: () => ctx.navigate("overview", { range: k }) }, r.label),
    ),
  );
  const body = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "Overview"), picker), body);

  const now = Date.now();
  // Day buckets are UTC days; smaller ones are aligned to their step anyway.
  const fromMs = floorTo(now - range.ms, range.step);
  const query = { from: new Date(fromMs).toISOString(), to: new Date(now).toISOString() };
  let series, totals, byTeam, byModel, byProvider;
  try {
    [series, totals, byTeam, byModel, byProvider] = await Promise.all([
      call("aggregate", { query: { ...query, bucket: range.bucket } }),
      call("aggregate", { query }),
      call("aggregate", { query: { ...query, group_by: "team" } }),
      call("aggregate", { query: { ...query, group_by: "model" } }),
      call("aggregate", { query: { ...query, group_by: "provider" } }),
    ]);
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;

  const buckets = (series.data || []).map((r) => ({ ...r, t: Date.parse(r.bucket_start) }));
  const total = (totals.data || [])[0] || sum(buckets);
  // Zero-filled buckets so quiet periods show as zero, not as a line across them.
  const byStart = new Map(buckets.map((b) => [floorTo(b.t, range.step), b]));
  const grid = [];
  for (let t = fromMs; t <= now && grid.length < 2000; t += range.step) {
    grid.push(byStart.get(t) || { t, requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0 });
  }
  const points = (f) => grid.map((b) => [b.t, f(b)]);
  const latency = buckets.filter((b) => b.requests > 0 && b.p50_latency_ms !== null && b.p50_latency_ms !== undefined);

  const requests = Number(total.requests || 0);
  const errors = Number(total.errors || 0);
  replace(
    body,
    h(
      "div",
      { class: "stats" },
      stat("Requests", num(requests)),
      stat("Tokens", compact(Number(total.input_tokens || 0) + Number(total.output_tokens || 0)), `${compact(Number(total.input_tokens || 0))} in · ${compact(Number(total.output_tokens || 0))} out`),
      stat("Spend", usd(Number(total.cost_usd || 0))),
      stat("Error rate", requests ? pct(errors / requests) : "–", `${num(errors)} errors`),
      stat("Latency p50", ms(total.p50_latency_ms)),
      stat("Latency p95", ms(total.p95_latency_ms)),
    ),
    h(
      "div",
      { class: "charts" },
      timeChart({ title: "Requests", series: [{ name: "requests", points: points((b) => b.requests) }], format: compact, from: fromMs, to: now }),
      timeChart({
        title: "Tokens",
        series: [
          { name: "input", points: points((b) => Number(b.input_tokens || 0)) },
          { name: "output", points: points((b) => Number(b.output_tokens || 0)) },
        ],
        format: compact,
        from: fromMs,
        to: now,
      }),
      timeChart({ title: "Spend (USD)", series: [{ name: "spend", points: points((b) => Number(b.cost_usd || 0)) }], format: usdShort, from: fromMs, to: now }),
      timeChart({
        title: "Error rate",
        series: [{ name: "errors", points: points((b) => (b.requests ? b.errors / b.requests : 0)) }],
        format: pct,
        from: fromMs,
        to: now,
      }),
      timeChart({
        title: "Latency",
        series: [
          { name: "p50", points: latency.map((b) => [b.t, b.p50_latency_ms]) },
          { name: "p95", points: latency.map((b) => [b.t, b.p95_latency_ms]) },
        ],
        format: ms,
        from: fromMs,
        to: now,
      }),
      groupChart("Spend by team", byTeam, "(no team)"),
      groupChart("Spend by model", byModel, "(no model)"),
      groupChart("Spend by provider", byProvider, "(none)"),
      requestsChart("Requests by provider", byProvider),
    ),
  );
}

function sum(rows) {
  const out = { requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, p50_latency_ms: null, p95_latency_ms: null };
  for (const r of rows) {
    for (const k of ["requests", "errors", "input_tokens", "output_tokens", "cost_usd"]) out[k] += Number(r[k] || 0);
  }
  return out;
}

function stat(label, value, detail) {
  return h("div", { class: "stat card" }, h("span", { class: "label" }, label), h("strong", {}, value), detail ? h("small", {}, detail) : null);
}

function groupChart(title, answer, none) {
  const rows = (answer.data || []).map((r) => ({ label: r.group ?? none, value: Number(r.cost_usd || 0) }));
  return barChart({ title, rows, format: usd });
}

function requestsChart(title, answer) {
  const rows = (answer.data || []).map((r) => ({ label: r.group ?? "(none)", value: Number(r.requests || 0) }));
  return barChart({ title, rows, format: num });
}
