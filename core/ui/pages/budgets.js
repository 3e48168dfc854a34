// Budgets and quotas: how much of each window is used, held by requests in flight, and left.

import { call } from "../api.js";
import { badge, compact, confirmAction, dialog, errorBox, field, h, loading, meter, nanosUsd, notify, num, replace, statusBadge, table, time } from "../dom.js";

export async function render(section, ctx) {
  const budgetsBox = h("div", {}, loading());
  const quotasBox = h("div", {}, loading());
  section.append(
    h(
      "header",
      { class: "page-head" },
      h("h1", {}, "Budgets"),
      ctx.canWrite ? h("button", { type: "button", id: "create-budget", onclick: () => editBudget(null, ctx) }, "Create budget") : null,
    ),
    h("p", { class: "legend-line" }, swatch("meter-used"), " used ", swatch("meter-held"), " held by requests in flight ", swatch("meter-free"), " remaining"),
    budgetsBox,
    h("h2", {}, "Quotas"),
    quotasBox,
  );
  const [budgets, quotas] = await Promise.allSettled([call("budgets"), call("quotas")]);
  if (!ctx.current()) return;
  if (budgets.status === "rejected") replace(budgetsBox, errorBox(budgets.reason));
  else replace(budgetsBox, budgetList(budgets.value.data || [], ctx));
  if (quotas.status === "rejected") replace(quotasBox, errorBox(quotas.reason));
  else replace(quotasBox, quotaList(quotas.value.data || []));
}

function swatch(cls) {
  return h("span", { class: `swatch-box ${cls}` });
}

function budgetList(rows, ctx) {
  if (!rows.length) return h("p", { class: "empty" }, "No budgets: define them in gateway.toml or through the admin API.");
  return h(
    "div",
    { class: "budget-grid" },
    rows.map((b) => {
      const c = b.current || {};
      const used = Number(c.used_nanos || 0);
      const held = Number(c.held_nanos || 0);
      const limit = Number(b.limit_nanos || 0);
      return h(
        "article",
        { class: `card budget budget-${b.id}` },
        h(
          "header",
          {},
          h("h3", {}, b.id),
          badge(b.source === "policy" ? "policy (read-only)" : "store", b.source === "policy" ? "" : "info"),
        ),
        h("p", { class: "muted" }, `${b.scope}${b.subject ? ` ${b.subject}` : ""} · ${b.window}`),
        meter(used, held, limit, { label: `${b.id}: ${nanosUsd(used)} used, ${nanosUsd(held)} held of ${nanosUsd(limit)}` }),
        h(
          "dl",
          { class: "facts compact" },
          h("dt", {}, "Used"),
          h("dd", {}, nanosUsd(used)),
          h("dt", {}, "Held"),
          h("dd", {}, nanosUsd(held)),
          h("dt", {}, "Remaining"),
          h("dd", {}, nanosUsd(c.remaining_nanos)),
          h("dt", {}, "Limit"),
          h("dd", {}, nanosUsd(limit)),
          h("dt", {}, "Window"),
          h("dd", {}, c.start ? `${time(c.start)} → ${time(c.end)}` : "–"),
          b.previous ? h("dt", {}, "Previous window") : null,
          b.previous ? h("dd", {}, `${nanosUsd(b.previous.used_nanos)} used`) : null,
        ),
        h(
          "div",
          { class: "row-actions" },
          h("button", { type: "button", class: "ghost small", onclick: () => windowUsage(b, "current") }, "Current window's requests"),
          b.previous ? h("button", { type: "button", class: "ghost small", onclick: () => windowUsage(b, "previous") }, "Previous window") : null,
          ctx.canWrite && b.source === "store" ? h("button", { type: "button", class: "ghost small edit", onclick: () => editBudget(b, ctx) }, "Edit") : null,
          ctx.canWrite && b.source === "store" ? h("button", { type: "button", class: "danger small", onclick: () => removeBudget(b, ctx) }, "Delete") : null,
        ),
      );
    }),
  );
}

const SCOPES = ["organization", "team", "user", "key"];
const WINDOWS = ["daily", "weekly", "monthly", "lifetime"];

function select(name, options, selected) {
  return h("select", { name }, options.map((o) => h("option", { value: o, selected: o === selected }, o)));
}

/** Creates a stored budget, or changes a stored budget's limit, time zone and alert thresholds. */
async function editBudget(budget, ctx) {
  const problem = h("div");
  const limitUsd = budget ? Number(budget.limit_nanos || 0) / 1e9 : "";
  const form = h(
    "form",
    { class: "stack", id: "budget-form" },
    budget ? null : field("Scope", select("scope", SCOPES, "team")),
    budget ? null : field("Subject", h("input", { name: "subject", autocomplete: "off" }), "the team, user or key id (empty for organization)"),
    budget ? null : field("Window", select("window", WINDOWS, "monthly")),
    field("Limit (USD)", h("input", { name: "limit_usd", type: "number", min: "0", step: "any", required: true, value: String(limitUsd) })),
    field("Time zone", h("input", { name: "timezone", autocomplete: "off", value: budget && budget.timezone ? budget.timezone : "", placeholder: "UTC" }), "optional: an IANA name such as Europe/Paris"),
    field("Alert thresholds (%)", h("input", { name: "thresholds", autocomplete: "off", value: budget && budget.thresholds ? budget.thresholds.join(", ") : "", placeholder: "50, 80, 100" }), "optional, comma separated"),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, budget ? "Save" : "Create")),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const body = { limit_usd: Number(data.get("limit_usd")) };
    const tz = String(data.get("timezone") || "").trim();
    if (tz) body.timezone = tz;
    const thresholds = String(data.get("thresholds") || "").split(",").map((t) => t.trim()).filter(Boolean);
    if (thresholds.length) body.thresholds = thresholds.map(Number);
    try {
      if (budget) {
        await call("updateBudget", { params: { id: budget.id }, body });
      } else {
        body.scope = String(data.get("scope"));
        body.subject = String(data.get("subject") || "").trim();
        body.window = String(data.get("window"));
        await call("createBudget", { body });
      }
      notify(budget ? `budget ${budget.id} saved` : "budget created", "success");
      form.closest("dialog").close();
    } catch (err) {
      replace(problem, errorBox(err));
    }
  });
  await dialog(budget ? `Budget ${budget.id}` : "Create budget", form);
  ctx.navigate("budgets", ctx.query);
}

async function removeBudget(budget, ctx) {
  if (!(await confirmAction("Delete budget", `Delete budget ${budget.id}? Requests are no longer held against it.`, "Delete"))) return;
  try {
    await call("deleteBudget", { params: { id: budget.id } });
    notify(`budget ${budget.id} deleted`, "success");
  } catch (err) {
    notify(`${err.code}: ${err.message}`, "error");
  }
  ctx.navigate("budgets", ctx.query);
}

async function windowUsage(budget, window) {
  const box = h("div", {}, loading());
  const open = dialog(`${budget.id}: ${window} window`, box, { wide: true });
  try {
    const answer = await call("budgetUsage", { params: { id: budget.id }, query: { window, limit: 200 } });
    replace(
      box,
      table(
        [
          { label: "Received", cell: (r) => time(r.received_at) },
          { label: "Request", cell: (r) => h("a", { href: `#/usage/${encodeURIComponent(r.request_id)}`, onclick: (e) => e.target.closest("dialog").close() }, r.request_id) },
          { label: "Status", cell: (r) => statusBadge(r.status) },
          { label: "Model", cell: (r) => r.served_model || r.requested_model || r.mcp_server || "–" },
          { label: "Cost", class: "num", cell: (r) => nanosUsd(r.cost_nanos) },
        ],
        answer.data || [],
        { empty: "No requests in this window." },
      ),
    );
  } catch (err) {
    replace(box, errorBox(err));
  }
  await open;
}

function quotaList(rows) {
  if (!rows.length) return h("p", { class: "empty" }, "No quotas.");
  return table(
    [
      { label: "Quota", cell: (q) => h("strong", {}, q.id) },
      { label: "Scope", cell: (q) => `${q.scope}${q.subject ? ` ${q.subject}` : ""}` },
      { label: "Window", cell: (q) => q.window },
      { label: "Kind", cell: (q) => q.kind },
      { label: "Usage", class: "wide", cell: (q) => meter(q.used, q.held, q.limit, { label: `${q.used} used, ${q.held} held of ${q.limit}` }) },
      { label: "Used", class: "num", cell: (q) => (q.kind === "tokens" ? compact(q.used) : num(q.used)) },
      { label: "Held", class: "num", cell: (q) => num(q.held) },
      { label: "Remaining", class: "num", cell: (q) => num(q.remaining) },
      { label: "Limit", class: "num", cell: (q) => num(q.limit) },
    ],
    rows,
  );
}
