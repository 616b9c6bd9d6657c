// The device page's commands (shown only with the `command` scope): the form, and the device's
// recent commands with their states and results, newest first. The list is loaded from
// GET /devices/{id}/commands and kept current from the stream's command events, so a command
// sent from here, from another client or by a rule shows, and moves to its result when the
// device answers.

import { api } from "./api.js";
import { h, ago } from "./ui.js";

export const RECENT_COMMANDS = 20;
// States only move forward: an answer that arrives late never puts an older state back.
const RANK = { pending: 0, delivered: 1, succeeded: 2, failed: 2, timed_out: 2 };

/** The section for the device at API `path`: `{ section, load, update }`. */
export function commandSection(path) {
  const list = h("ol", { id: "commands", class: "commands" });
  const empty = h("p", { class: "muted", id: "commands-empty" }, "No commands sent to this device yet.");
  const entries = new Map(); // id -> { li, state }
  const name = h("input", { id: "command-name", required: true, placeholder: "echo", pattern: "[A-Za-z0-9._-]{1,64}", "aria-label": "Command name" });
  const args = h("textarea", { id: "command-args", rows: 2, placeholder: '{"level": 3}', "aria-label": "Arguments (JSON)" });
  const error = h("p", { class: "muted", role: "status" });

  function render(cmd) {
    const old = entries.get(cmd.id);
    if (old && RANK[cmd.state] < RANK[old.state]) return;
    const hasArgs = cmd.args && Object.keys(cmd.args).length > 0;
    const li = h("li", { "data-command": String(cmd.id) },
      h("div", {}, h("b", {}, cmd.name), " ",
        hasArgs ? h("code", { class: "args" }, JSON.stringify(cmd.args)) : null, " ",
        h("span", { class: `state state-${cmd.state}` }, cmd.state), " ",
        h("span", { class: "muted", title: cmd.created }, `#${cmd.id} · ${ago(cmd.created)} · by ${cmd.requested_by}`)),
      cmd.result !== undefined && cmd.result !== null ? h("pre", { class: "result" }, JSON.stringify(cmd.result)) : null,
      cmd.error ? h("pre", { class: "result error" }, cmd.error_code ? `${cmd.error} (code ${cmd.error_code})` : cmd.error) : null);
    if (old) old.li.replaceWith(li);
    else {
      // Newest (highest id) first, wherever it fits.
      const after = [...list.children].find((other) => Number(other.dataset.command) < cmd.id);
      list.insertBefore(li, after || null);
    }
    entries.set(cmd.id, { li, state: cmd.state });
    while (list.children.length > RECENT_COMMANDS) {
      entries.delete(Number(list.lastChild.dataset.command));
      list.lastChild.remove();
    }
    empty.hidden = list.children.length > 0;
  }

  /** The device's newest commands. */
  async function load(signal) {
    const page = await api(`${path}/commands?limit=${RECENT_COMMANDS}`, { signal });
    for (const cmd of page.commands) render(cmd);
    empty.hidden = list.children.length > 0;
  }

  /** A command of this device changed (a stream event): show it as it is now. */
  async function update(cid) {
    render(await api(`${path}/commands/${cid}`));
  }

  const form = h("form", { class: "inline", id: "command-form", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    let parsed;
    try { parsed = args.value.trim() ? JSON.parse(args.value) : undefined; } catch { error.textContent = "Arguments must be a JSON object."; return; }
    try {
      render(await api(`${path}/commands?wait=10s`, { method: "POST", body: { name: name.value.trim(), args: parsed } }));
    } catch (err) { error.textContent = `Not sent: ${err.message}`; }
  } }, h("label", {}, "Command", name), h("label", {}, "Arguments (JSON)", args), h("button", { type: "submit" }, "Send"));
  const section = h("section", { class: "card", id: "command-card" },
    h("h2", {}, "Commands"), form, error,
    h("h3", {}, "Recent commands"), empty, list);
  return { section, load, update };
}
