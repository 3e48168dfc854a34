// DOM helpers: elements built with text nodes only (no string is ever parsed as HTML, so no
// injected markup),
// number and time formats, notices and dialogs.

/**
 * Creates an element. `attrs`: `class`, `on<event>` handlers, `dataset`, boolean and string
 * attributes; children: nodes, strings (as text), arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (k === "value") {
      el.value = v;
    } else if (k === "checked") {
      el.checked = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const SVG = "http://www.w3.org/2000/svg";

/** Creates an SVG element (attributes are set as given). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// ---- formats ----

export function usd(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  const digits = abs === 0 ? 2 : abs < 0.01 ? 6 : abs < 1 ? 4 : 2;
  return `$${value.toFixed(digits)}`;
}

/** USD for chart axes: few digits. */
export function usdShort(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value === 0) return "$0";
  const abs = Math.abs(value);
  return abs >= 1 ? `$${value.toFixed(2)}` : `$${Number(value.toPrecision(2))}`;
}

/** Exact USD from integer nano-dollars (no float rounding beyond the last shown digit). */
export function nanosUsd(nanos) {
  if (nanos === null || nanos === undefined) return "–";
  return usd(Number(nanos) / 1e9);
}

export function num(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US");
}

export function compact(value) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return value > 0 && value < 10 && !Number.isInteger(value) ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
}

export function pct(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${(value * 100).toFixed(value < 0.1 ? 2 : 1)}%`;
}

/** An RFC 3339 time as local "YYYY-MM-DD HH:MM:SS". */
export function time(value) {
  if (!value) return "–";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A value for an <input type="datetime-local"> from a Date. */
export function localInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A comma/space separated list from a text field. */
export function list(text) {
  return String(text || "")
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter(Boolean);
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function statusBadge(status) {
  const kind = status >= 500 ? "bad" : status >= 400 ? "warn" : "good";
  return badge(String(status), kind);
}

// ---- notices and dialogs ----

/** Shows a short message at the top of the page. */
export function notify(message, kind = "info") {
  const host = document.getElementById("notices");
  if (!host) return;
  const note = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  host.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
}

/** An error block for a page section. */
export function errorBox(error) {
  return h(
    "div",
    { class: "error-box", role: "alert" },
    h("strong", {}, error.code ? `${error.code}` : "error"),
    " ",
    error.message || String(error),
  );
}

/** Opens a modal dialog holding `content`; resolves when it closes. */
export function dialog(title, content, { wide = false } = {}) {
  const el = h(
    "dialog",
    { class: wide ? "wide" : "" },
    h(
      "header",
      {},
      h("h2", {}, title),
      h("button", { type: "button", class: "ghost close", "aria-label": "Close", onclick: () => el.close() }, "×"),
    ),
    content,
  );
  document.body.append(el);
  el.showModal();
  return new Promise((resolve) => {
    el.addEventListener("close", () => {
      el.remove();
      resolve(el.returnValue);
    });
  });
}

/** Asks for confirmation; resolves to true when confirmed. */
export async function confirmAction(title, message, action = "Confirm") {
  let ok = false;
  const body = h(
    "div",
    { class: "confirm" },
    h("p", {}, message),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "ghost", onclick: (e) => e.target.closest("dialog").close() }, "Cancel"),
      h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: (e) => {
            ok = true;
            e.target.closest("dialog").close();
          },
        },
        action,
      ),
    ),
  );
  await dialog(title, body);
  return ok;
}

/** A loading placeholder. */
export function loading(text = "Loading…") {
  return h("div", { class: "loading" }, text);
}

/** A table: columns [{label, cell(row) -> node|string, class?}], rows, optional row click. */
export function table(columns, rows, { onRow, empty = "Nothing here yet.", rowClass } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class || "" }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            {
              class: [onRow ? "clickable" : "", rowClass ? rowClass(row) : ""].join(" ").trim() || null,
              tabindex: onRow ? "0" : null,
              onclick: onRow ? () => onRow(row) : null,
              onkeydown: onRow ? (e) => e.key === "Enter" && onRow(row) : null,
            },
            columns.map((c) => h("td", { class: c.class || "" }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

/** A used/held/limit bar: used solid, held hatched, the rest empty. */
export function meter(used, held, limit, { label } = {}) {
  const bar = h("div", { class: "meter", role: "img", "aria-label": label || "" });
  const u = h("div", { class: "meter-used" });
  const hd = h("div", { class: "meter-held" });
  const total = Number(limit) || 0;
  const share = (v) => (total > 0 ? Math.max(0, Math.min(100, (Number(v) / total) * 100)) : 0);
  // CSSOM writes are allowed under the CSP (only style attributes in markup are not).
  u.style.width = `${share(used)}%`;
  hd.style.width = `${Math.min(share(held), 100 - share(used))}%`;
  if (total > 0 && Number(used) + Number(held) >= total) bar.classList.add("full");
  else if (total > 0 && Number(used) + Number(held) >= 0.8 * total) bar.classList.add("high");
  bar.append(u, hd);
  return bar;
}
