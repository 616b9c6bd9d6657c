// The hub's API as the page uses it. Every request goes to this origin and carries the session
// cookie (HttpOnly: this script never sees it). Failures become an ApiError whose `kind` the
// page shows: "auth" (signed out or expired), "network" (the hub cannot be reached), "http".

export class ApiError extends Error {
  constructor(kind, status, detail) {
    super(detail || kind);
    this.kind = kind;
    this.status = status;
  }
}

const listeners = new Set();
/** Calls `fn(error)` whenever a request fails for want of a session or of the hub. */
export function onTrouble(fn) { listeners.add(fn); }
/** Calls `fn(null)` on success after trouble, so the page can clear its message. */
let troubled = false;

function report(error) {
  troubled = error !== null;
  for (const fn of listeners) fn(error);
}

// Bodies of GET answers that carried an ETag, by path, so a repeated poll asks with
// If-None-Match and a 304 costs no body. The page does this itself rather than leave it to the
// browser's cache, which (among other things) stores nothing from a host whose certificate it
// does not trust. Bounded: the oldest entry goes first.
const MAX_CACHED = 500;
const cached = new Map(); // path -> { etag, json }

/** GET or send JSON; returns the parsed body (or null for 204). */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, credentials: "same-origin", signal, headers: {} };
  const hit = method === "GET" ? cached.get(path) : undefined;
  if (hit) init.headers["if-none-match"] = hit.etag;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    const error = new ApiError("network", 0, "the hub cannot be reached");
    report(error);
    throw error;
  }
  if (response.status === 401) {
    const error = new ApiError("auth", 401, "signed out");
    report(error);
    throw error;
  }
  if (troubled) report(null);
  if (response.status === 204) return null;
  if (response.status === 304 && hit) return hit.json;
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    throw new ApiError("http", response.status, (json && (json.detail || json.title)) || response.statusText);
  }
  const etag = response.headers.get("etag");
  if (method === "GET" && etag && json !== null) {
    cached.delete(path);
    cached.set(path, { etag, json });
    if (cached.size > MAX_CACHED) cached.delete(cached.keys().next().value);
  }
  return json;
}

/** Signs in with a token: the hub answers with the session cookie; the token is not kept. */
export async function signIn(token) {
  const response = await fetch("/api/v1/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: token === null ? "" : JSON.stringify({ token }),
  });
  if (response.status === 204) return;
  let detail = response.statusText;
  try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
  throw new ApiError(response.status === 401 ? "auth" : "http", response.status, detail);
}

/** Ends the session on the hub. */
export async function signOut() {
  await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" });
}

/** Every page of devices the session may see (at most `max`). */
export async function allDevices(max = 5000) {
  const devices = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ limit: "500" });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/api/v1/devices?${q}`);
    devices.push(...page.devices);
    cursor = page.next_cursor;
  } while (cursor && devices.length < max);
  return devices;
}

export const enc = encodeURIComponent;
