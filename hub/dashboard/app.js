// The dashboard's entry: signs in (a token pasted once, or the client certificate), routes by
// the URL's fragment (#/, #/device/<id>, #/alerts, #/sync), keeps one live stream, and says plainly when
// the hub cannot be reached or the session has ended, instead of leaving a blank page.

import { api, signIn, signOut, onTrouble } from "./api.js";
import { h } from "./ui.js";
import * as live from "./live.js";
import { fleetPage } from "./fleet.js";
import { devicePage } from "./device.js";
import { syncPage } from "./sync.js";
import { alertsPage } from "./alerts.js";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let identity = null;
let current = null; // AbortController of the page shown

function say(text, bad = false) {
  banner.textContent = text;
  banner.className = bad ? "bad" : "";
  banner.hidden = !text;
}

onTrouble((error) => {
  if (!error) { say(""); return; }
  if (error.kind === "network") say("The hub cannot be reached. Retrying…", true);
  if (error.kind === "auth" && identity) {
    identity = null;
    live.stop();
    showSignIn("Your session has ended (signed out, expired, or its token was revoked). Sign in again.");
  }
});

function showSignIn(message) {
  if (current) current.abort();
  nav.hidden = true;
  const token = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "hub_…", "aria-label": "Token" });
  const error = h("p", { role: "alert", id: "signin-error", class: "muted" });
  const form = h("form", { class: "card signin", id: "signin", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      await signIn(token.value.trim());
      token.value = "";
      await start();
    } catch (err) {
      error.textContent = err.kind === "auth" ? "That token is not valid (or revoked, or expired)." : `Sign-in failed: ${err.message}`;
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Paste a token once: the hub answers with a session cookie that scripts cannot read, and the token is not kept by this page."),
  h("label", { for: "token" }, "Token"), token,
  h("button", { type: "submit" }, "Sign in"), " ",
  h("button", { type: "button", class: "ghost", onclick: async () => {
    try { await signIn(null); await start(); } catch { error.textContent = "No client certificate that the hub knows was presented."; }
  } }, "Use my client certificate"),
  error);
  say(message || "");
  main.replaceChildren(form);
  token.focus();
}

async function route() {
  if (!identity) return;
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  delete main.dataset.ready;
  const hash = location.hash || "#/";
  const section = hash.startsWith("#/device/") ? "#/" : hash;
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (hash.startsWith("#/device/")) await devicePage(main, signal, decodeURIComponent(hash.slice(9)), identity);
    else if (hash === "#/sync") await syncPage(main, signal);
    else if (hash === "#/alerts") await alertsPage(main, signal);
    else await fleetPage(main, signal);
  } catch (err) {
    if (signal.aborted || err.kind === "auth" || err.kind === "network") return;
    main.replaceChildren(h("h1", {}, "Not shown"), h("p", {}, err.status === 404 ? "No such device, or not one this session may see." : err.message), h("p", {}, h("a", { href: "#/" }, "Back to the fleet")));
  }
}

async function start() {
  try {
    identity = await api("/api/v1/session");
  } catch (err) {
    if (err.kind === "auth") showSignIn("");
    else { say("The hub cannot be reached. Retrying…", true); setTimeout(start, 3000); }
    return;
  }
  nav.hidden = false;
  say(""); // "Signed out." and the like are over
  who.textContent = `${identity.name} (${identity.scopes.join(", ")})`;
  live.start();
  await route();
}

document.getElementById("signout").addEventListener("click", async () => {
  identity = null;
  live.stop();
  await signOut().catch(() => {});
  showSignIn("Signed out.");
});
window.addEventListener("hashchange", () => { route(); main.focus(); });
start();
