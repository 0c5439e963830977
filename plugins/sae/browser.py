"""An offline feature browser: one self-contained HTML file for a `FeatureReport`.

The file must open from a results folder on a laptop with no network, so everything is inline
(CSS, vanilla JS, the data) and nothing is fetched. The data is embedded as
`<script type="application/json">` with `<`, `>` and `&` written as JSON escapes: a token
string such as `</script><img onerror=...>` comes from the model's vocabulary or the user's
texts, and must neither end the script element nor ever be parsed as HTML. The JS builds every
node with `textContent` (never `innerHTML`), for the same reason.

It stays fast with thousands of features by rendering only the selected feature and at most
`LIST_LIMIT` rows of the feature list (with an "N more" line); the search index (each feature's
top-context tokens and top/bottom logit tokens, lower-cased) is built in the browser on the
first text search. `#f=123` in the URL selects feature 123, so links to a feature can be shared.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["LIST_LIMIT", "embed_json", "feature_browser_html", "write_feature_browser"]

#: rows of the feature list rendered at once
LIST_LIMIT = 200


def embed_json(data: Any) -> str:
    """JSON that is safe inside a `<script>` element: no `<`, `>` or `&` appears literally (they
    are \\u003c, \\u003e, \\u0026, which JSON.parse reads back), so nothing in the data can close
    the element or open a comment; NaN is refused rather than written as invalid JSON."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def feature_browser_html(report_json: dict, title: str) -> str:
    """The browser for `FeatureReport.to_json()` as one HTML document (a string)."""
    # split, not str.replace: a title that contains "__DATA__" must not receive the data
    head, rest = _TEMPLATE.replace("__LIST_LIMIT__", str(LIST_LIMIT)).split("__TITLE__")
    middle, tail = rest.split("__DATA__")
    return head + html.escape(title) + middle + embed_json(report_json) + tail


def write_feature_browser(report: Any, path: str | Path, title: str | None = None) -> Path:
    """Write the browser for `report` (a FeatureReport or its `to_json()` dict) to `path`."""
    data = report if isinstance(report, dict) else report.to_json()
    if title is None:
        title = f"SAE features: {data.get('model', '')} {data.get('hook', '')}".strip()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(feature_browser_html(data, title), encoding="utf-8")
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #222; display: flex; height: 100vh; }
#side { width: 300px; min-width: 220px; border-right: 1px solid #ddd; display: flex; flex-direction: column; }
#side header { padding: 8px; border-bottom: 1px solid #eee; font-size: 12px; color: #555; }
#search { margin: 8px; padding: 6px; font-size: 14px; }
#list { overflow-y: auto; flex: 1; }
.item { padding: 3px 8px; cursor: pointer; display: flex; gap: 8px; white-space: nowrap; font-size: 13px; }
.item:hover { background: #f3f3f3; }
.item.sel { background: #dde8ff; }
.item .fid { width: 56px; font-weight: 600; }
.item .dens { width: 64px; color: #666; }
.item .tt { overflow: hidden; text-overflow: ellipsis; font-family: monospace; }
.more { padding: 6px 8px; color: #777; font-size: 12px; }
#main { flex: 1; overflow-y: auto; padding: 12px 20px; }
h1 { font-size: 20px; margin: 4px 0 8px; }
h2 { font-size: 15px; margin: 18px 0 6px; border-bottom: 1px solid #eee; }
.stats span { margin-right: 16px; }
.note { color: #a33; }
.ctx { font-family: monospace; white-space: pre-wrap; margin: 2px 0; display: flex; gap: 8px; }
.ctx .val { width: 64px; text-align: right; color: #555; flex: none; }
.tok { white-space: pre; border-radius: 2px; }
.tok.focus { outline: 1px solid #c60; }
table { border-collapse: collapse; margin-right: 24px; }
td, th { padding: 1px 8px; text-align: left; font-size: 13px; }
td.t { font-family: monospace; white-space: pre; }
.tables { display: flex; flex-wrap: wrap; }
.pos { color: #0a5; } .neg { color: #c22; }
a.co { margin-right: 12px; cursor: pointer; }
</style>
</head>
<body>
<div id="side">
<header id="meta"></header>
<input id="search" type="search" placeholder="feature id or token text" autocomplete="off">
<div id="list"></div>
</div>
<div id="main"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var T = D.tokens, E = D.entries, LIMIT = __LIST_LIMIT__;
var byId = new Map();
E.forEach(function (e) { byId.set(e.id, e); });
var index = null, current = null;

function el(tag, cls, text) {
  var node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function fmt(x) {
  if (x === null || x === undefined) return "-";
  if (x === 0) return "0";
  var a = Math.abs(x);
  return (a >= 1e4 || a < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(4)));
}
function visible(s) { return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
function tok(i) { return i === null || i === undefined ? "" : T[i]; }

function buildIndex() {
  index = E.map(function (e) {
    var parts = [];
    e.top.forEach(function (c) { parts.push(T[c.k[c.i]]); });
    if (e.logits) {
      e.logits.top.forEach(function (p) { parts.push(T[p[0]]); });
      e.logits.bottom.forEach(function (p) { parts.push(T[p[0]]); });
    }
    return parts.join("\u0001").toLowerCase();
  });
}
function matches(query) {
  var q = query.trim();
  if (!q) return E;
  if (/^#?\d+$/.test(q)) {
    var e = byId.get(parseInt(q.replace("#", ""), 10));
    return e ? [e] : [];
  }
  if (!index) buildIndex();
  var lq = query.toLowerCase();
  return E.filter(function (e, i) { return index[i].indexOf(lq) >= 0; });
}
function renderList() {
  var list = document.getElementById("list");
  var found = matches(document.getElementById("search").value);
  list.textContent = "";
  var frag = document.createDocumentFragment();
  found.slice(0, LIMIT).forEach(function (e) {
    var row = el("div", "item" + (current === e.id ? " sel" : ""));
    row.dataset.id = e.id;
    row.appendChild(el("span", "fid", "#" + e.id));
    row.appendChild(el("span", "dens", fmt(e.density)));
    var top = e.top_token === null ? "(never fired)" : JSON.stringify(visible(tok(e.top_token)));
    row.appendChild(el("span", "tt", top));
    frag.appendChild(row);
  });
  list.appendChild(frag);
  if (found.length > LIMIT) list.appendChild(el("div", "more", (found.length - LIMIT) + " more (refine the search)"));
  if (!found.length) list.appendChild(el("div", "more", "no feature matches"));
}

function context(c, max) {
  var row = el("div", "ctx");
  row.appendChild(el("span", "val", fmt(c.a[c.i])));
  var line = el("span");
  c.k.forEach(function (k, j) {
    var a = c.a[j] || 0;
    var span = el("span", "tok" + (j === c.i ? " focus" : ""), visible(T[k]));
    var alpha = max > 0 ? Math.min(1, a / max) : 0;
    if (alpha > 0) span.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
    span.title = "activation " + fmt(a) + " (text " + c.t + ", position " + (c.p - c.i + j) + ")";
    line.appendChild(span);
  });
  row.appendChild(line);
  return row;
}
var SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  var node = document.createElementNS(SVG, tag);
  Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
  return node;
}
function histogram(h) {
  var w = 480, ht = 140, pad = 24, counts = h.counts, n = counts.length;
  var top = Math.max.apply(null, counts.concat([1]));
  var svg = svgEl("svg", { width: w, height: ht + pad, viewBox: "0 0 " + w + " " + (ht + pad) });
  var bw = (w - 2 * pad) / n;
  counts.forEach(function (c, i) {
    var bh = (ht - 10) * c / top;
    var r = svgEl("rect", { x: pad + i * bw, y: ht - bh, width: Math.max(bw - 1, 1), height: bh, fill: "#e07020" });
    var step = (h.hi - h.lo) / n;
    var tip = document.createElementNS(SVG, "title");
    tip.textContent = "[" + fmt(h.lo + i * step) + ", " + fmt(h.lo + (i + 1) * step) + "): " + c;
    r.appendChild(tip);
    svg.appendChild(r);
  });
  svg.appendChild(svgEl("line", { x1: pad, y1: ht, x2: w - pad, y2: ht, stroke: "#999" }));
  [[h.lo, pad, "start"], [h.hi, w - pad, "end"]].forEach(function (p) {
    var t = svgEl("text", { x: p[1], y: ht + 16, "font-size": 11, "text-anchor": p[2], fill: "#555" });
    t.textContent = fmt(p[0]);
    svg.appendChild(t);
  });
  return svg;
}
function logitTable(title, pairs, cls) {
  var table = el("table");
  var head = el("tr");
  head.appendChild(el("th", null, title));
  head.appendChild(el("th", null, "logit"));
  table.appendChild(head);
  pairs.forEach(function (p) {
    var tr = el("tr");
    tr.appendChild(el("td", "t", JSON.stringify(T[p[0]])));
    tr.appendChild(el("td", cls, fmt(p[1])));
    table.appendChild(tr);
  });
  return table;
}
function render(id) {
  var main = document.getElementById("main");
  main.textContent = "";
  var e = byId.get(id);
  current = e ? id : null;
  if (!e) { main.appendChild(el("p", "note", "Feature " + id + " is not in this report.")); return; }
  main.appendChild(el("h1", null, "Feature " + e.id));
  var stats = el("div", "stats");
  [["density", fmt(e.density) + (e.density > 0 ? " (log10 " + Math.log10(e.density).toFixed(2) + ")" : "")],
   ["active on", e.n + " / " + D.n_tokens + " tokens"], ["max", fmt(e.max)], ["mean when active", fmt(e.mean)]]
    .forEach(function (p) { stats.appendChild(el("span", null, p[0] + ": " + p[1])); });
  main.appendChild(stats);
  if (e.note) main.appendChild(el("p", "note", e.note));
  if (e.top.length) {
    main.appendChild(el("h2", null, "Top activations"));
    e.top.forEach(function (c) { main.appendChild(context(c, e.max)); });
  }
  if (e.quantiles.length) {
    main.appendChild(el("h2", null, "Samples across the activation range"));
    e.quantiles.slice().reverse().forEach(function (q) {
      main.appendChild(el("div", "more", "[" + fmt(q.lo) + ", " + fmt(q.hi) + "]: " + q.n + " tokens"));
      q.samples.forEach(function (c) { main.appendChild(context(c, e.max)); });
    });
  }
  if (e.n) {
    main.appendChild(el("h2", null, "Activation histogram (non-zero activations)"));
    main.appendChild(histogram(e.hist));
  }
  main.appendChild(el("h2", null, "Logit effects"));
  if (e.logits) {
    var tables = el("div", "tables");
    tables.appendChild(logitTable("promoted", e.logits.top, "pos"));
    tables.appendChild(logitTable("suppressed", e.logits.bottom, "neg"));
    main.appendChild(tables);
  } else {
    main.appendChild(el("p", "more", "none (an encoder model, or a hook outside the residual stream)"));
  }
  if (e.cofiring.length) {
    main.appendChild(el("h2", null, "Fires together with (Jaccard)"));
    var box = el("div");
    e.cofiring.forEach(function (c) {
      var a = el("a", "co", "#" + c[0] + " " + fmt(c[2]) + " (" + c[1] + ")");
      a.href = "#f=" + c[0];
      if (!byId.has(c[0])) a.title = "not in this report";
      box.appendChild(a);
    });
    main.appendChild(box);
  }
  main.scrollTop = 0;
  renderList();
}
function fromHash() {
  var m = /f=(\d+)/.exec(location.hash);
  if (m) { render(parseInt(m[1], 10)); return true; }
  return false;
}
function select(id) {
  if (location.hash === "#f=" + id) render(id); else location.hash = "f=" + id;
}

document.getElementById("meta").textContent = D.model + " | " + D.hook + " | width " + D.width + " | " +
  D.n_tokens + " tokens, " + D.n_texts + " texts | " + D.n_dead + " dead | " +
  E.length + " features (" + D.selection + ")";
document.getElementById("list").addEventListener("click", function (ev) {
  var row = ev.target.closest(".item");
  if (row) select(parseInt(row.dataset.id, 10));
});
var timer = null;
document.getElementById("search").addEventListener("input", function () {
  clearTimeout(timer);
  timer = setTimeout(renderList, 80);
});
document.getElementById("search").addEventListener("keydown", function (ev) {
  if (ev.key !== "Enter") return;
  var found = matches(this.value);
  if (found.length) select(found[0].id);
});
window.addEventListener("hashchange", fromHash);
if (!fromHash()) {
  if (E.length) render(E[0].id); else { renderList(); document.getElementById("main").textContent = "No features."; }
}
})();
</script>
</body>
</html>
"""
