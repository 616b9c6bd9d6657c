// The sync page: each upstream sink (lag, state, last error, parked readings, deliveries) and
// each pull consumer (cursor, lag), refreshed every few seconds.

import { api } from "./api.js";
import { h, ago, fmtBytes, every, ready } from "./ui.js";

const REFRESH_MS = 5000;

export async function syncPage(main, signal) {
  const sinks = h("tbody");
  const consumers = h("tbody");
  const store = h("p", { class: "muted", id: "sync-store" });
  const head = (...names) => h("thead", {}, h("tr", {}, names.map((n) => h("th", { scope: "col" }, n))));
  main.replaceChildren(
    h("h1", {}, "Sync"), store,
    h("section", { class: "card" }, h("h2", {}, "Sinks"),
      h("table", { id: "sinks" }, head("Sink", "Kind", "State", "Lag", "Delivered", "Parked", "Last delivery", "Last error"), sinks)),
    h("section", { class: "card" }, h("h2", {}, "Pull consumers"),
      h("table", { id: "consumers" }, head("Consumer", "Cursor", "Lag", "Updated"), consumers)));

  async function load() {
    const s = await api("/api/v1/sync/status", { signal });
    store.textContent = `Store: ${s.store.readings} readings, offsets ${s.store.oldest_offset ?? "—"} to ${s.store.next_offset}, ${fmtBytes(s.store.file_bytes)}${s.store.max_disk ? ` of ${fmtBytes(s.store.max_disk)}` : ""}${s.store.refusing ? `, refusing new data (${s.store.refusing_reason})` : ""}.`;
    const empty = (n, text) => h("tr", {}, h("td", { colSpan: n, class: "muted" }, text));
    sinks.replaceChildren(...(s.sinks.length ? s.sinks.map((k) => h("tr", {},
      h("td", {}, k.follower.name), h("td", {}, k.kind),
      h("td", {}, k.error ? "failing" : (k.follower.lag_readings ? "catching up" : "up to date")),
      h("td", {}, `${k.follower.lag_readings} (${k.follower.lag_seconds} s)`),
      h("td", {}, `${k.delivered} in ${k.batches} batches`),
      h("td", {}, String(k.parked)),
      h("td", {}, k.last_delivery ? ago(k.last_delivery) : "never"),
      h("td", {}, k.error || "—"))) : [empty(8, "No sinks configured.")]));
    consumers.replaceChildren(...(s.consumers.length ? s.consumers.map((c) => h("tr", {},
      h("td", {}, c.name), h("td", {}, c.cursor ?? "—"),
      h("td", {}, `${c.lag_readings} (${c.lag_seconds} s)`), h("td", {}, ago(c.updated)))) : [empty(4, "No pull consumers registered.")]));
    ready(main, "sync");
  }
  await load();
  every(REFRESH_MS, signal, load);
}
