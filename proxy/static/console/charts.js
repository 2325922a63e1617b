// Small live charts as inline SVG: a few polylines over a fixed viewBox, stretched to the box
// the stylesheet gives them. No style attributes (the CSP forbids them): colours are classes.

import { clear, h, number, percent, svg } from "./dom.js";

const W = 240;
const H = 56;
const PAD = 3;

function points(values, top) {
  const n = values.length;
  const out = [];
  let run = [];
  values.forEach((value, index) => {
    if (value === null || value === undefined) {
      if (run.length) out.push(run);
      run = [];
      return;
    }
    const x = n > 1 ? (index / (n - 1)) * W : W;
    const y = H - PAD - (Math.min(value, top) / top) * (H - 2 * PAD);
    run.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  if (run.length) out.push(run);
  return out;
}

function niceTop(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 2.5, 5, 10]) if (max <= step * power) return step * power;
  return 10 * power;
}

/**
 * One chart: `lines` are {values, cls, label}; `top` is fixed (1 for rates) or found from the
 * data. Returns a <figure> to append; `update` redraws it in place.
 */
export function chart({ title, unit, fixedTop = null, format }) {
  const plot = svg("svg", {
    class: "spark",
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: "none",
    role: "img",
  });
  const now = h("span", { class: "now" });
  const scale = h("span", { class: "scale muted" });
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, h("span", { class: "title" }, title), scale), plot, now);

  function update(span, lines) {
    const max = Math.max(0, ...lines.flatMap((line) => line.values.filter((v) => v !== null && v !== undefined)));
    const top = fixedTop ?? niceTop(max);
    clear(plot);
    plot.append(svg("line", { class: "grid", x1: 0, x2: W, y1: H - PAD, y2: H - PAD, "vector-effect": "non-scaling-stroke" }));
    plot.append(svg("line", { class: "grid", x1: 0, x2: W, y1: PAD, y2: PAD, "vector-effect": "non-scaling-stroke" }));
    for (const line of lines) {
      for (const run of points(line.values, top)) {
        const attrs = { class: `line ${line.cls}`, "vector-effect": "non-scaling-stroke" };
        if (run.length === 1) {
          const [x, y] = run[0].split(",");
          plot.append(svg("circle", { class: `dot ${line.cls}`, cx: x, cy: y, r: 1.5 }));
        } else {
          plot.append(svg("polyline", { ...attrs, points: run.join(" ") }));
        }
      }
    }
    scale.textContent = `${span} · max ${format(top)}${unit}`;
    clear(now);
    const said = [];
    for (const line of lines) {
      const last = [...line.values].reverse().find((v) => v !== null && v !== undefined);
      const text = last === undefined ? "–" : `${format(last)}${unit}`;
      now.append(h("span", { class: `value ${line.cls}` }, h("span", { class: "swatch", "aria-hidden": "true" }), `${line.label} ${text}`));
      said.push(`${line.label} ${text}`);
    }
    plot.setAttribute("aria-label", `${title}, ${span}; now ${said.join(", ")}`);
  }

  return { figure, update };
}

export const formats = {
  rate: (v) => number(v, v < 10 ? 1 : 0),
  ms: (v) => number(v, v < 10 ? 1 : 0),
  share: (v) => percent(v, v > 0.99 && v < 1 ? 1 : 0).replace(" %", ""),
};
