// Small DOM helpers: elements are built with properties and text nodes, never from HTML strings,
// so nothing a device sends (ids, labels, string values) can become markup.

/** `h("a", {href: "#/"}, "text", child)`: an element with properties and children. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && key !== "list") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A value as a person reads it. */
export function fmtValue(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4).replace(/\.?0+$/, "");
  if (typeof v === "boolean") return v ? "true" : "false";
  return String(v);
}

/** "12 s ago", "3 min ago", ... */
export function ago(ts) {
  const t = typeof ts === "string" ? Date.parse(ts) : ts;
  if (!Number.isFinite(t)) return "never";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A time as a person reads it: the time of day for today, else the date and time. */
export function fmtTime(ts) {
  const d = new Date(ts);
  if (!Number.isFinite(d.getTime())) return String(ts);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

/** Bytes as "12.3 MB". */
export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Replaces the content of `main` and moves the focus there (keyboard and screen readers). */
export function show(main, ...children) {
  main.replaceChildren(...children);
}

/** Runs `fn` every `ms` while `signal` is not aborted; errors are left to the banner. */
export function every(ms, signal, fn) {
  const id = setInterval(() => { fn().catch(() => {}); }, ms);
  signal.addEventListener("abort", () => clearInterval(id));
}

/** Marks the page `name` as shown: on `main` (for tests) and as a performance mark (for the
 * bench: `performance.getEntriesByName("ready-fleet")`). */
export function ready(main, name) {
  main.dataset.ready = name;
  performance.mark(`ready-${name}`);
}
