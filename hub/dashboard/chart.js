// A time chart of one metric over uPlot (vendored, loaded before the modules as the global
// `uPlot`): the downsampled history the page fetched, plus live points appended, at most
// MAX_POINTS kept (the oldest dropped), so a page left open does not grow without bound.

export const MAX_POINTS = 20000;

export class Chart {
  /** A chart of `metric` in `container`. */
  constructor(container, metric) {
    this.container = container;
    this.metric = metric;
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
    this.plot = new uPlot({
      width: this.width(),
      height: 220,
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      // The range asked for, not the data's: a 7 d chart of one hour of data shows a week.
      scales: { x: { time: true, range: (u, min, max) => this.span ? [this.span[0], this.span[1]] : [min, max] } },
      axes: [axis, axis],
      series: [{}, { label: this.metric, stroke: accent, width: 1.5, spanGaps: false }],
    }, [this.xs, this.ys], this.container);
  }

  fit() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: 220 });
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
