// The device page: its details and latest values (live), a chart per numeric metric over 1 h,
// 24 h, 7 d or a chosen range, drawn from buckets sized so the chart gets about one per pixel,
// with live points appended; a CSV export of the range; the command form with the commands sent
// from here and their results (only with the `command` scope); and online/offline events.

import { api } from "./api.js";
import { h, fmtValue, ago, ready } from "./ui.js";
import { listen } from "./live.js";
import { Chart } from "./chart.js";

const RANGES = [["1h", 3600], ["24h", 86400], ["7d", 7 * 86400]];
const MAX_PAGES = 4;
const MAX_EVENTS = 50;
const MAX_COMMANDS = 20;

/** Bucket width for `seconds` of history drawn `pixels` wide: whole seconds, at least 1. */
export function bucketFor(seconds, pixels) {
  return Math.max(1, Math.ceil(seconds / Math.max(1, pixels)));
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

  const numeric = detail.metrics.filter((m) => { const v = values.get(m); return !v || typeof v.value === "number" || typeof v.value === "boolean"; });
  const charts = new Map();
  const chartBox = h("div", { class: "charts" });
  for (const metric of numeric) {
    const plot = h("div", { class: "plot" });
    chartBox.append(h("section", { class: "chart card", "data-metric": metric }, h("h3", {}, metric), plot));
    charts.set(metric, new Chart(plot, metric));
  }
  signal.addEventListener("abort", () => charts.forEach((c) => c.destroy()));

  async function drawChart(metric, chart) {
    const [from, to] = bounds();
    const bucket = bucketFor((to - from) / 1000, chart.width());
    const points = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page++) {
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
    await Promise.all([...charts.entries()].map(([m, c]) => drawChart(m, c)));
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

  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← Fleet")),
    h("h1", {}, id, " ", h("small", { class: "muted" }, detail.display_name || "")),
    h("p", { class: "toolbar" }, status, lastSeen, h("span", { class: "muted" }, `${detail.transport} · ${detail.wire}`),
      detail.firmware ? h("span", { class: "muted" }, `firmware ${detail.firmware}`) : null,
      h("span", { class: "muted" }, `${detail.counters.readings} readings`),
      Object.entries(detail.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
    h("section", { class: "card" }, h("h2", {}, "Latest values"), latestBox),
    h("div", { class: "toolbar", role: "group", "aria-label": "Chart range" }, buttons, custom, csv),
    numeric.length ? chartBox : h("p", { class: "muted" }, "No numeric metrics to chart."),
    h("div", { class: "grid2" },
      commandsBox ? commandsBox.section : null,
      h("section", { class: "card" }, h("h2", {}, "Events"), events)));

  const unlisten = listen((m) => {
    if (m.device !== id) return;
    if (m.type === "reading") {
      for (const [name, value] of Object.entries(m.metrics)) {
        values.set(name, { value, ts: m.ts });
        const chart = charts.get(name);
        const v = typeof value === "boolean" ? Number(value) : value;
        if (chart && range.preset && typeof v === "number") chart.append(Date.parse(m.ts) / 1000, v);
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

/** The command form and the commands sent from it, with their states and results. */
function commandSection(path) {
  const list = h("ul", { id: "commands" });
  const entries = new Map(); // id -> li
  const name = h("input", { id: "command-name", required: true, placeholder: "echo", pattern: "[A-Za-z0-9._-]{1,64}", "aria-label": "Command name" });
  const args = h("textarea", { id: "command-args", rows: 2, placeholder: '{"level": 3}', "aria-label": "Arguments (JSON)" });
  const error = h("p", { class: "muted", role: "status" });

  function render(cmd) {
    const li = h("li", { "data-command": String(cmd.id) },
      h("b", {}, cmd.name), " ", h("span", { class: `state state-${cmd.state}` }, cmd.state), " ",
      h("span", { class: "muted" }, cmd.created),
      cmd.result !== undefined && cmd.result !== null ? h("pre", { class: "result" }, JSON.stringify(cmd.result)) : null,
      cmd.error ? h("pre", { class: "result" }, cmd.error) : null);
    const old = entries.get(cmd.id);
    if (old) old.replaceWith(li); else list.prepend(li);
    entries.set(cmd.id, li);
    while (list.children.length > MAX_COMMANDS) { entries.delete(Number(list.lastChild.dataset.command)); list.lastChild.remove(); }
  }

  async function update(cid) {
    if (!entries.has(cid)) return;
    render(await api(`${path}/commands/${cid}`));
  }

  const form = h("form", { class: "inline", id: "command-form", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    let parsed;
    try { parsed = args.value.trim() ? JSON.parse(args.value) : undefined; } catch { error.textContent = "Arguments must be a JSON object."; return; }
    try {
      const cmd = await api(`${path}/commands?wait=10s`, { method: "POST", body: { name: name.value.trim(), args: parsed } });
      render(cmd);
    } catch (err) { error.textContent = `Not sent: ${err.message}`; }
  } }, h("label", {}, "Command", name), h("label", {}, "Arguments (JSON)", args), h("button", { type: "submit" }, "Send"));
  return { section: h("section", { class: "card", id: "command-card" }, h("h2", {}, "Commands"), form, error, list), update };
}
