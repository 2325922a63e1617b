// Confirmations: one modal <dialog> for every change, always with a reason. Escape or Cancel
// closes it without doing anything; Tab stays inside it; focus goes back to what opened it
// (found again by its data-key when a refresh rebuilt it meanwhile).

import { $, clear, h } from "./dom.js";

const FOCUSABLE = "button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), a[href]";

let opener = null;
let openerKey = null;
let busy = false;

function dialog() {
  return $("#dialog");
}

function trap(event) {
  if (event.key !== "Tab") return;
  const items = [...dialog().querySelectorAll(FOCUSABLE)].filter((el) => el.offsetParent !== null);
  if (!items.length) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (event.shiftKey && document.activeElement === first) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
}

function usable(element) {
  return element && element.isConnected && !element.disabled && element.offsetParent !== null;
}

/** Back to the opener; when the action replaced it ("Roll back route" became "Resume route"),
 * to its successor for the same scope; else to the start of the view. */
function restoreFocus() {
  let target = opener;
  if (!usable(target) && openerKey) {
    target = document.querySelector(`[data-key="${CSS.escape(openerKey)}"]`);
    if (!usable(target)) {
      const scope = openerKey.slice(openerKey.indexOf("|"));
      target = [...document.querySelectorAll("[data-key]")].find((el) => el.dataset.key.endsWith(scope) && usable(el));
    }
  }
  opener = null;
  openerKey = null;
  (usable(target) ? target : $("#main")).focus();
}

export function closeDialog() {
  const element = dialog();
  if (element.open) element.close();
}

export function isOpen() {
  return dialog().open;
}

function setup() {
  const element = dialog();
  if (element.dataset.ready) return element;
  element.dataset.ready = "1";
  element.addEventListener("keydown", trap);
  element.addEventListener("cancel", (event) => {
    if (busy) event.preventDefault(); // Escape while a change is on its way: let it land
  });
  element.addEventListener("close", () => {
    clear(element);
    restoreFocus();
  });
  return element;
}

/** A reason field, the one every change must have. */
export function reasonField(id, placeholder) {
  return [
    h("label", { for: id }, "Reason ", h("span", { class: "muted" }, "(required, goes to the audit list)")),
    h("textarea", { id, name: "reason", rows: 2, required: true, maxlength: 500, placeholder, autocomplete: "off" }),
  ];
}

/**
 * Open the dialog as a form. `body` is a list of nodes (fields included); `onSubmit(form)` makes
 * the change and resolves with the sentence to announce, or throws (the error stays in the
 * dialog). `tone: "danger"` paints the confirm button red.
 */
export function openForm({ title, body, submitLabel, tone = "primary", onSubmit, extra = [], initialFocus }) {
  const element = setup();
  if (!element.open) {
    opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    openerKey = opener ? opener.dataset.key || null : null;
  }
  busy = false;
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: tone }, submitLabel);
  const cancel = h("button", { type: "button", class: "secondary", onclick: () => closeDialog() }, "Cancel");
  const form = h(
    "form",
    { class: "dialog-form", novalidate: true },
    h("h2", { id: "dialog-title" }, title),
    body,
    error,
    h("div", { class: "dialog-actions" }, extra.length ? h("div", { class: "extra" }, extra) : null, cancel, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    const missing = [...form.querySelectorAll("[required]")].find((input) => !String(input.value).trim());
    if (missing) {
      error.hidden = false;
      error.textContent = `${labelOf(missing)} is required.`;
      missing.setAttribute("aria-invalid", "true");
      missing.focus();
      return;
    }
    const invalid = [...form.querySelectorAll("input")].find((input) => !input.checkValidity());
    if (invalid) {
      error.hidden = false;
      error.textContent = `${labelOf(invalid)}: ${invalid.validationMessage}`;
      invalid.focus();
      return;
    }
    busy = true;
    submit.disabled = true;
    const label = submit.textContent;
    submit.textContent = "Working…";
    try {
      const message = await onSubmit(form);
      busy = false;
      closeDialog();
      if (message) announce(message);
    } catch (problem) {
      busy = false;
      submit.disabled = false;
      submit.textContent = label;
      error.hidden = false;
      error.textContent = problem.message || String(problem);
    }
  });
  clear(element).append(form);
  if (!element.open) element.showModal();
  const first = initialFocus ? form.querySelector(initialFocus) : form.querySelector("input, textarea, select");
  (first || submit).focus();
  return form;
}

function labelOf(input) {
  const label = input.id ? document.querySelector(`label[for="${CSS.escape(input.id)}"]`) : null;
  const text = label ? label.firstChild.textContent : input.name;
  return text.trim();
}

let toastTimer = null;

/** Say what an action did, to everyone: a toast that screen readers read too (aria-live). */
export function announce(message, tone = "ok") {
  const toast = $("#toast");
  toast.className = `toast show ${tone}`;
  toast.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    toast.className = "toast";
  }, 8000);
}

/** The toast is about the last action; a new view starts without it (the audit list keeps it). */
export function dismissToast() {
  clearTimeout(toastTimer);
  $("#toast").className = "toast";
}
