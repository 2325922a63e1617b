// The console's entry point: sign-in, the four views behind the tabs (#overview, #diffs,
// #audit, #fleet), and the polling that keeps them live. Only the admin API is ever called.

import { api, ApiError, session, whenUnauthorized } from "./api.js";
import * as audit from "./audit.js";
import { closeDialog, dismissToast } from "./dialog.js";
import * as diffs from "./diffs.js";
import { $, clear, clock, h, setText } from "./dom.js";
import * as fleet from "./fleet.js";
import * as overview from "./overview.js";

const STATE_EVERY_MS = 2000;
const VIEWS = ["overview", "diffs", "audit", "fleet"];

let latest = { state: null, figures: null };
let timer = null;
let running = false;
let failures = 0;
let generation = 0;

// --- sign-in -----------------------------------------------------------------------------------

function showLogin(message) {
  stop();
  closeDialog();
  $("#app").hidden = true;
  $("#login").hidden = false;
  const error = $("#login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("#login-name").value = session.operator || $("#login-name").value;
  $("#login-token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("#login-token").value.trim();
  const operator = $("#login-name").value.trim();
  const error = $("#login-error");
  if (!operator) {
    error.hidden = false;
    error.textContent = "Your name is required: the audit list records who made each change.";
    $("#login-name").focus();
    return;
  }
  try {
    await api("GET", "/admin/state", null, { token, quiet401: true });
  } catch (problem) {
    error.hidden = false;
    error.textContent =
      problem instanceof ApiError && problem.status === 401 ? "That token was refused." : problem.message;
    $("#login-token").select();
    return;
  }
  session.start(token, operator);
  $("#login-token").value = "";
  start();
}

function signOut() {
  session.end();
  latest = { state: null, figures: null };
  showLogin("");
}

// --- the views ---------------------------------------------------------------------------------

function currentView() {
  const name = location.hash.replace(/^#/, "").split(/[/?]/)[0];
  return VIEWS.includes(name) ? name : "overview";
}

function showView(focusMain = false) {
  const name = currentView();
  for (const view of VIEWS) $(`#view-${view}`).hidden = view !== name;
  for (const tab of document.querySelectorAll(".tabs a")) {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · cutover console`;
  if (focusMain) $("#main").focus({ preventScroll: true });
  refreshView(name);
}

function refreshView(name = currentView()) {
  if (!latest.state) return;
  if (name === "diffs") diffs.show(latest.state, location.hash);
  else if (name === "audit") audit.refresh();
  else if (name === "fleet") fleet.refresh();
}

// --- polling -----------------------------------------------------------------------------------

async function poll(mine) {
  const [state, figures] = await Promise.all([
    api("GET", "/admin/state"),
    api("GET", "/admin/figures?window=300").catch(() => null),
  ]);
  if (mine !== generation) return; // a newer refresh started meanwhile: its answer wins
  latest = { state, figures };
  failures = 0;
  drawShared(state);
  overview.render(state, figures);
  setText($("#live-text"), `live · ${clock(Date.now() / 1000)}`);
  $("#live").className = "live ok";
}

/** Fetch now (after an action, so its effect shows at once), then on the usual beat. */
export async function refreshNow() {
  const mine = ++generation; // an action's refresh overtakes the beat's: one loop, never two
  clearTimeout(timer);
  try {
    await poll(mine);
  } catch (problem) {
    failures += 1;
    if (problem instanceof ApiError && problem.status === 401) return;
    $("#live").className = "live bad";
    setText($("#live-text"), `no answer (${problem.message}) · retrying`);
  }
  const name = currentView();
  if (name === "audit") audit.refresh();
  else if (name === "fleet") fleet.refresh();
  else if (name === "diffs") diffs.tick(latest.state);
  if (running && mine === generation) timer = setTimeout(refreshNow, document.hidden ? STATE_EVERY_MS * 5 : STATE_EVERY_MS * Math.min(1 + failures, 5));
}

function start() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  setText($("#who-name"), session.operator);
  running = true;
  refreshNow().then(() => showView(false));
  $("#main").focus({ preventScroll: true });
}

function stop() {
  running = false;
  clearTimeout(timer);
}

// --- what every view shares: facts, banners, the brake -------------------------------------------

function drawShared(state) {
  setText($("#fact-migration"), state.migration);
  setText($("#fact-version"), state.version);
  setText($("#fact-instance"), state.instance);
  const all = overview.scopes(state);
  const everything = all.find(overview.isGlobal);
  const brake = $("#brake");
  brake.disabled = Boolean(everything);
  setText(brake, everything ? "Everything is on old" : "Roll back everything");
  brake.classList.toggle("engaged", Boolean(everything));

  const banners = $("#banners");
  const wanted = [];
  if (everything) {
    wanted.push({
      key: "global",
      tone: "bad",
      text: [
        h("strong", {}, "Everything is rolled back to the old platform"),
        ` since ${clock(everything.at)}${everything.by ? ` by ${everything.by}` : ""}${everything.reason ? `: ${everything.reason}` : ""}.`,
      ],
      action: everything.source === "file" ? ["Resume…", () => overview.resumeDialog(everything, latest.state)] : null,
      note: everything.source === "fleet" ? "Set by the fleet: lift it with cutover resume --fleet." : null,
    });
  } else if (all.length) {
    wanted.push({
      key: "partial",
      tone: "warn",
      text: [h("strong", {}, `${all.length} rollback${all.length > 1 ? "s" : ""} in force: `), all.map((s) => `${s.route || "*"}/${s.channel || "*"}/${s.cohort || "*"}${s.reason ? ` (${s.reason})` : ""}`).join(", ")],
      action: null,
    });
  }
  if (state.last_reload_error) {
    wanted.push({
      key: "reload",
      tone: "bad",
      text: [h("strong", {}, "routes.yaml was refused; the running table stays. "), state.last_reload_error.split("\n")[0]],
      action: null,
    });
  }
  const signature = JSON.stringify(wanted.map((b) => [b.key, b.text.map((t) => (t instanceof Node ? t.textContent : String(t)))]));
  if (banners.dataset.signature === signature) return;
  const focused = banners.contains(document.activeElement);
  banners.dataset.signature = signature;
  clear(banners);
  for (const banner of wanted) {
    banners.append(
      h(
        "div",
        { class: `banner ${banner.tone}`, role: "region", "aria-label": "Rollback state" },
        h("p", {}, banner.text, banner.note ? h("span", { class: "muted" }, ` ${banner.note}`) : null),
        banner.action ? h("button", { type: "button", class: "secondary", dataset: { key: `banner|${banner.key}` }, onclick: banner.action[1] }, banner.action[0]) : null,
      ),
    );
  }
  if (focused) banners.querySelector("button")?.focus();
}

// --- wiring ------------------------------------------------------------------------------------

function boot() {
  whenUnauthorized(() => {
    session.end();
    showLogin("The admin API refused the token (it may have changed). Sign in again.");
  });
  overview.onChange(refreshNow);
  $("#login-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#brake").addEventListener("click", () => latest.state && overview.rollbackDialog({}, latest.state));
  window.addEventListener("hashchange", () => {
    dismissToast();
    showView(true);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && running) refreshNow();
  });
  diffs.setup(() => latest.state);
  if (session.active) start();
  else showLogin("");
}

boot();
