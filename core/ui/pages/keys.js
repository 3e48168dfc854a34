// Keys: list and filter, create (the secret is shown once), revoke / unrevoke, rotate, and edit
// Model Access and MCP Access.

import { call } from "../api.js";
import { badge, confirmAction, dialog, errorBox, field, h, list, loading, notify, replace, table, time } from "../dom.js";

export async function render(section, ctx) {
  const q = ctx.query;
  const filters = h(
    "form",
    {
      class: "filters",
      onsubmit: (e) => {
        e.preventDefault();
        const data = Object.fromEntries(new FormData(e.target));
        ctx.navigate("keys", data);
      },
    },
    field("Search", h("input", { name: "q", value: q.q || "", placeholder: "name or prefix" })),
    field(
      "Status",
      h(
        "select",
        { name: "status" },
        ["", "active", "expired", "revoked"].map((s) => h("option", { value: s, selected: (q.status || "") === s }, s || "any")),
      ),
    ),
    field("Team", h("input", { name: "team", value: q.team || "" })),
    field("User", h("input", { name: "user", value: q.user || "" })),
    h("button", { type: "submit", class: "ghost" }, "Filter"),
  );
  const head = h(
    "header",
    { class: "page-head" },
    h("h1", {}, "Keys"),
    ctx.canWrite ? h("button", { type: "button", id: "create-key", onclick: () => createKey(ctx) }, "Create key") : null,
  );
  const body = h("div", {}, loading());
  section.append(head, filters, body);
  let answer;
  try {
    answer = await call("keys", { query: { q: q.q, status: q.status, team: q.team, user: q.user, limit: 200, cursor: q.cursor } });
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
        { label: "Name", cell: (k) => h("span", { class: "strong" }, k.name) },
        { label: "Prefix", cell: (k) => h("code", {}, k.prefix) },
        { label: "Status", cell: (k) => badge(k.status, k.status === "active" ? "good" : "bad") },
        { label: "Team", cell: (k) => k.team || "–" },
        { label: "User", cell: (k) => k.user || "–" },
        { label: "Model Access", cell: (k) => chips(k.models) },
        { label: "MCP Access", cell: (k) => chips(k.mcp_servers) },
        { label: "Created", cell: (k) => time(k.created_at) },
        { label: "Expires", cell: (k) => time(k.expires_at) },
        { label: "", class: "act", cell: (k) => actions(k, ctx) },
      ],
      rows,
      { empty: "No keys match.", rowClass: (k) => `key-row key-${k.id}` },
    ),
    answer.next_cursor ? h("button", { type: "button", class: "ghost", onclick: () => ctx.navigate("keys", { ...q, cursor: answer.next_cursor }) }, "Next page") : null,
  );
}

function chips(items) {
  if (!items || !items.length) return h("span", { class: "muted" }, "none");
  return h("span", { class: "chips" }, items.map((m) => h("code", { class: "chip" }, m)));
}

function actions(key, ctx) {
  const buttons = [h("button", { type: "button", class: "ghost small", onclick: () => showKey(key) }, "Details")];
  if (ctx.canWrite) {
    buttons.push(h("button", { type: "button", class: "ghost small", onclick: () => editAccess(key, ctx) }, "Edit access"));
    if (key.status === "revoked") {
      buttons.push(h("button", { type: "button", class: "ghost small", onclick: () => setRevoked(key, false, ctx) }, "Unrevoke"));
    } else {
      buttons.push(h("button", { type: "button", class: "ghost small", onclick: () => rotate(key, ctx) }, "Rotate"));
      buttons.push(h("button", { type: "button", class: "danger small", onclick: () => setRevoked(key, true, ctx) }, "Revoke"));
    }
  }
  return h("div", { class: "row-actions" }, buttons);
}

async function setRevoked(key, revoke, ctx) {
  if (revoke && !(await confirmAction("Revoke key", `Revoke "${key.name}" (${key.prefix}…)? Requests with it are refused with 401 api_key_revoked at once.`, "Revoke"))) {
    return;
  }
  try {
    await call(revoke ? "revokeKey" : "unrevokeKey", { params: { id: key.id } });
    notify(`${key.name}: ${revoke ? "revoked" : "active again"}`, "success");
    ctx.navigate("keys", ctx.query);
  } catch (err) {
    notify(`${err.code}: ${err.message}`, "error");
  }
}

/** The reveal-once view of a new secret, with a copy button. */
function secretView(key, secret) {
  const out = h("code", { class: "secret", id: "revealed-secret" }, secret);
  const copied = h("span", { class: "muted", "aria-live": "polite" });
  return h(
    "div",
    { class: "reveal" },
    h("p", {}, "This is the only time the secret is shown: the gateway stores only its hash. Copy it now."),
    h("div", { class: "secret-row" }, out, h(
      "button",
      {
        type: "button",
        class: "small",
        id: "copy-secret",
        onclick: async () => {
          try {
            await navigator.clipboard.writeText(secret);
            copied.textContent = "Copied.";
          } catch {
            const range = document.createRange();
            range.selectNodeContents(out);
            const sel = window.getSelection();
            sel.removeAllRanges();
            sel.addRange(range);
            copied.textContent = "Selected: press Ctrl+C to copy.";
          }
        },
      },
      "Copy",
    )),
    copied,
    h("dl", { class: "facts" }, h("dt", {}, "Key id"), h("dd", {}, h("code", { id: "revealed-key-id" }, key.id)), h("dt", {}, "Prefix"), h("dd", {}, h("code", {}, key.prefix))),
    h("div", { class: "actions" }, h("button", { type: "button", id: "secret-done", onclick: (e) => e.target.closest("dialog").close() }, "Done")),
  );
}

async function createKey(ctx) {
  const problem = h("div");
  const expires = h("input", { type: "datetime-local", name: "expires_at" });
  const form = h(
    "form",
    {
      class: "stack",
      id: "create-key-form",
      onsubmit: async (e) => {
        e.preventDefault();
        const data = new FormData(form);
        const body = {
          name: String(data.get("name")).trim(),
          models: list(data.get("models")),
          mcp_servers: list(data.get("mcp_servers")),
        };
        if (data.get("team")) body.team = String(data.get("team")).trim();
        if (data.get("user")) body.user = String(data.get("user")).trim();
        if (expires.value) body.expires_at = new Date(expires.value).toISOString();
        try {
          const created = await call("createKey", { body });
          const dlg = form.closest("dialog");
          replace(dlg.querySelector("h2"), `Key "${created.key.name}" created`);
          form.replaceWith(secretView(created.key, created.secret));
        } catch (err) {
          replace(problem, errorBox(err));
        }
      },
    },
    field("Name", h("input", { name: "name", required: true, autocomplete: "off" })),
    field("Team", h("input", { name: "team", autocomplete: "off" }), "optional: a team id"),
    field("User", h("input", { name: "user", autocomplete: "off" }), "optional: a user id"),
    field("Model Access", h("input", { name: "models", autocomplete: "off", placeholder: "chat, gpt-*  or *" }), "models or model groups, comma separated; * for all"),
    field("MCP Access", h("input", { name: "mcp_servers", autocomplete: "off", placeholder: "github, search" }), "MCP server slugs, comma separated"),
    field("Expires", expires, "optional"),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create")),
  );
  await dialog("Create key", form);
  ctx.navigate("keys", ctx.query);
}

async function rotate(key, ctx) {
  if (!(await confirmAction("Rotate key", `Rotate "${key.name}"? The old secret stops working and a new one is shown once.`, "Rotate"))) return;
  try {
    const rotated = await call("rotateKey", { params: { id: key.id } });
    await dialog(`Key "${key.name}" rotated`, secretView(rotated.key, rotated.secret));
  } catch (err) {
    notify(`${err.code}: ${err.message}`, "error");
  }
  ctx.navigate("keys", ctx.query);
}

async function editAccess(key, ctx) {
  const problem = h("div");
  const form = h(
    "form",
    {
      class: "stack",
      onsubmit: async (e) => {
        e.preventDefault();
        const data = new FormData(form);
        const body = { models: list(data.get("models")), mcp_servers: list(data.get("mcp_servers")) };
        for (const k of ["name", "team", "user"]) {
          const v = String(data.get(k) || "").trim();
          body[k] = v || null;
        }
        body.name = body.name || key.name;
        try {
          await call("updateKey", { params: { id: key.id }, body });
          notify(`${body.name}: updated`, "success");
          form.closest("dialog").close();
        } catch (err) {
          replace(problem, errorBox(err));
        }
      },
    },
    field("Name", h("input", { name: "name", value: key.name, required: true })),
    field("Team", h("input", { name: "team", value: key.team || "" })),
    field("User", h("input", { name: "user", value: key.user || "" })),
    field("Model Access", h("input", { name: "models", value: (key.models || []).join(", ") }), "comma separated; empty for none"),
    field("MCP Access", h("input", { name: "mcp_servers", value: (key.mcp_servers || []).join(", ") }), "comma separated; empty for none"),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save")),
  );
  await dialog(`Edit "${key.name}"`, form);
  ctx.navigate("keys", ctx.query);
}

async function showKey(key) {
  const history = h("div", {}, loading());
  const meta = Object.entries(key.metadata || {});
  const body = h(
    "div",
    { class: "stack" },
    h(
      "dl",
      { class: "facts" },
      [
        ["Id", h("code", {}, key.id)],
        ["Prefix", h("code", {}, key.prefix)],
        ["Status", key.status],
        ["Team", key.team || "–"],
        ["User", key.user || "–"],
        ["Created", time(key.created_at)],
        ["Updated", time(key.updated_at)],
        ["Expires", time(key.expires_at)],
        ["Revoked", time(key.revoked_at)],
        ["Rotations", String(key.rotations ?? 0)],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    ),
    meta.length ? h("h3", {}, "Metadata") : null,
    meta.length ? h("dl", { class: "facts" }, meta.map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))])) : null,
    h("h3", {}, "Rotation history"),
    history,
  );
  const open = dialog(`Key "${key.name}"`, body, { wide: true });
  try {
    const answer = await call("keyRotations", { params: { id: key.id } });
    replace(
      history,
      table(
        [
          { label: "When", cell: (r) => time(r.at) },
          { label: "By", cell: (r) => r.actor || "–" },
          { label: "Old prefix", cell: (r) => h("code", {}, r.old_prefix) },
          { label: "New prefix", cell: (r) => h("code", {}, r.new_prefix) },
        ],
        answer.data || [],
        { empty: "Never rotated." },
      ),
    );
  } catch (err) {
    replace(history, errorBox(err));
  }
  await open;
}
