// Usage explorer: filtered usage rows; a row opens the request's detail with its decision
// trail (which rule, plugin, check or route attempt decided what, stage by stage).

import { call } from "../api.js";
import { badge, errorBox, field, h, loading, localInput, ms, nanosUsd, num, replace, statusBadge, table, time } from "../dom.js";

const FILTERS = ["status", "provider", "model", "team", "user", "key", "denied_stage", "endpoint"];

export async function render(section, ctx) {
  if (ctx.rest[0]) return detail(section, ctx, ctx.rest[0]);
  const q = ctx.query;
  const input = (name, attrs = {}) => h("input", { name, value: q[name] || "", autocomplete: "off", ...attrs });
  const toInput = (name) => h("input", { type: "datetime-local", name, value: q[name] ? localInput(new Date(q[name])) : "" });
  const form = h(
    "form",
    {
      class: "filters",
      id: "usage-filters",
      onsubmit: (e) => {
        e.preventDefault();
        const data = Object.fromEntries(new FormData(e.target));
        for (const k of ["from", "to"]) if (data[k]) data[k] = new Date(data[k]).toISOString();
        ctx.navigate("usage", data);
      },
    },
    field("From", toInput("from")),
    field("To", toInput("to")),
    field("Status", input("status", { placeholder: "200, 4xx…", size: 6 })),
    field("Provider", input("provider", { placeholder: "openai, mcp…" })),
    field("Model", input("model")),
    field("Team", input("team")),
    field("User", input("user")),
    field("Key", input("key", { placeholder: "key id" })),
    field(
      "Denied at",
      h(
        "select",
        { name: "denied_stage" },
        ["", "authenticate", "authorize", "inspect", "reserve", "route", "call"].map((s) => h("option", { value: s, selected: (q.denied_stage || "") === s }, s || "any")),
      ),
    ),
    field("Endpoint", input("endpoint", { placeholder: "/v1/chat/completions" })),
    h("div", { class: "filter-buttons" }, h("button", { type: "submit" }, "Apply"), h("button", { type: "button", class: "ghost", onclick: () => ctx.navigate("usage") }, "Clear")),
  );
  const body = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "Usage")), form, body);
  const query = { from: q.from, to: q.to, limit: 50, cursor: q.cursor };
  for (const k of FILTERS) query[k] = q[k];
  let answer;
  try {
    answer = await call("usage", { query });
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;
  const rows = answer.data || [];
  replace(
    body,
    table(
      [
        { label: "Received", class: "nowrap", cell: (r) => time(r.received_at) },
        { label: "Request", cell: (r) => h("code", { class: "request-id", title: r.request_id }, `${String(r.request_id).slice(0, 12)}…`) },
        { label: "Status", cell: (r) => h("span", {}, statusBadge(r.status), r.error_code ? h("small", { class: "muted" }, ` ${r.error_code}`) : null) },
        { label: "Endpoint", cell: (r) => r.endpoint || "–" },
        { label: "Model", cell: (r) => r.served_model || r.requested_model || (r.mcp_server ? `${r.mcp_server}${r.mcp_tool ? ` · ${r.mcp_tool}` : ""}` : "–") },
        { label: "Provider", cell: (r) => r.provider || "–" },
        { label: "Team", cell: (r) => r.team || "–" },
        { label: "Tokens", class: "num", cell: (r) => (r.total_tokens === null || r.total_tokens === undefined ? "–" : num(r.total_tokens)) },
        { label: "Cost", class: "num cost", cell: (r) => nanosUsd(r.cost_nanos) },
        { label: "Latency", class: "num", cell: (r) => ms(r.latency_ms) },
      ],
      rows,
      {
        empty: "No usage rows match these filters.",
        onRow: (r) => ctx.navigate(`usage/${encodeURIComponent(r.request_id)}`),
        rowClass: (r) => `usage-row req-${r.request_id}`,
      },
    ),
    h(
      "div",
      { class: "pager" },
      q.cursor ? h("button", { type: "button", class: "ghost", onclick: () => ctx.navigate("usage", { ...q, cursor: "" }) }, "First page") : null,
      answer.next_cursor ? h("button", { type: "button", class: "ghost", onclick: () => ctx.navigate("usage", { ...q, cursor: answer.next_cursor }) }, "Next page") : null,
    ),
  );
}

async function detail(section, ctx, requestId) {
  const body = h("div", {}, loading());
  section.append(
    h("header", { class: "page-head" }, h("h1", {}, "Request ", h("code", {}, requestId)), h("a", { href: "#/usage", class: "button ghost" }, "← Usage")),
    body,
  );
  let answer;
  try {
    answer = await call("usageRequest", { params: { request_id: requestId } });
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;
  replace(body, (answer.data || []).map((row, i, all) => rowDetail(row, all.length > 1 ? i + 1 : null)));
}

function rowDetail(row, index) {
  const facts = [
    ["Status", h("span", {}, statusBadge(row.status), row.error_code ? ` ${row.error_code}` : "")],
    ["Denied at", row.denied_stage || "–"],
    ["Endpoint", `${row.endpoint || "–"}${row.endpoint_family ? ` (${row.endpoint_family})` : ""}`],
    ["Requested model", row.requested_model || "–"],
    ["Served model", row.served_model || "–"],
    ["Provider", row.provider || "–"],
    ["MCP", row.mcp_server ? `${row.mcp_server}${row.mcp_tool ? ` · ${row.mcp_tool}` : ""}` : "–"],
    ["Key", row.key_id ? h("a", { href: `#/usage?key=${encodeURIComponent(row.key_id)}` }, row.key_id) : "–"],
    ["Team", row.team || "–"],
    ["User", row.user || "–"],
    ["Received", time(row.received_at)],
    ["Completed", time(row.completed_at)],
    ["Latency", ms(row.latency_ms)],
    ["Time to first byte", ms(row.ttfb_ms)],
    ["Tokens", `${num(row.input_tokens)} in · ${num(row.output_tokens)} out · ${num(row.total_tokens)} total`],
    ["Cost", h("span", { class: "cost" }, nanosUsd(row.cost_nanos), h("small", { class: "muted" }, ` (${num(row.cost_nanos)} nano-USD)`))],
    ["Stream", row.stream_status || "–"],
  ];
  return h(
    "article",
    { class: "card request-detail" },
    index ? h("h2", {}, `Record ${index}`) : null,
    h("dl", { class: "facts two-col" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "Decision trail"),
    trail(row.decisions),
    row.route ? h("h2", {}, "Route") : null,
    row.route ? routeView(row.route) : null,
  );
}

const STAGES = ["authenticate", "authorize", "inspect", "reserve", "route", "call", "record"];

/** The decision trail as an ordered list: stage, what decided (rule, plugin, check), outcome. */
function trail(decisions) {
  const entries = Array.isArray(decisions) ? decisions : decisions ? [decisions] : [];
  if (!entries.length) return h("p", { class: "empty" }, "No decisions were recorded for this request.");
  return h(
    "ol",
    { class: "trail", id: "decision-trail" },
    entries.map((d) => {
      if (typeof d !== "object" || d === null) return h("li", {}, String(d));
      const { stage, outcome, rule, plugin, check, code, reason, ...rest } = d;
      const who = rule ? ["rule", rule] : plugin ? ["plugin", plugin] : check ? ["check", check] : null;
      const kind = outcome === "deny" || outcome === "block" ? "bad" : outcome === "allow" ? "good" : outcome ? "warn" : "";
      const extra = Object.entries(rest).filter(([, v]) => v !== null && v !== undefined);
      return h(
        "li",
        { class: `step stage-${STAGES.includes(stage) ? stage : "other"}` },
        h("span", { class: "stage" }, stage || "—"),
        who ? h("span", { class: "who" }, h("small", { class: "muted" }, `${who[0]} `), h("strong", {}, who[1])) : null,
        outcome ? badge(outcome, kind) : null,
        code ? h("code", {}, code) : null,
        reason ? h("span", { class: "reason" }, reason) : null,
        extra.length
          ? h(
              "span",
              { class: "extra" },
              extra.map(([k, v]) => h("span", { class: "kv" }, h("small", { class: "muted" }, `${k} `), typeof v === "object" ? JSON.stringify(v) : String(v))),
            )
          : null,
      );
    }),
  );
}

/** The routing trace: the target, the script's order and each upstream attempt. */
function routeView(route) {
  const r = typeof route === "string" ? safeParse(route) : route;
  if (!r || typeof r !== "object") return h("pre", {}, String(route));
  const attempts = Array.isArray(r.attempts) ? r.attempts : [];
  const { attempts: _, ...rest } = r;
  return h(
    "div",
    { class: "route" },
    h("dl", { class: "facts" }, Object.entries(rest).map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])),
    attempts.length
      ? table(
          [
            { label: "#", cell: (a) => String(attempts.indexOf(a) + 1) },
            { label: "Model", cell: (a) => a.model || a.deployment || "–" },
            { label: "Provider", cell: (a) => a.provider || "–" },
            { label: "Outcome", cell: (a) => `${a.outcome || "–"}${a.status ? ` (HTTP ${a.status})` : ""}` },
            { label: "Latency", cell: (a) => (a.latency_ms !== undefined ? ms(a.latency_ms) : a.latency_us !== undefined ? ms(a.latency_us / 1000) : "–") },
            { label: "Detail", cell: (a) => a.error || a.reason || a.code || "" },
          ],
          attempts,
        )
      : null,
  );
}

function safeParse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
