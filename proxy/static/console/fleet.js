// The fleet: every instance the MQTT broker knows, the config version and rollback flags each
// enforces, and whether they agree (GET /admin/fleet). Without a broker: this instance and
// whether it enforces its routes.yaml as it is on disk.

import { api } from "./api.js";
import { $, append, clear, dateTime, h, listTable, number } from "./dom.js";

let loading = false;
let signature = "";

function yes(flag, good = "converged", bad = "not converged") {
  return h("span", { class: `badge ${flag ? "ok" : "bad"}` }, flag ? good : bad);
}

function uptime(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${number(seconds, 0)} s`;
  if (seconds < 7200) return `${number(seconds / 60, 0)} min`;
  return `${number(seconds / 3600, 1)} h`;
}

function instanceRow(row, self) {
  const mine = row.instance === self;
  return h(
    "tr",
    { class: row.status === "online" ? "" : "offline" },
    h("th", { scope: "row", class: "mono", "data-label": "Instance" }, row.instance, mine ? h("span", { class: "tag" }, "this one") : null),
    h("td", { "data-label": "Status" }, h("span", { class: `result ${row.status === "online" ? "applied" : "refused"}` }, row.status || "–")),
    h("td", { class: "mono", "data-label": "Config" }, row.version || "–"),
    h("td", { "data-label": "Rollback seq" }, row.rollback_seq ?? "–"),
    h("td", { "data-label": "Converged" }, yes(row.converged, "yes", "no")),
    h("td", { "data-label": "Up" }, uptime(row.uptime_s)),
    h("td", { class: "reason", "data-label": "Last reload error" }, row.last_reload_error ? row.last_reload_error.split("\n")[0] : "–"),
  );
}

export async function refresh() {
  if (loading) return;
  loading = true;
  const root = $("#fleet");
  try {
    const data = await api("GET", "/admin/fleet");
    const self = data.self || {};
    const next = JSON.stringify({ ...data, self: { ...self, uptime_s: null }, instances: (data.instances || []).map((r) => ({ ...r, uptime_s: null, ts: null })) });
    if (next === signature) return;
    signature = next;
    const facts = [
      ["Mode", data.mode === "fleet" ? "fleet (MQTT)" : "single instance (no broker)"],
      ["Converged", yes(data.converged)],
    ];
    if (data.mode === "fleet") {
      facts.push(["Fleet config", data.config_version || "none published"]);
      facts.push(["Fleet rollback seq", String(data.rollback_seq ?? 0)]);
    } else {
      facts.push(["routes.yaml", self.source || "–"]);
      facts.push(["File in force", self.file_in_sync ? "yes: the file on disk is the configuration in force" : "no: the file on disk differs (see the reload error)"]);
    }
    facts.push(["Since", dateTime(self.loaded_at ? new Date(self.loaded_at * 1000).toISOString() : null)]);
    append(clear(root), [
      data.error ? h("p", { class: "notice held", role: "status" }, data.error) : null,
      h("dl", { class: "summary-facts card" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
      listTable(
        "fleet-list",
        "Instances",
        ["Instance", "Status", "Config", "Rollback seq", "Converged", "Up", "Last reload error"],
        (data.instances || []).map((row) => instanceRow(row, self.instance)),
      ),
    ]);
  } catch (problem) {
    signature = "";
    clear(root).append(h("p", { class: "error", role: "alert" }, `The fleet could not be read: ${problem.message}`));
  } finally {
    loading = false;
  }
}
