// Diffs: the latest shadow comparisons through QA's filters (route, channel, cohort, path,
// result), and one exchange old | new side by side with the differing lines marked. Every value
// here is what a platform answered: it only ever becomes text, and "***" (redacted by the diff
// log) is shown as such.

import { api } from "./api.js";
import { $, clear, dateTime, h, listTable, number, redacted } from "./dom.js";

const RESULTS = {
  problems: ["mismatch", "error"],
  mismatch: ["mismatch"],
  error: ["error"],
  all: [],
};
const MARKS = {
  "!": ["changed", "chg"],
  "-": ["only in old", "only-old"],
  "+": ["only in new", "only-new"],
  "~": ["noise", "noise"],
};

const filters = { route: "", channel: "", cohort: "", path: "", result: "problems" };
let getState = () => null;
let form = null;
let listSignature = "";
let lastOpened = null;
let loading = false;
let shownHash = "";
let loadedAt = 0;
const LIST_EVERY_MS = 5000;

export function setup(stateGetter) {
  getState = stateGetter;
}

function select(id, label, options, value) {
  return [
    h("label", { for: id }, label),
    h("select", { id, name: id.replace("diff-", "") }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))),
  ];
}

function buildForm(state) {
  const any = (list) => [["", "any"], ...list.map((v) => [v, v])];
  const next = h(
    "form",
    { class: "filters card", role: "search", "aria-label": "Filter the differences" },
    h("div", { class: "field" }, select("diff-route", "Route", any(Object.keys(state.routes)), filters.route)),
    h("div", { class: "field" }, select("diff-channel", "Channel", any(state.channels), filters.channel)),
    h("div", { class: "field" }, select("diff-cohort", "Cohort", any(state.cohorts), filters.cohort)),
    h(
      "div",
      { class: "field wide" },
      h("label", { for: "diff-path" }, "Field path"),
      h("input", { id: "diff-path", name: "path", type: "text", value: filters.path, placeholder: "$.phone or $.items[*].balance", spellcheck: "false", autocomplete: "off" }),
    ),
    h(
      "div",
      { class: "field" },
      select(
        "diff-result",
        "Result",
        [
          ["problems", "mismatch or error"],
          ["mismatch", "mismatch"],
          ["error", "error"],
          ["all", "any"],
        ],
        filters.result,
      ),
    ),
    h("div", { class: "field buttons" }, h("button", { type: "submit", class: "primary" }, "Apply"), h("button", { type: "button", class: "secondary", dataset: { action: "clear" } }, "Clear")),
  );
  next.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const name of ["route", "channel", "cohort", "path", "result"]) filters[name] = next.elements[name].value.trim();
    listSignature = "";
    loadList(true);
  });
  next.querySelector("[data-action=clear]").addEventListener("click", () => {
    Object.assign(filters, { route: "", channel: "", cohort: "", path: "", result: "problems" });
    for (const name of ["route", "channel", "cohort", "path"]) next.elements[name].value = "";
    next.elements.result.value = "problems";
    listSignature = "";
    loadList(true);
  });
  return next;
}

function listUrl() {
  const search = new URLSearchParams();
  for (const name of ["route", "channel", "cohort", "path"]) if (filters[name]) search.append(name, filters[name]);
  for (const result of RESULTS[filters.result] || []) search.append("result", result);
  search.append("limit", "50");
  return `/admin/diffs?${search}`;
}

/** Show the list or one exchange, whichever the location says (#diffs or #diffs/REQUEST_ID). */
export function show(state, hash) {
  const root = $("#diffs");
  const [, requestId] = hash.replace(/^#/, "").split("/");
  shownHash = hash;
  if (requestId) {
    showOne(decodeURIComponent(requestId));
    return;
  }
  clear(root);
  form = buildForm(state);
  root.append(form, h("p", { id: "diff-summary", class: "muted", role: "status" }, "Loading…"), h("div", { id: "diff-list" }));
  listSignature = "";
  loadList(false);
}

/** The polling beat: a list on screen is refreshed (only redrawn when it changed). */
export function tick() {
  const onList = shownHash.replace(/^#/, "") === "diffs" && location.hash.replace(/^#/, "") === "diffs";
  // the diff log is read from disk on every call: every few seconds is live enough
  if (onList && Date.now() - loadedAt >= LIST_EVERY_MS) loadList(false);
}

async function loadList(announceIt) {
  if (loading) return;
  loading = true;
  loadedAt = Date.now();
  const summary = $("#diff-summary");
  const holder = $("#diff-list");
  try {
    const data = await api("GET", listUrl());
    if (!holder.isConnected) return;
    const records = data.records || [];
    const described = Object.entries(data.filters || {})
      .map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(", ") : v}`)
      .join("; ");
    const text = `${records.length ? `${records.length} latest` : "No"} record${records.length === 1 ? "" : "s"}${described ? ` (${described})` : ""}; read the newest ${number(data.bytes_read / 1024, 0)} KiB of the diff log.`;
    if (announceIt || summary.textContent !== text) summary.textContent = text;
    const next = JSON.stringify(records.map((r) => r.request_id + r.kind));
    if (next === listSignature) return;
    listSignature = next;
    const focused = holder.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    clear(holder);
    if (!records.length) {
      holder.append(h("p", { class: "empty card" }, "Nothing matches. With shadow reads on, comparisons appear here within seconds of traffic."));
      return;
    }
    holder.append(
      listTable(
        "diff-list",
        "Latest differences, newest first",
        ["When", "Route", "Channel · cohort", "Request", "Status old / new", "Result", "Differing paths"],
        records.map(listRow),
      ),
    );
    const back = focused || (lastOpened ? `diff|${lastOpened}` : null);
    if (back) holder.querySelector(`[data-key="${CSS.escape(back)}"]`)?.focus();
    lastOpened = null;
  } catch (problem) {
    if (summary) summary.textContent = `The diff log could not be read: ${problem.message}`;
  } finally {
    loading = false;
  }
}

function statusText(status) {
  if (!status) return "–";
  return `${status.old ?? "–"} / ${status.new ?? "–"}`;
}

function requestText(record) {
  return `${record.method || ""} ${record.path || ""}${record.query ? `?${record.query}` : ""}`.trim();
}

function listRow(record) {
  const more = record.differences > record.paths.length ? ` +${record.differences - record.paths.length}` : "";
  return h(
    "tr",
    { class: record.result },
    h("td", { class: "nowrap", "data-label": "When" }, h("time", { datetime: record.ts }, dateTime(record.ts))),
    h("td", { "data-label": "Route" }, record.route),
    h("td", { "data-label": "Channel · cohort" }, `${record.channel || "–"} · ${record.cohort || "–"}`),
    h(
      "td",
      { class: "request", "data-label": "Request" },
      h("a", { href: `#diffs/${encodeURIComponent(record.request_id)}`, dataset: { key: `diff|${record.request_id}` } }, redacted(requestText(record))),
    ),
    h("td", { class: "nowrap", "data-label": "Status" }, statusText(record.status)),
    h("td", { "data-label": "Result" }, h("span", { class: `result ${record.result}` }, record.result)),
    h("td", { class: "mono paths", "data-label": "Paths" }, record.paths.filter(Boolean).join("  "), more),
  );
}

// --- one exchange --------------------------------------------------------------------------------

function json(value) {
  return value === undefined ? "(absent)" : JSON.stringify(value);
}

function facts(record) {
  const latency = record.latency_ms || {};
  const items = [
    ["When", dateTime(record.ts)],
    ["Route", record.route],
    ["Channel", record.channel],
    ["Cohort", record.cohort],
    ["Customer", record.customer || "–"],
    ["Primary", record.primary],
    ["Status old / new", statusText(record.status)],
    ["Latency old / new", `${number(latency.old)} ms / ${number(latency.new)} ms`],
    ["Result", h("span", { class: `result ${record.result}` }, record.result)],
    ["Kind", `${record.kind}${record.mode ? ` · ${record.mode}` : ""}`],
  ];
  return h("dl", { class: "summary-facts" }, items.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, typeof v === "string" ? redacted(v) : v))));
}

function differencesTable(entries, caption) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "list differences" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, ["Path", "Kind", "Old", "New"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        entries.map((d) =>
          h(
            "tr",
            {},
            h("td", { class: "mono", "data-label": "Path" }, d.path),
            h("td", { "data-label": "Kind" }, d.kind || "–"),
            h("td", { class: "mono value old-side", "data-label": "Old" }, redacted(json(d.old))),
            h("td", { class: "mono value new-side", "data-label": "New" }, redacted(json(d.new))),
          ),
        ),
      ),
    ),
  );
}

function sideBySide(record, rows) {
  const primary = record.primary;
  const title = (side) => `${side}${side === primary ? " (primary)" : ""}`;
  return h(
    "div",
    { class: "side-wrap" },
    h(
      "table",
      { class: "side-by-side" },
      h("caption", {}, "Bodies, lined up by path (differing lines marked)"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "gutter" }, h("span", { class: "sr-only" }, "mark")), h("th", { scope: "col" }, title("old")), h("th", { scope: "col" }, title("new")))),
      h(
        "tbody",
        {},
        rows.map((row) => {
          const [words, cls] = MARKS[row.mark] || ["", ""];
          return h(
            "tr",
            { class: cls, title: row.path || null, dataset: { path: row.path || "" } },
            h("td", { class: "gutter" }, row.mark.trim() ? [h("span", { "aria-hidden": "true" }, row.mark), h("span", { class: "sr-only" }, words)] : ""),
            h("td", { class: "code old-side" }, row.old === null ? "" : redacted(row.old)),
            h("td", { class: "code new-side" }, row.new === null ? "" : redacted(row.new)),
          );
        }),
      ),
    ),
  );
}

async function showOne(requestId) {
  const root = $("#diffs");
  clear(root).append(
    h("p", {}, h("a", { href: "#diffs", class: "back" }, "← All differences")),
    h("p", { class: "muted", role: "status" }, `Loading ${requestId}…`),
  );
  lastOpened = requestId;
  try {
    const data = await api("GET", `/admin/diffs/${encodeURIComponent(requestId)}`);
    if (!location.hash.endsWith(encodeURIComponent(requestId))) return;
    const parts = [h("p", {}, h("a", { href: "#diffs", class: "back" }, "← All differences"))];
    for (const exchange of data.exchanges) {
      const record = exchange.record;
      parts.push(
        h(
          "article",
          { class: "exchange card", "aria-labelledby": `ex-${record.kind}` },
          h("h2", { id: `ex-${record.kind}`, class: "mono" }, redacted(requestText(record))),
          h("p", { class: "muted mono" }, `request ${record.request_id}`),
          facts(record),
          record.error ? h("p", { class: "notice held" }, `Error: ${json(record.error)}`) : null,
          record.differences?.length ? differencesTable(record.differences, `Differences (${record.differences.length})`) : h("p", { class: "good" }, "No differences."),
          exchange.rows ? sideBySide(record, exchange.rows) : h("p", { class: "notice" }, exchange.no_bodies),
          record.noise?.length ? differencesTable(record.noise, "Noise: differs between two answers of the same platform, not a difference") : null,
        ),
      );
    }
    clear(root).append(...parts);
    root.querySelector("h2")?.setAttribute("tabindex", "-1");
    root.querySelector("h2")?.focus();
  } catch (problem) {
    clear(root).append(h("p", {}, h("a", { href: "#diffs", class: "back" }, "← All differences")), h("p", { class: "error", role: "alert" }, problem.message));
  }
}
