// Building the page from data without ever parsing data as HTML: every value goes in as text.
// Diff records hold what the platforms answered; nothing of it may become markup.

const SVG = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** h("button", {class: "x", onclick: f}, "text", child, ...) */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG, tag), attrs, children);
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** Replace the text only when it changed (keeps screen readers from re-reading it). */
export function setText(element, text) {
  const value = String(text);
  if (element.textContent !== value) element.textContent = value;
}

export function percent(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return `${(value * 100).toFixed(digits)} %`;
}

export function number(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits).replace(/\.0+$/, "");
}

export function clock(iso) {
  if (!iso) return "–";
  const when = new Date(typeof iso === "number" ? iso * 1000 : iso);
  if (Number.isNaN(when.getTime())) return String(iso);
  return when.toLocaleTimeString([], { hour12: false });
}

export function dateTime(iso) {
  if (!iso) return "–";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return String(iso);
  const today = new Date().toDateString() === when.toDateString();
  return today ? clock(iso) : `${when.toLocaleDateString()} ${clock(iso)}`;
}

export function scopeText(scope) {
  return ["route", "channel", "cohort"].map((k) => (scope && scope[k]) || "*").join(" / ");
}

/** Text with every "***" (a value the diff log redacted) marked, still as text. */
export function redacted(text) {
  const parts = String(text).split("***");
  const out = [];
  parts.forEach((part, index) => {
    if (index > 0) {
      out.push(h("span", { class: "redacted", title: "redacted: personal data, never in the log" }, "***"));
    }
    if (part) out.push(part);
  });
  return out;
}

/** A list as a table in a card: `headers` are column titles, `rows` ready <tr> elements. */
export function listTable(cls, caption, headers, rows) {
  return h(
    "div",
    { class: "table-wrap card" },
    h(
      "table",
      { class: `list ${cls}` },
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, headers.map((title) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, rows),
    ),
  );
}
