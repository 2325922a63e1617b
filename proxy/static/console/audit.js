// The audit list: who changed what a customer's request does, when and why (GET /admin/changes).
// Admin API changes come with their reason; guards, plans, the fleet and hand edits of
// routes.yaml appear too, recorded by the instance itself.

import { api } from "./api.js";
import { $, clear, dateTime, h, listTable, number } from "./dom.js";

let signature = "";
let loading = false;

function detailText(entry) {
  const detail = entry.detail || {};
  const parts = [];
  if (entry.action === "weight" && detail.percent !== undefined) {
    const before = Object.values(detail.before || {});
    const was = before.length && before.every((v) => v === before[0]) ? `${number(before[0], 2)} % → ` : "";
    parts.push(`${was}${number(detail.percent, 2)} %`);
  }
  if (detail.version_before && detail.version_after && detail.version_before !== detail.version_after) {
    parts.push(`config ${detail.version_before} → ${detail.version_after}`);
  } else if (detail.version) {
    parts.push(`config ${detail.version}`);
  }
  if (detail.step !== undefined && detail.step !== null) parts.push(`step ${Number(detail.step) + 1}${detail.forced ? " (forced)" : ""}`);
  if (detail.errors?.length) parts.push(detail.errors.slice(0, 2).join("; "));
  if (detail.reasons?.length) parts.push(detail.reasons.join("; "));
  if (detail.through) parts.push(`through ${detail.through}`);
  return parts.join(" · ");
}

export async function refresh() {
  if (loading) return;
  loading = true;
  const root = $("#audit");
  try {
    const data = await api("GET", "/admin/changes?limit=200");
    const entries = data.entries || [];
    const next = JSON.stringify([entries.length, entries[0]]);
    if (next === signature) return;
    signature = next;
    clear(root);
    if (!entries.length) {
      root.append(h("p", { class: "empty card" }, "No changes yet. Changes made here, with the CLI, by a guard or a plan, or by editing routes.yaml will be listed."));
      return;
    }
    root.append(
      listTable(
        "audit-list",
        "Changes, newest first",
        ["When", "Who", "Action", "Scope", "Reason", "Result", "Detail"],
        entries.map((entry) =>
          h(
            "tr",
            { class: entry.result === "refused" ? "refused" : "" },
            h("td", { class: "nowrap", "data-label": "When" }, h("time", { datetime: entry.at }, dateTime(entry.at))),
            h("td", { class: "who", "data-label": "Who" }, entry.by || "–"),
            h("td", { "data-label": "Action" }, h("span", { class: `tag ${String(entry.action).replace(/\W+/g, "-")}` }, entry.action || "–")),
            h("td", { class: "mono", "data-label": "Scope" }, !entry.scope || entry.scope === "*/*/*" ? "everything" : entry.scope),
            h("td", { class: "reason", "data-label": "Reason" }, entry.reason || "–"),
            h("td", { "data-label": "Result" }, h("span", { class: `result ${entry.result}` }, entry.result || "–")),
            h("td", { class: "muted", "data-label": "Detail" }, detailText(entry)),
          ),
        ),
      ),
    );
  } catch (problem) {
    clear(root).append(h("p", { class: "error", role: "alert" }, `The audit list could not be read: ${problem.message}`));
    signature = "";
  } finally {
    loading = false;
  }
}
