// The dashboard shell: sign-in with an admin token, the navigation and a hash router.

import { call, setToken, token, whenUnauthorized } from "./api.js";
import { errorBox, field, h, replace } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as budgets from "./pages/budgets.js";
import * as keys from "./pages/keys.js";
import * as usage from "./pages/usage.js";
import * as policy from "./pages/policy.js";
import * as catalog from "./pages/catalog.js";
import * as audit from "./pages/audit.js";
import * as people from "./pages/people.js";

const PAGES = [
  { path: "overview", title: "Overview", page: overview },
  { path: "usage", title: "Usage", page: usage },
  { path: "keys", title: "Keys", page: keys },
  { path: "budgets", title: "Budgets", page: budgets },
  { path: "people", title: "Teams & users", page: people },
  { path: "policy", title: "Policy", page: policy },
  { path: "mcp", title: "MCP servers", page: catalog, view: "mcp" },
  { path: "providers", title: "Providers & models", page: catalog, view: "providers" },
  { path: "audit", title: "Audit log", page: audit },
];

const root = document.getElementById("app");
let who = null;

/** The current location: `#/usage/abc?model=x` -> {path: "usage", rest: ["abc"], query}. */
function location() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [pathPart, queryPart = ""] = hash.split("?");
  const [path = "", ...rest] = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  return { path: path || "overview", rest, query: Object.fromEntries(new URLSearchParams(queryPart)) };
}

/** Navigates to `#/path` with an optional query object. */
export function navigate(path, query = {}) {
  const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v !== undefined && v !== null)).toString();
  const target = `#/${path}${qs ? `?${qs}` : ""}`;
  if (window.location.hash === target) route();
  else window.location.hash = target;
}

function signOut() {
  setToken(null);
  who = null;
  showSignIn();
}

function showSignIn(error) {
  const input = h("input", {
    type: "password",
    name: "token",
    id: "admin-token",
    autocomplete: "off",
    required: true,
    minlength: "1",
    placeholder: "TOLLGATE_ADMIN_TOKEN or a stored admin token",
  });
  const problem = h("div", { class: "signin-error" }, error ? errorBox(error) : null);
  const form = h(
    "form",
    {
      class: "signin card",
      onsubmit: async (e) => {
        e.preventDefault();
        setToken(input.value.trim());
        try {
          who = await call("whoami");
          start();
        } catch (err) {
          setToken(null);
          replace(problem, errorBox(err.status === 401 ? { code: "unauthorized", message: "That admin token was not accepted." } : err));
        }
      },
    },
    h("h1", {}, "tollgate"),
    h("p", {}, "Sign in with an admin token. It is kept in this tab only (sessionStorage) and sent to the gateway's admin API."),
    field("Admin token", input),
    problem,
    h("button", { type: "submit" }, "Sign in"),
  );
  replace(root, h("main", { class: "signin-page" }, form));
  root.classList.remove("loading");
  input.focus();
}

function start() {
  const nav = h(
    "nav",
    { "aria-label": "Dashboard" },
    h("a", { class: "brand", href: "#/overview" }, "tollgate"),
    h(
      "ul",
      {},
      PAGES.map((p) => h("li", {}, h("a", { href: `#/${p.path}`, dataset: { page: p.path } }, p.title))),
    ),
    h(
      "div",
      { class: "who" },
      h("span", { title: "Signed in as" }, `${who.token_id} · ${who.role}`),
      h("button", { type: "button", class: "ghost", onclick: signOut }, "Sign out"),
    ),
  );
  const main = h("main", { id: "page" });
  replace(root, nav, h("div", { id: "notices", "aria-live": "polite" }), main);
  root.classList.remove("loading");
  route();
}

let generation = 0;

async function route() {
  const main = document.getElementById("page");
  if (!main || !who) return;
  const loc = location();
  const entry = PAGES.find((p) => p.path === loc.path) || PAGES[0];
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    a.classList.toggle("active", a.dataset.page === entry.path);
    if (a.dataset.page === entry.path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${entry.title} · tollgate`;
  const mine = ++generation;
  const section = h("section", { class: `page page-${entry.path}` });
  replace(main, section);
  const ctx = {
    ...loc,
    view: entry.view,
    role: who.role,
    canWrite: who.role === "admin",
    navigate,
    // A page checks this after each await: false once the user went elsewhere.
    current: () => mine === generation,
  };
  try {
    await entry.page.render(section, ctx);
  } catch (err) {
    if (mine === generation) section.append(errorBox(err));
  }
}

whenUnauthorized(() => {
  if (who) {
    setToken(null);
    who = null;
    showSignIn({ code: "unauthorized", message: "The admin token is no longer accepted: sign in again." });
  }
});

window.addEventListener("hashchange", route);

(async () => {
  if (!token()) return showSignIn();
  try {
    who = await call("whoami");
    start();
  } catch (err) {
    setToken(null);
    showSignIn(err.status === 401 ? null : err);
  }
})();
