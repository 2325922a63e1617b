// Overview: every route as a channel x cohort grid of weights, its plan step and rollback state,
// and small live charts (rate, match rate, p95 latency, old vs new). The page is built once per
// shape of the configuration and then updated in place, so a refresh never takes the keyboard
// focus away from the cell an operator is on.

import { api } from "./api.js";
import { chart, formats } from "./charts.js";
import { announce, openForm, reasonField } from "./dialog.js";
import { $, clear, h, number, percent, scopeText, setText, svg } from "./dom.js";

const views = new Map(); // route name -> {cells: Map, charts, header parts}
const ARROWS = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
let shape = "";
let refresh = async () => {};

export function onChange(callback) {
  refresh = callback;
}

// --- rollback scopes -------------------------------------------------------------------------

function scopeKey(scope) {
  return [scope.route || null, scope.channel || null, scope.cohort || null];
}

/** Every rollback flag in force, from the file and from the fleet, with where it came from. */
export function scopes(state) {
  const file = (state.rollback?.file || []).map((s) => ({ ...s, source: "file" }));
  const fleet = (state.rollback?.fleet?.scopes || []).map((s) => ({ ...s, source: "fleet" }));
  return [...file, ...fleet];
}

function covers(scope, route, channel, cohort) {
  const [r, ch, co] = scopeKey(scope);
  return (!r || r === route) && (!ch || ch === channel) && (!co || co === cohort);
}

export function isGlobal(scope) {
  const [r, ch, co] = scopeKey(scope);
  return !r && !ch && !co;
}

function holders(state, route, channel, cohort) {
  return scopes(state).filter((scope) => covers(scope, route, channel, cohort));
}

function scopeWords(scope) {
  const [r, ch, co] = scopeKey(scope);
  if (!r && !ch && !co) return "everything";
  return scopeText({ route: r, channel: ch, cohort: co });
}

// --- actions ---------------------------------------------------------------------------------

function scopeBody(scope) {
  const body = {};
  for (const name of ["route", "channel", "cohort"]) if (scope[name]) body[name] = scope[name];
  return body;
}

function outboxNote(result) {
  const pending = result.outbox_to_old;
  if (pending) return ` ${pending} write(s) made on new are still on their way to old.`;
  return "";
}

export function rollbackDialog(scope, state) {
  const words = scopeWords(scope);
  const everything = words === "everything";
  const onNew = everything ? describeOnNew(state) : null;
  openForm({
    title: everything ? "Roll back everything to the old platform" : `Roll back ${words}`,
    tone: "danger",
    submitLabel: everything ? "Roll back everything" : "Roll back",
    body: [
      h(
        "p",
        {},
        everything
          ? "Every route, every channel and every cohort goes to the old platform at once. The weights are kept and apply again on resume."
          : `Every request of ${words} goes to the old platform at once. The weights are kept and apply again on resume.`,
      ),
      onNew ? h("p", { class: "muted" }, onNew) : null,
      reasonField("rollback-reason", "e.g. wait times up on chat"),
    ],
    onSubmit: async (form) => {
      const result = await api("POST", "/admin/rollback", { ...scopeBody(scope), reason: form.reason.value.trim() });
      await refresh();
      return `Rolled back ${words}: requests now go to the old platform (config ${result.version}).${outboxNote(result)}`;
    },
  });
}

export function resumeDialog(scope, state) {
  const everything = isGlobal(scope);
  const fileScopes = scopes(state).filter((s) => s.source === "file");
  const lifted = everything ? fileScopes : [scope];
  openForm({
    title: everything ? "Resume everything" : `Resume ${scopeWords(scope)}`,
    submitLabel: everything ? "Lift every rollback" : "Resume",
    body: [
      h("p", {}, "The weights that were set apply again. This lifts:"),
      h("ul", { class: "scopes" }, lifted.map((s) => h("li", {}, h("strong", {}, scopeWords(s)), s.reason ? ` — ${s.reason}` : "", s.by ? ` (${s.by})` : ""))),
      reasonField("resume-reason", "e.g. fixed, error rate back to normal"),
    ],
    onSubmit: async (form) => {
      const body = everything ? { all: true } : scopeBody(scope);
      const result = await api("POST", "/admin/resume", { ...body, reason: form.reason.value.trim() });
      await refresh();
      return `Resumed ${everything ? "everything" : scopeWords(scope)}: ${result.lifted} rollback(s) lifted (config ${result.version}).`;
    },
  });
}

function describeOnNew(state) {
  let cells = 0;
  for (const info of Object.values(state.routes || {})) {
    for (const row of Object.values(info.weights)) for (const value of Object.values(row)) if (value > 0) cells += 1;
  }
  return cells ? `${cells} cell(s) send customers to the new platform now.` : "No cell sends customers to the new platform now.";
}

function weightDialog(route, channel, cohort, state) {
  const current = state.routes[route].weights[channel][cohort];
  const held = holders(state, route, channel, cohort);
  const id = "weight-percent";
  const number_ = h("input", { id, name: "percent", type: "number", min: 0, max: 100, step: "any", required: true, value: current, inputmode: "decimal" });
  const range = h("input", { type: "range", min: 0, max: 100, step: 1, value: current, "aria-label": "Percent on the new platform (slider)", tabindex: -1 });
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const say = () => {
    const next = Number(number_.value);
    summary.textContent = Number.isFinite(next) && number_.value !== ""
      ? `${route} · ${channel} · ${cohort}: ${number(current, 2)} % → ${number(next, 2)} % of customers on the new platform.`
      : "Enter a percent from 0 to 100.";
  };
  number_.addEventListener("input", () => {
    range.value = number_.value;
    say();
  });
  range.addEventListener("input", () => {
    number_.value = range.value;
    say();
  });
  say();
  const cellScope = { route, channel, cohort };
  const heldCell = held.find((s) => s.source === "file" && scopeKey(s).join("|") === [route, channel, cohort].join("|"));
  const extra = [
    heldCell
      ? h("button", { type: "button", class: "secondary", onclick: () => resumeDialog(heldCell, state) }, "Resume this cell…")
      : h("button", { type: "button", class: "danger-outline", onclick: () => rollbackDialog(cellScope, state) }, "Roll back this cell…"),
  ];
  openForm({
    title: `Weight of ${route} · ${channel} · ${cohort}`,
    submitLabel: "Set weight",
    extra,
    body: [
      held.length
        ? h(
            "div",
            { class: "notice held" },
            h("strong", {}, "Rolled back: "),
            "this cell is on the old platform whatever its weight, held by ",
            held.map((s, i) => [i ? ", " : "", h("strong", {}, scopeWords(s)), s.source === "fleet" ? " (fleet)" : "", s.reason ? ` — ${s.reason}` : ""]),
            ". A new weight applies once it is resumed.",
          )
        : null,
      h("label", { for: id }, "Percent of customers on the new platform"),
      h("div", { class: "percent-row" }, number_, h("span", { "aria-hidden": "true" }, "%"), range),
      summary,
      reasonField("weight-reason", "e.g. email wave 1"),
    ],
    onSubmit: async (form) => {
      const percent_ = Number(form.percent.value);
      const result = await api("PUT", `/admin/routes/${encodeURIComponent(route)}/weights`, {
        percent: percent_,
        channel,
        cohort,
        reason: form.reason.value.trim(),
      });
      await refresh();
      return result.changed
        ? `${route} · ${channel} · ${cohort} is now ${number(percent_, 2)} % on the new platform (config ${result.version}).`
        : `${route} · ${channel} · ${cohort} was already ${number(percent_, 2)} %: nothing changed.`;
    },
  });
}

function advanceDialog(route, plan) {
  const force = h("input", { id: "advance-force", name: "force", type: "checkbox" });
  openForm({
    title: `Advance the plan of ${route}`,
    submitLabel: "Advance",
    body: [
      h("p", {}, `From step ${plan.step + 1} to step ${plan.step + 2} of ${plan.steps}: the next step's weights are written to routes.yaml and apply at once.`),
      plan.reasons?.length
        ? h("div", { class: "notice" }, h("strong", {}, "Gates closed: "), plan.reasons.join("; "))
        : h("p", { class: "good" }, "Every gate holds."),
      h("div", { class: "check" }, force, h("label", { for: "advance-force" }, "Advance even though gates are closed (recorded as forced)")),
      reasonField("advance-reason", "e.g. pilot looks good"),
    ],
    onSubmit: async (form) => {
      const result = await api("POST", `/admin/routes/${encodeURIComponent(route)}/advance`, {
        reason: form.reason.value.trim(),
        force: form.force.checked,
      });
      await refresh();
      return `${route}: the plan is at step ${Number(result.step) + 1} of ${plan.steps}.`;
    },
  });
}

// --- building ---------------------------------------------------------------------------------

function weightBar() {
  const fill = svg("rect", { class: "fill", x: 0, y: 0, width: 0, height: 4, rx: 2 });
  const bar = svg("svg", { class: "wbar", viewBox: "0 0 100 4", preserveAspectRatio: "none", "aria-hidden": "true" }, svg("rect", { class: "track", x: 0, y: 0, width: 100, height: 4, rx: 2 }), fill);
  return { bar, fill };
}

function buildRoute(name, state, root) {
  const titleId = `route-${name}`;
  const meta = h("p", { class: "route-meta muted" });
  const badge = h("span", { class: "badge" });
  const plan = h("div", { class: "plan" });
  const actions = h("div", { class: "route-actions" });
  const rate = chart({ title: "Requests/s", unit: "/s", format: formats.rate });
  const match = chart({ title: "Match rate", unit: " %", fixedTop: 1, format: formats.share });
  const latency = chart({ title: "p95 latency", unit: " ms", format: formats.ms });
  const cells = new Map();
  const head = h("tr", {}, h("th", { scope: "col", class: "corner" }, h("span", { class: "sr-only" }, "channel \\ cohort")), state.cohorts.map((c) => h("th", { scope: "col" }, c)));
  const body = h("tbody");
  for (const channel of state.channels) {
    const row = h("tr", {}, h("th", { scope: "row" }, channel));
    for (const cohort of state.cohorts) {
      const key = `cell|${name}|${channel}|${cohort}`;
      const value = h("span", { class: "w" });
      const note = h("span", { class: "note" });
      const live = h("span", { class: "live-fig" });
      const { bar, fill } = weightBar();
      const button = h(
        "button",
        { type: "button", class: "cell-btn", dataset: { key, route: name, channel, cohort }, onclick: () => weightDialog(name, channel, cohort, current) },
        h("span", { class: "sr-only" }, `${channel}, ${cohort}: `),
        value,
        note,
        bar,
        live,
      );
      const td = h("td", { class: "cell" }, button);
      cells.set(`${channel}|${cohort}`, { td, button, value, note, live, fill });
      row.append(td);
    }
    body.append(row);
  }
  const table = h("table", { class: "grid" }, h("caption", { class: "sr-only" }, `${name}: percent of customers on the new platform by channel and cohort; arrow keys move between cells`), h("thead", {}, head), body);
  table.addEventListener("keydown", (event) => {
    const move = ARROWS[event.key];
    const from = event.target.closest?.(".cell-btn");
    if (!move || !from) return;
    const channel = state.channels[state.channels.indexOf(from.dataset.channel) + move[0]];
    const cohort = state.cohorts[state.cohorts.indexOf(from.dataset.cohort) + move[1]];
    const to = cells.get(`${channel}|${cohort}`);
    if (to) {
      event.preventDefault();
      to.button.focus();
    }
  });
  const section = h(
    "section",
    { class: "route card", "aria-labelledby": titleId, dataset: { route: name } },
    h("header", { class: "route-head" }, h("div", { class: "route-title" }, h("h2", { id: titleId }, name), badge), meta, plan, actions),
    h("div", { class: "figures" }, rate.figure, match.figure, latency.figure),
    h("div", { class: "grid-wrap" }, table),
  );
  root.append(section);
  views.set(name, { section, meta, badge, plan, actions, rate, match, latency, cells });
}

let current = null;

function updateRoute(name, state, figures) {
  const view = views.get(name);
  const info = state.routes[name];
  const fig = figures?.routes?.[name];
  setText(view.meta, `${info.api} · ${info.path} · shadow ${number(info.shadow_percent)} % · dual-write ${info.dual_write ? "on" : "off"}`);
  const held = new Set(info.rolled_back.map(([ch, co]) => `${ch}|${co}`));
  const total = state.channels.length * state.cohorts.length;
  const routeScope = scopes(state).find((s) => s.source === "file" && s.route === name && !s.channel && !s.cohort);
  view.badge.className = `badge ${held.size === 0 ? "ok" : held.size === total ? "bad" : "warn"}`;
  setText(view.badge, held.size === 0 ? "live" : held.size === total ? "rolled back" : `${held.size} of ${total} cells rolled back`);
  view.section.classList.toggle("held", held.size === total);

  // actions: roll back / resume this route, advance its plan
  const planInfo = state.plans?.[name];
  const wanted = [
    routeScope
      ? ["resume-route", "Resume route…", "secondary", () => resumeDialog(routeScope, current)]
      : ["rollback-route", "Roll back route…", "danger-outline", () => rollbackDialog({ route: name }, current)],
  ];
  if (planInfo && planInfo.step < planInfo.steps - 1) wanted.unshift(["advance", "Advance plan…", "secondary", () => advanceDialog(name, current.plans[name])]);
  const signature = wanted.map((w) => w[0]).join(",");
  if (view.actions.dataset.signature !== signature) {
    const focused = view.actions.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    clear(view.actions);
    for (const [kind, label, cls, action] of wanted) {
      view.actions.append(h("button", { type: "button", class: cls, dataset: { key: `${kind}|${name}` }, onclick: action }, label));
    }
    view.actions.dataset.signature = signature;
    if (focused) view.actions.querySelector("button")?.focus();
  }
  clear(view.plan);
  if (planInfo) {
    const gates = planInfo.can_advance ? h("span", { class: "good" }, "gates hold") : h("span", { class: "warn-text" }, `gates closed: ${planInfo.reasons.join("; ")}`);
    view.plan.append(
      h("span", { class: "plan-step" }, `Plan step ${planInfo.step + 1} of ${planInfo.steps}`),
      ` · held ${duration(planInfo.held_s)}${planInfo.hold_s ? ` of ${duration(planInfo.hold_s)}` : ""} · `,
      gates,
      planInfo.auto ? " · advances by itself" : "",
    );
  }

  // cells
  const breaches = new Map();
  for (const verdict of state.guards || []) {
    if (verdict.route === name && verdict.breaches?.length) breaches.set(`${verdict.channel}|${verdict.cohort}`, verdict.breaches);
  }
  for (const channel of state.channels) {
    for (const cohort of state.cohorts) {
      const cell = view.cells.get(`${channel}|${cohort}`);
      const weight = info.weights[channel][cohort];
      const isHeld = held.has(`${channel}|${cohort}`);
      const recent = fig?.cells?.[channel]?.[cohort];
      cell.td.className = `cell ${isHeld ? "held" : weight >= 100 ? "w-full" : weight > 0 ? "w-some" : "w-none"}`;
      setText(cell.value, isHeld ? "old" : `${number(weight, 2)} %`);
      setText(cell.note, isHeld ? `rolled back · set ${number(weight, 2)} %` : weight >= 100 ? "all on new" : weight > 0 ? "on new" : "all on old");
      cell.fill.setAttribute("width", isHeld ? 0 : Math.max(0, Math.min(100, weight)));
      const warn = breaches.get(`${channel}|${cohort}`);
      const parts = [];
      if (warn) parts.push(["guard", `⚠ ${warn[0]}`]);
      else if (recent && recent.requests) {
        parts.push(["rate", `${formats.rate(recent.rate_per_s)}/s`], ["share", `${percent(recent.share_new ?? 0)} new`]);
        if (recent.match_rate !== null && recent.match_rate !== undefined) parts.push(["match", `${percent(recent.match_rate)} match`]);
      } else parts.push(["idle", "no traffic"]);
      const signature = JSON.stringify(parts);
      if (cell.live.dataset.signature !== signature) {
        cell.live.dataset.signature = signature;
        clear(cell.live).append(...parts.map(([cls, text]) => h("span", { class: cls }, text)));
      }
      cell.live.classList.toggle("warn-text", Boolean(warn));
      cell.button.dataset.weight = String(weight);
      cell.button.dataset.held = isHeld ? "1" : "0";
    }
  }

  // charts
  if (fig) {
    const s = trimmed(fig.series);
    const span = formatSpan((s.t.length - 1) * (figures.slot_s || 5));
    view.rate.update(span, [
      { values: s.old, cls: "old", label: "old" },
      { values: s.new, cls: "new", label: "new" },
    ]);
    view.match.update(span, [{ values: s.match_rate, cls: "match", label: "match" }]);
    view.latency.update(span, [
      { values: s.p95_old_ms, cls: "old", label: "old" },
      { values: s.p95_new_ms, cls: "new", label: "new" },
    ]);
    const last = s.t.length - 1;
    view.section.dataset.span = String(Math.round(s.t[last] - s.t[0]));
    view.section.dataset.rateOld = String(s.old[last] ?? 0);
    view.section.dataset.rateNew = String(s.new[last] ?? 0);
  }
}

/** The series from the first slot with any traffic of the route's (the slots before it are from
 * before this instance started, or before anyone called): a young instance's charts fill their
 * width instead of showing a flat line with a blip at the end. */
function trimmed(series) {
  const n = series.t.length;
  let first = series.t.findIndex((_, i) => series.old[i] > 0 || series.new[i] > 0 || series.match_rate[i] !== null);
  if (first < 0) first = 0;
  first = Math.max(0, Math.min(first - 1, n - 2));
  const out = {};
  for (const [name, values] of Object.entries(series)) out[name] = values.slice(first);
  return out;
}

function formatSpan(seconds) {
  return seconds >= 90 ? `last ${Math.round(seconds / 60)} min` : `last ${Math.round(seconds)} s`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 129600) return `${number(seconds / 3600, 1)} h`;
  return `${number(seconds / 86400, 1)} d`;
}

/** Draw (or update) the overview from /admin/state and /admin/figures. */
export function render(state, figures) {
  current = state;
  const root = $("#routes");
  const next = JSON.stringify([Object.keys(state.routes), state.channels, state.cohorts]);
  if (next !== shape) {
    const focused = root.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    clear(root);
    views.clear();
    for (const name of Object.keys(state.routes)) buildRoute(name, state, root);
    shape = next;
    if (focused) root.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
  }
  for (const name of Object.keys(state.routes)) updateRoute(name, state, figures);
  if (!Object.keys(state.routes).length) root.append(h("p", { class: "muted" }, "routes.yaml has no routes."));
}

