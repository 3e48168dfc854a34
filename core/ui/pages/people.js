// Teams and users, the owners of keys and budgets: list, create, rename, move, delete.

import { call } from "../api.js";
import { confirmAction, dialog, errorBox, field, h, loading, notify, replace, table, time } from "../dom.js";

export async function render(section, ctx) {
  const teamsBox = h("div", {}, loading());
  const usersBox = h("div", {}, loading());
  section.append(
    h(
      "header",
      { class: "page-head" },
      h("h1", {}, "Teams & users"),
      ctx.canWrite
        ? h(
            "div",
            { class: "row-actions" },
            h("button", { type: "button", id: "create-team", onclick: () => editTeam(null, ctx) }, "Create team"),
            h("button", { type: "button", id: "create-user", onclick: () => editUser(null, ctx) }, "Create user"),
          )
        : null,
    ),
    h("h2", {}, "Teams"),
    teamsBox,
    h("h2", {}, "Users"),
    usersBox,
  );
  const [teams, users] = await Promise.allSettled([call("teams", { query: { limit: 500 } }), call("users", { query: { limit: 500 } })]);
  if (!ctx.current()) return;
  if (teams.status === "rejected") replace(teamsBox, errorBox(teams.reason));
  else
    replace(
      teamsBox,
      table(
        [
          { label: "Id", cell: (t) => h("code", {}, t.id) },
          { label: "Name", cell: (t) => h("span", { class: "strong" }, t.name) },
          { label: "Created", cell: (t) => time(t.created_at) },
          { label: "", class: "act", cell: (t) => rowActions(ctx, () => editTeam(t, ctx), () => remove("deleteTeam", "team", t, ctx)) },
        ],
        teams.value.data || [],
        { empty: "No teams yet.", rowClass: (t) => `team-row team-${t.id}` },
      ),
    );
  if (users.status === "rejected") replace(usersBox, errorBox(users.reason));
  else
    replace(
      usersBox,
      table(
        [
          { label: "Id", cell: (u) => h("code", {}, u.id) },
          { label: "Name", cell: (u) => h("span", { class: "strong" }, u.name) },
          { label: "Email", cell: (u) => u.email || "–" },
          { label: "Team", cell: (u) => u.team || "–" },
          { label: "Created", cell: (u) => time(u.created_at) },
          { label: "", class: "act", cell: (u) => rowActions(ctx, () => editUser(u, ctx), () => remove("deleteUser", "user", u, ctx)) },
        ],
        users.value.data || [],
        { empty: "No users yet.", rowClass: (u) => `user-row user-${u.id}` },
      ),
    );
}

function rowActions(ctx, edit, del) {
  if (!ctx.canWrite) return null;
  return h(
    "div",
    { class: "row-actions" },
    h("button", { type: "button", class: "ghost small", onclick: edit }, "Edit"),
    h("button", { type: "button", class: "danger small", onclick: del }, "Delete"),
  );
}

async function remove(route, kind, item, ctx) {
  if (!(await confirmAction(`Delete ${kind}`, `Delete ${kind} "${item.name}" (${item.id})? The gateway refuses while a key${kind === "team" ? " or user" : ""} still refers to it.`, "Delete"))) return;
  try {
    await call(route, { params: { id: item.id } });
    notify(`${kind} ${item.id} deleted`, "success");
  } catch (err) {
    notify(`${err.code}: ${err.message}`, "error");
  }
  ctx.navigate("people", ctx.query);
}

/** Submits `form` with `send(data)`; shows the API's error in the form, closes on success. */
function submitter(form, problem, send) {
  return async (e) => {
    e.preventDefault();
    try {
      await send(new FormData(form));
      form.closest("dialog").close();
    } catch (err) {
      replace(problem, errorBox(err));
    }
  };
}

async function editTeam(team, ctx) {
  const problem = h("div");
  const form = h(
    "form",
    { class: "stack", id: "team-form" },
    team ? null : field("Id", h("input", { name: "id", required: true, autocomplete: "off" }), "a slug: a-z, 0-9, -, _ and ., starting with a letter or digit"),
    field("Name", h("input", { name: "name", required: true, autocomplete: "off", value: team ? team.name : "" })),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, team ? "Save" : "Create")),
  );
  form.addEventListener(
    "submit",
    submitter(form, problem, async (data) => {
      const name = String(data.get("name")).trim();
      if (team) await call("updateTeam", { params: { id: team.id }, body: { name } });
      else await call("createTeam", { body: { id: String(data.get("id")).trim(), name } });
      notify(`team ${team ? team.id : data.get("id")} saved`, "success");
    }),
  );
  await dialog(team ? `Team ${team.id}` : "Create team", form);
  ctx.navigate("people", ctx.query);
}

async function editUser(user, ctx) {
  const problem = h("div");
  const form = h(
    "form",
    { class: "stack", id: "user-form" },
    user ? null : field("Id", h("input", { name: "id", required: true, autocomplete: "off" }), "a slug: a-z, 0-9, -, _ and ., starting with a letter or digit"),
    field("Name", h("input", { name: "name", required: true, autocomplete: "off", value: user ? user.name : "" })),
    field("Email", h("input", { name: "email", type: "email", autocomplete: "off", value: user && user.email ? user.email : "" }), "optional"),
    field("Team", h("input", { name: "team", autocomplete: "off", value: user && user.team ? user.team : "" }), "optional: a team id"),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, user ? "Save" : "Create")),
  );
  form.addEventListener(
    "submit",
    submitter(form, problem, async (data) => {
      const body = {
        name: String(data.get("name")).trim(),
        email: String(data.get("email")).trim() || null,
        team: String(data.get("team")).trim() || null,
      };
      if (user) await call("updateUser", { params: { id: user.id }, body });
      else await call("createUser", { body: { id: String(data.get("id")).trim(), ...body } });
      notify(`user ${user ? user.id : data.get("id")} saved`, "success");
    }),
  );
  await dialog(user ? `User ${user.id}` : "Create user", form);
  ctx.navigate("people", ctx.query);
}
