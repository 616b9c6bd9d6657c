// The device page: its details and latest values (live); per metric over 1 h, 24 h, 7 d or a
// chosen range, a chart of a number, a state band of a boolean (both drawn from buckets sized so
// the chart gets about one per pixel, live points appended) or the recent values of a string; a
// CSV export of the range; the command form with the device's recent commands and their results
// (only with the `command` scope); and online/offline events.

import { api } from "./api.js";
import { h, fmtValue, ago, ready } from "./ui.js";
import { listen } from "./live.js";
import { Chart } from "./chart.js";
import { RecentValues } from "./recent.js";
import { commandSection } from "./commands.js";

const RANGES = [["1h", 3600], ["24h", 86400], ["7d", 7 * 86400]];
const MAX_PAGES = 4;
const MAX_EVENTS = 50;

/** Bucket width for `seconds` of history drawn `pixels` wide: whole seconds, at least 1. */
export function bucketFor(seconds, pixels) {
  return Math.max(1, Math.ceil(seconds / Math.max(1, pixels)));
}

/** How a metric is shown, from its latest value: "number", "state" (boolean) or "text". */
function kindOf(latest) {
  if (latest && typeof latest.value === "string") return "text";
  if (latest && typeof latest.value === "boolean") return "state";
  return "number";
}

export async function devicePage(main, signal, id, identity) {
  const path = `/api/v1/devices/${encodeURIComponent(id)}`;
  const [detail, latest] = await Promise.all([api(path, { signal }), api(`${path}/latest`, { signal })]);
  const values = new Map(Object.entries(latest.metrics).map(([k, v]) => [k, v]));

  const status = h("span", {});
  const lastSeen = h("span", { id: "last-seen" });
  function renderStatus() {
    status.replaceChildren(h("span", { class: detail.online ? "dot on" : "dot" }), detail.online ? "online" : "offline");
    lastSeen.textContent = `last seen ${ago(detail.last_seen)}`;
    lastSeen.title = detail.last_seen;
  }
  renderStatus();

  const latestBox = h("div", { class: "values", id: "latest" });
  function renderLatest() {
    latestBox.replaceChildren(...[...values.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, v]) =>
      h("span", { class: "value", "data-metric": name, title: v.ts }, h("span", { class: "name" }, `${name} `), fmtValue(v.value))));
  }
  renderLatest();

  // Range: a preset (relative to now, live points appended) or a chosen one (fixed).
  let range = { preset: "1h", from: 0, to: 0 };
  const span = () => range.preset ? RANGES.find(([n]) => n === range.preset)[1] : (range.to - range.from) / 1000;
  const bounds = () => range.preset ? [Date.now() - span() * 1000, Date.now()] : [range.from, range.to];
  const buttons = RANGES.map(([name]) => h("button", { type: "button", class: "ghost", "data-range": name,
    onclick: () => { range = { preset: name }; drawAll(); } }, name));
  const fromInput = h("input", { type: "datetime-local", "aria-label": "From" });
  const toInput = h("input", { type: "datetime-local", "aria-label": "To" });
  const custom = h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    const from = Date.parse(fromInput.value), to = Date.parse(toInput.value);
    if (Number.isFinite(from) && Number.isFinite(to) && to > from) { range = { preset: null, from, to }; drawAll(); }
  } }, h("label", {}, "From", fromInput), h("label", {}, "To", toInput), h("button", { type: "submit", class: "ghost" }, "Show"));
  const csv = h("a", { id: "csv", download: `${id}.csv` }, "Export CSV");

  const charts = new Map(); // metric -> Chart (numbers and booleans)
  const texts = new Map(); // metric -> RecentValues (strings)
  const chartBox = h("div", { class: "charts" });
  // Lines first, then state bands, then lists of strings.
  const ORDER = { number: 0, state: 1, text: 2 };
  const kinds = new Map(detail.metrics.map((m) => [m, kindOf(values.get(m))]));
  const metrics = [...detail.metrics].sort((a, b) => ORDER[kinds.get(a)] - ORDER[kinds.get(b)] || a.localeCompare(b));
  for (const metric of metrics) {
    const kind = kinds.get(metric);
    const plot = h("div", { class: "plot" });
    const title = kind === "text" ? `${metric} (recent values)` : metric;
    chartBox.append(h("section", { class: `chart card chart-${kind}`, "data-metric": metric }, h("h3", {}, title), plot));
    if (kind === "text") texts.set(metric, new RecentValues(plot, path, metric));
    else charts.set(metric, new Chart(plot, metric, kind));
  }
  signal.addEventListener("abort", () => charts.forEach((c) => c.destroy()));

  async function drawChart(metric, chart) {
    const [from, to] = bounds();
    const bucket = bucketFor((to - from) / 1000, chart.width());
    const points = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page++) {
      // A boolean's avg is the share of its readings that were true.
      const q = new URLSearchParams({ metric, from: String(Math.floor(from)), to: String(Math.ceil(to)), bucket: `${bucket}s`, agg: "avg", order: "oldest", limit: "1000" });
      if (cursor) q.set("cursor", cursor);
      const answer = await api(`${path}/readings?${q}`, { signal });
      for (const b of answer.buckets) if (b.avg !== null && b.avg !== undefined) points.push([Date.parse(b.start) / 1000, b.avg]);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    chart.set(points, [from / 1000, to / 1000]);
  }

  async function drawAll() {
    for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.range === range.preset));
    const [from, to] = bounds();
    csv.href = `${path}/readings?${new URLSearchParams({ format: "csv", from: String(Math.floor(from)), to: String(Math.ceil(to)) })}`;
    await Promise.all([
      ...[...charts.entries()].map(([m, c]) => drawChart(m, c)),
      ...[...texts.values()].map((t) => t.load(range.preset ? null : to, signal)),
      commandsLoaded,
    ]);
    ready(main, "device");
  }

  // Online/offline events, newest first.
  const events = h("ul", { id: "events" });
  function addEvent(text) {
    events.prepend(h("li", {}, text));
    while (events.children.length > MAX_EVENTS) events.lastChild.remove();
  }
  addEvent(`${detail.online ? "online" : "offline"}, last seen ${detail.last_seen}`);

  const mayCommand = identity.scopes.includes("command") || identity.scopes.includes("admin");
  const commandsBox = mayCommand ? commandSection(path) : null;
  const commandsLoaded = commandsBox ? commandsBox.load(signal) : null;

  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← Fleet")),
    h("h1", {}, id, " ", h("small", { class: "muted" }, detail.display_name || "")),
    h("p", { class: "toolbar" }, status, lastSeen, h("span", { class: "muted" }, `${detail.transport} · ${detail.wire}`),
      detail.firmware ? h("span", { class: "muted" }, `firmware ${detail.firmware}`) : null,
      h("span", { class: "muted" }, `${detail.counters.readings} readings`),
      Object.entries(detail.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
    h("section", { class: "card" }, h("h2", {}, "Latest values"), latestBox),
    h("div", { class: "toolbar", role: "group", "aria-label": "Chart range" }, buttons, custom, csv),
    detail.metrics.length ? chartBox : h("p", { class: "muted" }, "No metrics yet."),
    h("div", { class: "grid2" },
      commandsBox ? commandsBox.section : null,
      h("section", { class: "card" }, h("h2", {}, "Events"), events)));

  const unlisten = listen((m) => {
    if (m.device !== id) return;
    if (m.type === "reading") {
      for (const [name, value] of Object.entries(m.metrics)) {
        values.set(name, { value, ts: m.ts });
        if (!range.preset) continue;
        const chart = charts.get(name);
        const v = typeof value === "boolean" ? Number(value) : value;
        if (chart && typeof v === "number") chart.append(Date.parse(m.ts) / 1000, v);
        const text = texts.get(name);
        if (text) text.prepend(m.ts, value);
      }
      detail.last_seen = m.ts;
      detail.online = true;
      renderLatest();
      renderStatus();
    } else if (m.type === "device") {
      detail.online = m.event !== "offline";
      renderStatus();
      addEvent(`${m.event}${m.reason ? ` (${m.reason})` : ""} at ${m.ts}`);
    } else if (m.type === "command" && commandsBox) {
      commandsBox.update(m.id).catch(() => {});
    }
  });
  signal.addEventListener("abort", unlisten);
  await drawAll();
}
