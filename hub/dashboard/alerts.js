// The alerts page: the alerts firing or pending now, and the history of their transitions
// (firing, resolved), newest first, a page at a time. Both come from GET /api/v1/alerts, which
// shows only the devices the session may see; the stream's alert events (which the hub filters
// the same way) refresh the page at once, and a slow poll picks up pending alerts, which the
// stream does not announce.

import { api } from "./api.js";
import { h, ago, fmtValue, fmtTime, every, ready } from "./ui.js";
import { listen } from "./live.js";

const PAGE = 25;
const REFRESH_MS = 10000;

const deviceLink = (id) => h("a", { href: `#/device/${encodeURIComponent(id)}` }, id);
const valueCell = (v) => h("td", {}, v === null || v === undefined ? "—" : fmtValue(v));

export async function alertsPage(main, signal) {
  const active = h("tbody");
  const history = h("tbody");
  const filter = h("select", { id: "history-filter", "aria-label": "Transitions shown" },
    h("option", { value: "" }, "All transitions"),
    h("option", { value: "firing" }, "Firing"),
    h("option", { value: "resolved" }, "Resolved"));
  const newer = h("button", { type: "button", class: "ghost", id: "history-newer" }, "← Newer");
  const older = h("button", { type: "button", class: "ghost", id: "history-older" }, "Older →");
  const where = h("span", { class: "muted", id: "history-page" });
  const head = (...names) => h("thead", {}, h("tr", {}, names.map((n) => h("th", { scope: "col" }, n))));
  main.replaceChildren(
    h("h1", {}, "Alerts"),
    h("section", { class: "card" }, h("h2", {}, "Now"),
      h("table", { id: "alerts-now" }, head("State", "Rule", "Device", "Since", "Value"), active)),
    h("section", { class: "card" }, h("h2", {}, "History"),
      h("div", { class: "toolbar" }, filter, newer, older, where),
      h("table", { id: "alerts-history" }, head("#", "When", "State", "Rule", "Device", "Value"), history)));

  const empty = (n, text) => h("tr", {}, h("td", { colSpan: n, class: "muted" }, text));
  const seen = new Set(); // history numbers shown before, so that new ones flash
  let pages = [null]; // cursors of the pages walked through; the last is the page shown
  let next = null;

  async function loadActive() {
    const answer = await api("/api/v1/alerts?limit=1", { signal });
    const now = answer.alerts.filter((a) => a.state === "firing" || a.state === "pending")
      .sort((a, b) => (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1) || a.rule.localeCompare(b.rule) || a.device.localeCompare(b.device));
    active.replaceChildren(...(now.length ? now.map((a) => h("tr", { "data-alert": `${a.rule}/${a.device}`, "data-state": a.state },
      h("td", {}, h("span", { class: `state state-${a.state}` }, a.state)),
      h("td", {}, a.rule), h("td", {}, deviceLink(a.device)),
      h("td", { title: a.since }, ago(a.since)), valueCell(a.value))) : [empty(5, "No alert is firing or pending.")]));
  }

  async function loadHistory() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    const cursor = pages[pages.length - 1];
    if (cursor !== null) q.set("cursor", String(cursor));
    if (filter.value) q.set("state", filter.value);
    const answer = await api(`/api/v1/alerts?${q}`, { signal });
    next = answer.next_cursor;
    history.replaceChildren(...(answer.history.length ? answer.history.map((e) => {
      const tr = h("tr", { "data-number": String(e.number), "data-alert": `${e.rule}/${e.device}`, "data-state": e.state },
        h("td", {}, String(e.number)), h("td", { title: e.ts }, fmtTime(e.ts)),
        h("td", {}, h("span", { class: `state state-${e.state}` }, e.state)),
        h("td", {}, e.rule), h("td", {}, deviceLink(e.device)), valueCell(e.value));
      if (seen.size && !seen.has(e.number)) tr.classList.add("flash");
      return tr;
    }) : [empty(6, "No transitions.")]));
    for (const e of answer.history) seen.add(e.number);
    newer.disabled = pages.length === 1;
    older.disabled = next === null;
    where.textContent = pages.length === 1 ? "newest first" : `page ${pages.length}`;
  }

  // One refresh at a time; events that come during one ask for one more after it.
  let running = null;
  let again = false;
  async function refresh() {
    if (running) { again = true; return running; }
    running = (async () => {
      do {
        again = false;
        await Promise.all([loadActive(), pages.length === 1 ? loadHistory() : null]);
      } while (again && !signal.aborted);
    })().finally(() => { running = null; });
    return running;
  }

  filter.addEventListener("change", () => { pages = [null]; loadHistory().catch(() => {}); });
  older.addEventListener("click", () => { if (next !== null) { pages.push(next); loadHistory().catch(() => {}); } });
  newer.addEventListener("click", () => { if (pages.length > 1) { pages.pop(); loadHistory().catch(() => {}); } });
  // The devices whose alert events this page got from the stream, said on the page for tests.
  const announced = new Set();
  main.dataset.alertDevices = "";
  const unlisten = listen((m) => {
    if (m.type !== "alert") return;
    announced.add(m.device);
    main.dataset.alertDevices = [...announced].sort().join(" ");
    refresh().catch(() => {});
  });
  signal.addEventListener("abort", () => { unlisten(); delete main.dataset.alertDevices; });

  await Promise.all([loadActive(), loadHistory()]);
  every(REFRESH_MS, signal, refresh);
  ready(main, "alerts");
}
