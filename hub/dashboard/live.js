// One WebSocket to /api/v1/stream for the whole page: it subscribes to every device the session
// may see (the hub filters by the session's device patterns), readings and events, and hands
// each message to the listeners. The browser sends the session cookie and the page's Origin with
// the upgrade, which is how the hub knows it. Reconnects with a growing pause; after a refused
// upgrade the page asks the API whether the session still holds (a browser does not show the
// status of a failed upgrade).

import { api } from "./api.js";

const listeners = new Set();
let socket = null;
let retry = 1000;
let wanted = false;
let statusFn = () => {};

/** Calls `fn(message)` for every stream message; returns a function that stops it. */
export function listen(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Calls `fn(state)` with "open", "closed" or "connecting". */
export function onStatus(fn) { statusFn = fn; }

export function start() {
  wanted = true;
  if (socket) return;
  connect();
}

export function stop() {
  wanted = false;
  if (socket) socket.close();
  socket = null;
}

function connect() {
  statusFn("connecting");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/stream`;
  const ws = new WebSocket(url);
  socket = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    retry = 1000;
    statusFn("open");
    ws.send(JSON.stringify({ op: "subscribe", id: "page", devices: ["*"], readings: true, events: true }));
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    for (const fn of listeners) fn(message);
  };
  ws.onclose = () => {
    if (socket === ws) socket = null;
    statusFn("closed");
    if (!wanted) return;
    // Refused before it opened: maybe the session ended; the API says so (and the banner shows it).
    if (!opened) api("/api/v1/session").catch(() => {});
    setTimeout(() => { if (wanted && !socket) connect(); }, retry);
    retry = Math.min(retry * 2, 30000);
  };
}
