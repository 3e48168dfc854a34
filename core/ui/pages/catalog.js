// What the policy serves: MCP servers (transport, tools allowed and blocked, pricing) and
// providers (health, cooldown) with their models and pricing. Credentials are never shown
// (the API does not return them).

import { call } from "../api.js";
import { badge, errorBox, h, loading, replace, table, time } from "../dom.js";

export async function render(section, ctx) {
  if (ctx.view === "mcp") return mcp(section, ctx);
  return providers(section, ctx);
}

function chips(items, empty = "none") {
  if (!Array.isArray(items) || !items.length) return h("span", { class: "muted" }, empty);
  return h("span", { class: "chips" }, items.map((m) => h("code", { class: "chip" }, m)));
}

/** Nano-USD as USD, exact to the nano. */
function nanos(n) {
  return `$${Number((Number(n) / 1e9).toFixed(9))}`;
}

function modelPricing(p) {
  if (!p || typeof p !== "object") return h("span", { class: "muted" }, "–");
  const parts = [
    ["input", p.input_nanos_per_mtok],
    ["output", p.output_nanos_per_mtok],
    ["cached input", p.cached_input_nanos_per_mtok],
    ["cache write", p.cache_write_nanos_per_mtok],
  ].filter(([, v]) => v);
  if (!parts.length) return h("span", { class: "muted" }, "free / not priced");
  return h("span", { class: "kvs" }, parts.map(([k, v]) => h("span", { class: "kv" }, h("small", { class: "muted" }, `${k} `), nanos(v))));
}

function mcpPricing(p) {
  if (!p || typeof p !== "object") return h("span", { class: "muted" }, "–");
  const parts = [
    ["per call", p.call_nanos],
    ["per input byte", p.input_byte_nanos],
    ["per output byte", p.output_byte_nanos],
  ].filter(([, v]) => v);
  if (!parts.length) return h("span", { class: "muted" }, "free");
  return h("span", { class: "kvs" }, parts.map(([k, v]) => h("span", { class: "kv" }, h("small", { class: "muted" }, `${k} `), nanos(v))));
}

async function mcp(section, ctx) {
  const body = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "MCP servers")), body);
  let answer;
  try {
    answer = await call("mcpServers");
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;
  replace(
    body,
    table(
      [
        { label: "Server", cell: (m) => h("strong", {}, m.slug) },
        { label: "Transport", cell: (m) => m.transport },
        { label: "State", cell: (m) => badge(m.enabled ? "enabled" : "disabled", m.enabled ? "good" : "bad") },
        { label: "Upstream", cell: (m) => h("code", {}, m.url || m.command || "–") },
        { label: "Allowed tools", cell: (m) => chips(m.allowed_tools, "all") },
        { label: "Blocked tools", cell: (m) => chips(m.blocked_tools) },
        { label: "Pricing", cell: (m) => mcpPricing(m.pricing) },
      ],
      answer.data || [],
      { empty: "No MCP servers in the policy." },
    ),
  );
}

async function providers(section, ctx) {
  const provBox = h("div", {}, loading());
  const modelBox = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "Providers & models")), provBox, h("h2", {}, "Models"), modelBox);
  const [provs, models] = await Promise.allSettled([call("providers"), call("models")]);
  if (!ctx.current()) return;
  if (provs.status === "rejected") replace(provBox, errorBox(provs.reason));
  else
    replace(
      provBox,
      table(
        [
          { label: "Provider", cell: (p) => h("strong", {}, p.name) },
          { label: "Family", cell: (p) => p.family },
          { label: "Base URL", cell: (p) => h("code", {}, p.base_url || "–") },
          { label: "Health", cell: (p) => (p.enabled === false ? badge("disabled", "warn") : badge(p.healthy === false ? "cooling down" : "healthy", p.healthy === false ? "bad" : "good")) },
          { label: "Credential", cell: (p) => (p.credential ? badge(p.credential.replace("_", " "), p.credential === "missing" ? "bad" : "") : "–") },
          { label: "Cooldown until", cell: (p) => (p.cooldown_until ? time(p.cooldown_until) : "–") },
        ],
        provs.value.data || [],
        { empty: "No providers." },
      ),
    );
  if (models.status === "rejected") replace(modelBox, errorBox(models.reason));
  else
    replace(
      modelBox,
      table(
        [
          { label: "Model", cell: (m) => h("strong", {}, m.name) },
          { label: "Provider", cell: (m) => chips(Array.isArray(m.providers) ? m.providers : m.provider ? [].concat(m.provider) : []) },
          { label: "Upstream model", cell: (m) => (m.upstream_model ? h("code", {}, m.upstream_model) : h("span", { class: "muted" }, m.provider ? "–" : "model group")) },
          { label: "Pricing (USD per million tokens)", cell: (m) => modelPricing(m.pricing) },
        ],
        models.value.data || [],
        { empty: "No models." },
      ),
    );
}
