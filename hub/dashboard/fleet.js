// The fleet page: every device the session may see, with its online state, last seen, transport,
// labels and latest values; a search box and an online filter; live updates from the stream; and
// at the top the ingest rate (from the store's offsets between two polls), the store against its
// quota, and each sink's and pull consumer's lag.

import { api, allDevices } from "./api.js";
import { h, fmtValue, ago, fmtBytes, every, ready } from "./ui.js";
import { listen } from "./live.js";

/** Devices whose latest values the page loads (the rest show them once they report). */
const MAX_LATEST = 200;
const REFRESH_MS = 30000;
const STATUS_MS = 5000;

export async function fleetPage(main, signal) {
  const stats = h("section", { class: "stats", "aria-label": "Hub" });
  const search = h("input", { type: "search", placeholder: "Search id, label, transport…", "aria-label": "Search devices", id: "search" });
  const filter = h("select", { "aria-label": "Online filter", id: "online-filter" },
    h("option", { value: "all" }, "All devices"),
    h("option", { value: "online" }, "Online"),
    h("option", { value: "offline" }, "Offline"));
  const count = h("span", { class: "muted", id: "count" });
  const body = h("tbody");
  const table = h("table", { class: "fleet", id: "fleet" },
    h("thead", {}, h("tr", {}, ["", "Device", "Transport", "Last seen", "Labels", "Latest values"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  main.replaceChildren(
    h("h1", {}, "Fleet"), stats,
    h("div", { class: "toolbar" }, search, filter, count),
    table);

  const rows = new Map(); // id -> { device, latest: {metric: {value, ts}}, tr }

  function matches(row) {
    const q = search.value.trim().toLowerCase();
    const d = row.device;
    if (filter.value === "online" && !d.online) return false;
    if (filter.value === "offline" && d.online) return false;
    if (!q) return true;
    const text = [d.id, d.display_name || "", d.transport, ...Object.entries(d.labels).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
    return text.includes(q);
  }

  function renderRow(row) {
    const d = row.device;
    const values = h("div", { class: "values" },
      Object.entries(row.latest).sort(([a], [b]) => a.localeCompare(b)).map(([name, v]) =>
        h("span", { class: "value", "data-metric": name }, h("span", { class: "name" }, `${name} `), fmtValue(v.value))));
    const tr = h("tr", { "data-device": d.id },
      h("td", {}, h("span", { class: d.online ? "dot on" : "dot", title: d.online ? "online" : "offline" }), h("span", { class: "muted" }, d.online ? "online" : "offline")),
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id), d.display_name ? h("div", { class: "muted" }, d.display_name) : null),
      h("td", {}, d.transport),
      h("td", { title: d.last_seen }, ago(d.last_seen)),
      h("td", {}, Object.entries(d.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
      h("td", {}, values));
    if (row.tr) row.tr.replaceWith(tr);
    row.tr = tr;
    tr.hidden = !matches(row);
    return tr;
  }

  function renderAll() {
    const sorted = [...rows.values()].sort((a, b) => a.device.id.localeCompare(b.device.id));
    body.replaceChildren(...sorted.map((row) => { row.tr = null; return renderRow(row); }));
    const shown = sorted.filter(matches).length;
    count.textContent = `${shown} of ${sorted.length} devices`;
  }

  async function loadDevices() {
    const devices = await allDevices();
    const seen = new Set();
    for (const device of devices) {
      seen.add(device.id);
      const row = rows.get(device.id);
      if (row) row.device = device;
      else rows.set(device.id, { device, latest: {}, tr: null });
    }
    for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
    await Promise.all([...rows.values()].slice(0, MAX_LATEST).map(async (row) => {
      try {
        const latest = await api(`/api/v1/devices/${encodeURIComponent(row.device.id)}/latest`, { signal });
        for (const [name, v] of Object.entries(latest.metrics)) {
          const had = row.latest[name];
          if (!had || Date.parse(had.ts) <= Date.parse(v.ts)) row.latest[name] = { value: v.value, ts: v.ts };
        }
      } catch { /* gone meanwhile, or the banner says why */ }
    }));
    renderAll();
  }

  let last = null; // { t, offset } of the previous status poll, for the ingest rate
  async function loadStatus() {
    const status = await api("/api/v1/sync/status", { signal });
    const now = performance.now();
    const offset = status.store.next_offset;
    let rate = "—";
    if (last && now > last.t) rate = `${((offset - last.offset) * 1000 / (now - last.t)).toFixed(1)}/s`;
    last = { t: now, offset };
    const quota = status.store.max_disk ? `${fmtBytes(status.store.file_bytes)} of ${fmtBytes(status.store.max_disk)}` : fmtBytes(status.store.file_bytes);
    const stat = (label, value, id) => h("div", { class: "stat", id }, h("span", { class: "muted" }, label), h("b", {}, value));
    stats.replaceChildren(
      stat("Ingest rate", rate, "stat-rate"),
      stat("Store", quota, "stat-store"),
      stat("Readings stored", String(status.store.readings), "stat-readings"),
      ...status.sinks.map((s) => stat(`Sink ${s.follower.name} lag`, `${s.follower.lag_readings} (${s.follower.lag_seconds} s)`)),
      ...status.consumers.map((c) => stat(`Consumer ${c.name} lag`, `${c.lag_readings} (${c.lag_seconds} s)`)),
      ...(status.store.refusing ? [stat("Store", `refusing: ${status.store.refusing_reason}`)] : []));
  }

  search.addEventListener("input", renderAll);
  filter.addEventListener("change", renderAll);

  const unlisten = listen((m) => {
    if (m.type === "reading") {
      const row = rows.get(m.device);
      if (!row) { loadDevices().catch(() => {}); return; }
      for (const [name, value] of Object.entries(m.metrics)) row.latest[name] = { value, ts: m.ts };
      row.device.last_seen = m.ts;
      row.device.online = true;
      renderRow(row).classList.add("flash");
    } else if (m.type === "device") {
      const row = rows.get(m.device);
      if (!row) { loadDevices().catch(() => {}); return; }
      row.device.online = m.event !== "offline";
      renderRow(row);
    }
  });
  signal.addEventListener("abort", unlisten);

  await Promise.all([loadDevices(), loadStatus()]);
  every(REFRESH_MS, signal, loadDevices);
  every(STATUS_MS, signal, loadStatus);
  ready(main, "fleet");
}
