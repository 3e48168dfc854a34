// Charts drawn as inline SVG: a time series (one or more lines) and horizontal bars.
// Every mark carries a <title> so hovering shows its exact value.

import { h, s } from "./dom.js";

const PALETTE = ["#2f6fb3", "#e07b39", "#3a9d5d", "#b8434d", "#7d5ba6", "#8c6d31", "#1b9aaa", "#d45087"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * exp) return step * exp;
  }
  return 10 * exp;
}

function shortTime(t, spanMs) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  if (spanMs > 3 * 86400e3) return `${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  if (spanMs > 86400e3) return `${p(d.getDate())} ${p(d.getHours())}:00`;
  return `${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * A time-series chart. `series`: [{name, points: [[timeMs, value], ...]}]; `format` shows
 * values; `from`/`to` fix the time axis.
 */
export function timeChart({ title, series, format = String, from, to, height = 180 }) {
  const width = 560;
  const pad = { l: 72, r: 12, t: 10, b: 24 };
  const all = series.flatMap((x) => x.points);
  const t0 = from ?? Math.min(...all.map((p) => p[0]));
  const t1 = to ?? Math.max(...all.map((p) => p[0]));
  const span = Math.max(1, t1 - t0);
  const max = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const x = (t) => pad.l + ((t - t0) / span) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / max) * (height - pad.t - pad.b);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(
      s("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: pad.l - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)),
    );
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4;
    svg.append(
      s("text", { x: x(t), y: height - 6, class: "axis", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, shortTime(t, span)),
    );
  }
  series.forEach((line, i) => {
    const pts = [...line.points].sort((a, b) => a[0] - b[0]);
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    if (series.length === 1) {
      const area = `${d}L${x(pts[pts.length - 1][0]).toFixed(1)},${y(0)}L${x(pts[0][0]).toFixed(1)},${y(0)}Z`;
      svg.append(s("path", { d: area, fill: color(i), "fill-opacity": 0.12, stroke: "none" }));
    }
    svg.append(s("path", { d, fill: "none", stroke: color(i), "stroke-width": 2 }));
    for (const p of pts) {
      svg.append(
        s(
          "circle",
          { cx: x(p[0]), cy: y(p[1]), r: pts.length > 60 ? 1.5 : 3, fill: color(i) },
          s("title", {}, `${line.name ? line.name + " · " : ""}${new Date(p[0]).toLocaleString()}: ${format(p[1])}`),
        ),
      );
    }
  });
  return h(
    "figure",
    { class: "chart-box" },
    h("figcaption", {}, title),
    all.length ? svg : h("p", { class: "empty" }, "No requests in this period."),
    series.length > 1 ? legend(series.map((x) => x.name)) : null,
  );
}

function legend(names) {
  return h(
    "ul",
    { class: "legend" },
    names.map((name, i) => {
      const swatch = s("svg", { viewBox: "0 0 10 10", class: "swatch" }, s("rect", { width: 10, height: 10, fill: color(i) }));
      return h("li", {}, swatch, name);
    }),
  );
}

/** Horizontal bars: `rows` [{label, value}], largest first. */
export function barChart({ title, rows, format = String, limit = 8 }) {
  const sorted = [...rows].sort((a, b) => b.value - a.value).slice(0, limit);
  const width = 560;
  const rowH = 24;
  const labelW = 150;
  const height = Math.max(1, sorted.length) * rowH + 4;
  const max = Math.max(0, ...sorted.map((r) => r.value)) || 1;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  sorted.forEach((row, i) => {
    const y = i * rowH + 2;
    const w = ((width - labelW - 90) * row.value) / max;
    const label = row.label.length > 22 ? `${row.label.slice(0, 21)}…` : row.label;
    svg.append(
      s("text", { x: labelW - 8, y: y + 15, class: "axis label", "text-anchor": "end" }, label),
      s(
        "rect",
        { x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 8, rx: 3, fill: color(i) },
        s("title", {}, `${row.label}: ${format(row.value)}`),
      ),
      s("text", { x: labelW + Math.max(1, w) + 6, y: y + 15, class: "axis" }, format(row.value)),
    );
  });
  return h(
    "figure",
    { class: "chart-box" },
    h("figcaption", {}, title),
    sorted.length ? svg : h("p", { class: "empty" }, "No requests in this period."),
  );
}
