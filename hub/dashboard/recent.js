// The recent values of a string metric, newest first: a string is read, not drawn. A value
// repeated reading after reading is one entry (its first and last time and how many readings),
// so a status that changes now and then shows its changes. Loaded from /readings (the newest
// raw readings of that metric up to the end of the range shown) and, while the range ends now,
// kept current from the stream. At most RECENT_VALUES entries, from at most READINGS readings.

import { api } from "./api.js";
import { h, fmtTime } from "./ui.js";

export const RECENT_VALUES = 20;
const READINGS = 200;

export class RecentValues {
  /** The recent values of `metric` of the device at API `path`, in `container`. */
  constructor(container, path, metric) {
    this.container = container;
    this.path = path;
    this.metric = metric;
    this.runs = []; // newest first: { value, first, last, count }
    this.list = h("ol", { class: "recent" });
    container.dataset.kind = "text";
    container.replaceChildren(this.list);
  }

  /** Loads the newest values timestamped before `to` (unix ms; null: now). */
  async load(to, signal) {
    const q = new URLSearchParams({ metric: this.metric, order: "newest", limit: String(READINGS) });
    if (to !== null) q.set("to", String(Math.ceil(to)));
    const page = await api(`${this.path}/readings?${q}`, { signal });
    this.runs = [];
    // Oldest first, as they came.
    for (const r of [...page.readings].reverse()) {
      if (this.metric in r.metrics) this.add(r.ts, r.metrics[this.metric]);
    }
    this.render();
  }

  /** A live value, newest. */
  prepend(ts, value) {
    this.add(ts, value);
    this.render();
  }

  add(ts, value) {
    const newest = this.runs[0];
    if (newest && newest.value === value) {
      newest.last = ts;
      newest.count += 1;
    } else {
      this.runs.unshift({ value, first: ts, last: ts, count: 1 });
      this.runs.length = Math.min(this.runs.length, RECENT_VALUES);
    }
  }

  render() {
    this.list.replaceChildren(...this.runs.map((run) => h("li", { "data-count": String(run.count) },
      h("span", { class: "text" }, run.value === null ? "—" : String(run.value)), " ",
      h("span", { class: "muted", title: run.count > 1 ? `${run.first} to ${run.last}` : run.last },
        run.count > 1 ? `${fmtTime(run.first)} – ${fmtTime(run.last)} · ${run.count} readings` : fmtTime(run.last)))));
    // For people and tests: how many entries, and the newest value.
    this.container.dataset.points = String(this.runs.length);
    this.container.dataset.last = this.runs.length ? this.list.querySelector(".text").textContent : "";
  }
}
