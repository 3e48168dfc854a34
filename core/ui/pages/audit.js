// Audit log: every admin change (who, what, before and after) and every policy reload.

import { call } from "../api.js";
import { dialog, errorBox, field, h, loading, replace, table, time } from "../dom.js";

export async function render(section, ctx) {
  const q = ctx.query;
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (e) => {
        e.preventDefault();
        ctx.navigate("audit", Object.fromEntries(new FormData(e.target)));
      },
    },
    field("Actor", h("input", { name: "actor", value: q.actor || "", placeholder: "token id" })),
    field("Action", h("input", { name: "action", value: q.action || "", placeholder: "key.revoke" })),
    h("button", { type: "submit", class: "ghost" }, "Filter"),
  );
  const body = h("div", {}, loading());
  section.append(h("header", { class: "page-head" }, h("h1", {}, "Audit log")), form, body);
  let answer;
  try {
    answer = await call("audit", { query: { actor: q.actor, action: q.action, limit: 100, cursor: q.cursor } });
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;
  replace(
    body,
    table(
      [
        { label: "When", cell: (a) => time(a.at) },
        { label: "Actor", cell: (a) => h("code", {}, a.actor || "–") },
        { label: "Action", cell: (a) => h("strong", {}, a.action) },
        { label: "Target", cell: (a) => (a.target === null || a.target === undefined ? "–" : typeof a.target === "object" ? JSON.stringify(a.target) : String(a.target)) },
      ],
      answer.data || [],
      { empty: "No audit entries match.", onRow: (a) => showEntry(a) },
    ),
    answer.next_cursor ? h("button", { type: "button", class: "ghost", onclick: () => ctx.navigate("audit", { ...q, cursor: answer.next_cursor }) }, "Next page") : null,
  );
}

function showEntry(a) {
  const pretty = (v) => h("pre", {}, v === null || v === undefined ? "–" : JSON.stringify(v, null, 2));
  dialog(
    `${a.action} · ${time(a.at)}`,
    h("div", { class: "diff" }, h("div", {}, h("h3", {}, "Before"), pretty(a.before)), h("div", {}, h("h3", {}, "After"), pretty(a.after))),
    { wide: true },
  );
}
