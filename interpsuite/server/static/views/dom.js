// DOM and SVG builders. Text always goes in through textContent (tokens come from the model's
// vocabulary and from user text), never parsed as HTML.

const SVG = "http://www.w3.org/2000/svg";

/** el("div", {class: "x", dataset: {value: 1}, onclick: fn}, child, "text", ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "value" && "value" in node && !(node instanceof SVGElement)) {
      node.value = value;
    } else if (key === "checked" || key === "disabled" || key === "selected") {
      node[key] = Boolean(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A number for display: 4 significant digits, exponent for tiny/huge values. */
export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

/** A token made visible: spaces and newlines shown, empty shown as ∅. */
export function showToken(token) {
  if (token === "" || token === null || token === undefined) return "∅";
  return String(token).replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

/** white -> blue for [0, 1] */
export function sequential(t) {
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0));
  const r = Math.round(255 - x * (255 - 33));
  const g = Math.round(255 - x * (255 - 102));
  const b = Math.round(255 - x * (255 - 172));
  return `rgb(${r},${g},${b})`;
}

/** red (-1) -> white (0) -> blue (+1) */
export function diverging(t) {
  const x = Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0));
  if (x >= 0) return sequential(x);
  const y = -x;
  return `rgb(${Math.round(255 - y * (255 - 178))},${Math.round(255 - y * (255 - 24))},${Math.round(255 - y * (255 - 43))})`;
}

/**
 * A heatmap as inline SVG. `values[r][c]` (null: empty cell). Sequential colours run from 0 (or
 * from the smallest value when `fromZero` is false) to the largest; diverging ones are symmetric.
 * Each cell is a <rect class="cell">
 * with data-row, data-col, data-value and a <title> (the hover value).
 */
export function heatmap({ values, rowLabels, colLabels, id, mode = "sequential", cell = 22, title, rowTitle, colTitle,
  fromZero = true }) {
  const nRows = values.length;
  const nCols = nRows ? Math.max(...values.map((row) => row.length)) : 0;
  const flat = values.flat().filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  const max = flat.length ? Math.max(...flat.map((v) => (mode === "diverging" ? Math.abs(v) : v))) : 1;
  let min = 0;
  if (mode !== "diverging" && flat.length) min = fromZero ? Math.min(0, ...flat) : Math.min(...flat);
  const span = max - min || 1;
  const left = 70;
  const top = 70;
  const width = left + nCols * cell + 10;
  const height = top + nRows * cell + 10;
  const root = svg("svg", { class: "heatmap", id, width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (title) root.append(svg("title", {}, title));
  for (let c = 0; c < nCols; c += 1) {
    const label = colLabels ? colLabels[c] : String(c);
    root.append(
      svg("text", { class: "col-label", x: left + c * cell + cell / 2, y: top - 6,
        transform: `rotate(-60 ${left + c * cell + cell / 2} ${top - 6})` }, label),
    );
  }
  for (let r = 0; r < nRows; r += 1) {
    const label = rowLabels ? rowLabels[r] : String(r);
    root.append(svg("text", { class: "row-label", x: left - 4, y: top + r * cell + cell * 0.65, "text-anchor": "end" }, label));
    for (let c = 0; c < values[r].length; c += 1) {
      const v = values[r][c];
      if (v === null || v === undefined) continue;
      const fill = mode === "diverging" ? diverging(v / (max || 1)) : sequential((v - min) / span);
      const hover = `${rowTitle || "row"} ${rowLabels ? rowLabels[r] : r}, ${colTitle || "col"} ${colLabels ? colLabels[c] : c}: ${fmt(v)}`;
      root.append(
        svg("rect", { class: "cell", x: left + c * cell, y: top + r * cell, width: cell - 1, height: cell - 1,
          fill, dataset: { row: r, col: c, value: v } }, svg("title", {}, hover)),
      );
    }
  }
  return root;
}

/**
 * Line chart: `series` = [{name, points: [{x, y, lo?, hi?}]}]; optional horizontal `baselines`
 * [{name, y}]. Each point is a <circle class="point"> with data-series, data-x, data-value.
 */
export function lineChart({ series, baselines = [], id, xLabel = "", yLabel = "", width = 460, height = 260 }) {
  const margin = { left: 60, right: 110, top: 16, bottom: 40 };
  const all = series.flatMap((s) => s.points.flatMap((p) => [p.y, p.lo, p.hi])).concat(baselines.map((b) => b.y));
  const ys = all.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  const xs = series.flatMap((s) => s.points.map((p) => p.x)).concat([0]);
  let yMin = ys.length ? Math.min(...ys) : 0;
  let yMax = ys.length ? Math.max(...ys) : 1;
  if (yMin === yMax) { yMin -= 1; yMax += 1; }
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs) === xMin ? xMin + 1 : Math.max(...xs);
  const w = width - margin.left - margin.right;
  const h = height - margin.top - margin.bottom;
  const X = (x) => margin.left + ((x - xMin) / (xMax - xMin)) * w;
  const Y = (y) => margin.top + (1 - (y - yMin) / (yMax - yMin)) * h;
  const root = svg("svg", { class: "chart", id, width, height, viewBox: `0 0 ${width} ${height}` });
  root.append(svg("line", { x1: margin.left, y1: margin.top + h, x2: margin.left + w, y2: margin.top + h, class: "axis" }));
  root.append(svg("line", { x1: margin.left, y1: margin.top, x2: margin.left, y2: margin.top + h, class: "axis" }));
  for (const t of [0, 0.5, 1]) {
    const yv = yMin + t * (yMax - yMin);
    root.append(svg("text", { x: margin.left - 4, y: Y(yv) + 4, "text-anchor": "end", class: "tick" }, fmt(yv, 3)));
    const xv = xMin + t * (xMax - xMin);
    root.append(svg("text", { x: X(xv), y: margin.top + h + 14, "text-anchor": "middle", class: "tick" }, fmt(xv, 3)));
  }
  root.append(svg("text", { x: margin.left + w / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel));
  root.append(svg("text", { x: 12, y: margin.top + h / 2, transform: `rotate(-90 12 ${margin.top + h / 2})`,
    "text-anchor": "middle", class: "axis-label" }, yLabel));
  baselines.forEach((b) => {
    if (!Number.isFinite(b.y)) return;
    root.append(svg("line", { x1: margin.left, x2: margin.left + w, y1: Y(b.y), y2: Y(b.y), class: "baseline",
      dataset: { value: b.y } }, svg("title", {}, `${b.name}: ${fmt(b.y)}`)));
  });
  series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => Number.isFinite(p.y));
    const band = pts.filter((p) => Number.isFinite(p.lo) && Number.isFinite(p.hi));
    if (band.length > 1) {
      const d = band.map((p, j) => `${j ? "L" : "M"}${X(p.x)},${Y(p.hi)}`).join("")
        + band.slice().reverse().map((p) => `L${X(p.x)},${Y(p.lo)}`).join("") + "Z";
      root.append(svg("path", { d, fill: colour, opacity: 0.15, class: "band" }));
    }
    if (pts.length > 1) {
      const d = pts.map((p, j) => `${j ? "L" : "M"}${X(p.x)},${Y(p.y)}`).join("");
      root.append(svg("path", { d, stroke: colour, fill: "none", "stroke-width": 2, class: "line" }));
    }
    pts.forEach((p) => {
      const ci = Number.isFinite(p.lo) ? ` [${fmt(p.lo)}, ${fmt(p.hi)}]` : "";
      root.append(svg("circle", { cx: X(p.x), cy: Y(p.y), r: 4, fill: colour, class: "point",
        dataset: { series: s.name, x: p.x, value: p.y } }, svg("title", {}, `${s.name} @ ${fmt(p.x)}: ${fmt(p.y)}${ci}`)));
    });
    root.append(svg("text", { x: margin.left + w + 8, y: margin.top + 14 + i * 16, fill: colour, class: "legend" }, s.name));
  });
  return root;
}

/** Horizontal bars: items [{label, value}]; each bar a <rect class="bar"> with data-label, data-value. */
export function barChart({ items, id, width = 420, barHeight = 18 }) {
  const left = 160;
  const max = Math.max(1e-12, ...items.map((d) => Math.abs(d.value)));
  const hasNeg = items.some((d) => d.value < 0);
  const w = width - left - 60;
  const zero = hasNeg ? left + w / 2 : left;
  const scale = hasNeg ? w / 2 / max : w / max;
  const height = items.length * (barHeight + 4) + 8;
  const root = svg("svg", { class: "bars", id, width, height, viewBox: `0 0 ${width} ${height}` });
  items.forEach((d, i) => {
    const y = 4 + i * (barHeight + 4);
    const len = Math.abs(d.value) * scale;
    root.append(svg("text", { x: left - 6, y: y + barHeight * 0.75, "text-anchor": "end", class: "bar-label" }, d.label));
    root.append(svg("rect", { class: "bar", x: d.value < 0 ? zero - len : zero, y, width: Math.max(len, 0.5), height: barHeight,
      fill: d.value < 0 ? "#b2182b" : "#2166ac", dataset: { label: d.label, value: d.value } },
    svg("title", {}, `${d.label}: ${fmt(d.value)}`)));
    root.append(svg("text", { x: zero + (d.value < 0 ? 4 : len + 4), y: y + barHeight * 0.75, class: "bar-value" }, fmt(d.value)));
  });
  return root;
}

export const PALETTE = ["#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214", "#4d4d4d"];

/** A plain table of row objects (first `limit` rows). */
export function table(rows, { limit = 50, id, columns } = {}) {
  const cols = columns || (rows.length ? Object.keys(rows[0]) : []);
  const body = rows.slice(0, limit).map((row) =>
    el("tr", {}, cols.map((c) => el("td", { dataset: { col: c, value: row[c] ?? "" } }, fmt(row[c])))));
  const node = el("table", { class: "data", id },
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))), el("tbody", {}, body));
  if (rows.length > limit) return el("div", {}, node, el("p", { class: "note" }, `${limit} of ${rows.length} rows shown`));
  return node;
}

/** A status line: error text in red, otherwise plain. */
export function status(node, message, isError = false) {
  node.textContent = message;
  node.classList.toggle("error", Boolean(isError));
}

/**
 * Show a request's outcome in `node`: its children on success, or the server's one-line refusal
 * (class "refusal", data-error = the error code, data-status = the HTTP status) on failure.
 * `node.dataset.state` ends "ok" or "error" so scripts and tests can wait for either.
 */
export function outcome(node, children, err = null) {
  node.hidden = false;
  if (err) {
    clear(node, el("p", { class: "error refusal", dataset: { error: err.code || "error", status: err.status ?? "" } }, err.message));
    node.dataset.state = "error";
  } else {
    clear(node, children);
    node.dataset.state = "ok";
  }
  return node;
}

/** A two-column table of [label, value] pairs; each value cell carries data-key and data-value. */
export function pairs(rows, { id } = {}) {
  return el("table", { class: "data pairs", id }, el("tbody", {}, rows.map(([key, value]) =>
    el("tr", {}, el("th", {}, key), el("td", { dataset: { key, value: value ?? "" } }, fmt(value))))));
}
