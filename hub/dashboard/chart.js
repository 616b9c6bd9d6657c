// A time chart of one metric over uPlot (vendored, loaded before the modules as the global
// `uPlot`): the downsampled history the page fetched, plus live points appended, at most
// MAX_POINTS kept (the oldest dropped), so a page left open does not grow without bound.
// A number is a line; a boolean a state band: a stepped, filled line between false (0) and true
// (1) that holds each state until the next reading (a bucket holding both is drawn at the share of
// its readings that were true).

export const MAX_POINTS = 20000;

/** A boolean's value (or a bucket's share of true) as a person reads it. */
export function stateLabel(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 1) return "true";
  if (v <= 0) return "false";
  return `${Math.round(v * 100)}% true`;
}

export class Chart {
  /** A chart of `metric` in `container`; `kind` is "number" (a line) or "state" (a band). */
  constructor(container, metric, kind = "number") {
    this.container = container;
    this.metric = metric;
    this.kind = kind;
    this.height = kind === "state" ? 110 : 220;
    container.dataset.kind = kind;
    this.xs = [];
    this.ys = [];
    this.plot = null;
    this.span = null; // [from, to] unix seconds the x axis shows; null: the data's own span
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
  }

  /** The width in CSS pixels the chart draws in: one bucket per pixel at most. */
  width() { return Math.max(200, Math.floor(this.container.clientWidth || 600)); }

  /** Replaces the data: `points` are [unix seconds, value] in time order, drawn over `span`. */
  set(points, span = null) {
    this.span = span;
    this.xs = points.map((p) => p[0]);
    this.ys = points.map((p) => p[1]);
    this.draw();
  }

  /** Adds a live point at the end (ignores one older than the last). */
  append(t, v) {
    if (this.xs.length && t < this.xs[this.xs.length - 1]) return;
    this.xs.push(t);
    this.ys.push(v);
    if (this.span && t > this.span[1]) this.span = [this.span[0] + (t - this.span[1]), t];
    if (this.xs.length > MAX_POINTS) {
      this.xs.splice(0, this.xs.length - MAX_POINTS);
      this.ys.splice(0, this.ys.length - MAX_POINTS);
    }
    if (this.plot) { this.plot.setData([this.xs, this.ys]); this.mark(); } else this.draw();
  }

  /** How many points it holds. */
  get length() { return this.xs.length; }

  /** Says on the element how many points it holds and the last value (for people and tests). */
  mark() {
    this.container.dataset.points = String(this.xs.length);
    this.container.dataset.last = this.ys.length ? String(this.ys[this.ys.length - 1]) : "";
  }

  draw() {
    this.mark();
    if (typeof uPlot === "undefined") {
      this.container.textContent = "The chart library did not load.";
      return;
    }
    if (this.plot) { this.plot.setData([this.xs, this.ys]); return; }
    this.container.replaceChildren();
    const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0b62c4";
    const grid = getComputedStyle(document.documentElement).getPropertyValue("--line").trim() || "#ddd";
    const axis = { stroke: getComputedStyle(document.documentElement).getPropertyValue("--muted").trim(), grid: { stroke: grid }, ticks: { stroke: grid } };
    // The range asked for, not the data's: a 7 d chart of one hour of data shows a week.
    const scales = { x: { time: true, range: (u, min, max) => this.span ? [this.span[0], this.span[1]] : [min, max] } };
    const line = { label: this.metric, stroke: accent, width: 1.5, spanGaps: false };
    let yAxis = axis;
    if (this.kind === "state") {
      const band = getComputedStyle(document.documentElement).getPropertyValue("--band").trim() || "rgba(11, 98, 196, 0.3)";
      scales.y = { range: [-0.1, 1.1] };
      yAxis = { ...axis, splits: () => [0, 1], values: (u, splits) => splits.map(stateLabel) };
      // Each state holds until the next reading, and the last one to the end of the range.
      Object.assign(line, { fill: band, fillTo: 0, paths: uPlot.paths.stepped({ align: 1, extend: true }), value: (u, v) => stateLabel(v) });
    }
    this.plot = new uPlot({
      width: this.width(),
      height: this.height,
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      scales,
      axes: [axis, yAxis],
      series: [{}, line],
    }, [this.xs, this.ys], this.container);
  }

  fit() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
