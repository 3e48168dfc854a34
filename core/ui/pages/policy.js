// Policy status: the serving generation, when and what was loaded, reload counters and the last
// reload error with its file and line; a reload button for admin tokens.

import { call } from "../api.js";
import { badge, errorBox, h, loading, notify, num, replace, time } from "../dom.js";

export async function render(section, ctx) {
  const body = h("div", {}, loading());
  const reload = ctx.canWrite
    ? h(
        "button",
        {
          type: "button",
          id: "reload-policy",
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              const status = await call("reloadPolicy");
              notify(status && status.last_error ? "Reload failed: the previous policy set keeps serving." : "Policy reloaded.", status && status.last_error ? "error" : "success");
              ctx.navigate("policy");
            } catch (err) {
              notify(`${err.code}: ${err.message}`, "error");
            } finally {
              e.target.disabled = false;
            }
          },
        },
        "Reload now",
      )
    : null;
  section.append(h("header", { class: "page-head" }, h("h1", {}, "Policy"), reload), body);
  let p;
  try {
    p = await call("policy");
  } catch (err) {
    if (ctx.current()) replace(body, errorBox(err));
    return;
  }
  if (!ctx.current()) return;
  const err = p.last_error;
  replace(
    body,
    err
      ? h(
          "div",
          { class: "card policy-error", role: "alert" },
          h("h2", {}, "The last reload failed"),
          h("p", {}, `The set was rejected whole${p.last_error_at ? ` at ${time(p.last_error_at)}` : ""}; the previous generation keeps serving.`),
          h("p", { class: "where" }, h("code", {}, `${err.file || "?"}${err.line ? `:${err.line}` : ""}`)),
          h("pre", {}, err.message || ""),
          Array.isArray(p.last_errors) && p.last_errors.length > 1 ? h("pre", { class: "muted" }, p.last_errors.slice(1).join("\n")) : null,
        )
      : h("div", { class: "card ok-box" }, badge("ok", "good"), " The last load succeeded."),
    h(
      "div",
      { class: "stats" },
      stat("Generation", num(p.generation)),
      stat("Loaded", time(p.loaded_at)),
      stat("Reloads ok", num(p.reloads_ok)),
      stat("Reloads failed", num(p.reloads_failed)),
    ),
    h("dl", { class: "facts" }, h("dt", {}, "Content hash"), h("dd", {}, h("code", {}, p.content_hash || "–"))),
    h("h2", {}, "Files"),
    files(p.files),
  );
}

function stat(label, value) {
  return h("div", { class: "stat card" }, h("span", { class: "label" }, label), h("strong", {}, value));
}

function files(list) {
  if (!Array.isArray(list) || !list.length) return h("p", { class: "empty" }, "No files listed.");
  return h(
    "ul",
    { class: "files" },
    list.map((f) => {
      if (typeof f === "string") return h("li", {}, h("code", {}, f));
      const name = f.path || f.file || f.name || JSON.stringify(f);
      const extra = Object.entries(f).filter(([k]) => !["path", "file", "name"].includes(k));
      return h("li", {}, h("code", {}, name), extra.map(([k, v]) => h("small", { class: "muted" }, ` ${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)));
    }),
  );
}
