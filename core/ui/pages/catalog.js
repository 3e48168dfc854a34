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

function json(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "–");
  if (typeof value !== "object") return String(value);
  const entries = Object.entries(value);
  if (!entries.length) return h("span", { class: "muted" }, "–");
  return h("span", { class: "kvs" }, entries.map(([k, v]) => h("span", { class: "kv" }, h("small", { class: "muted" }, `${k} `), typeof v === "object" ? JSON.stringify(v) : String(v))));
}

async function mcp(section, ctx) {
  const body = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "MCP servers")), body);
  let answer;
  try {
    answer = await call("mcpServers", { query: { limit: 500 } });
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
        { label: "Pricing", cell: (m) => json(m.pricing) },
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
  const [provs, models] = await Promise.allSettled([call("providers", { query: { limit: 500 } }), call("models", { query: { limit: 500 } })]);
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
          { label: "Health", cell: (p) => badge(p.healthy === false ? "cooling down" : "healthy", p.healthy === false ? "bad" : "good") },
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
          { label: "Pricing (USD per million tokens)", cell: (m) => json(m.pricing) },
        ],
        models.value.data || [],
        { empty: "No models." },
      ),
    );
}
