"""A self-contained interactive attention view (bertviz-style) as one HTML string.

Pure functions: data in, HTML text out. The page needs no network: CSS and vanilla JS are
inline, the attention data is embedded as JSON, every token is HTML-escaped.

- Head view: pick text, layer and head (or the mean of the heads); two columns of tokens with
  lines whose opacity is the attention weight. Hover a token on the left to see where it
  attends (weights appear next to the tokens on the right); hover a token on the right to see
  what attends to it.
- Model view: a grid of all layers x heads, each a small heatmap of its pattern; click one to
  open it in the head view.

Weights are embedded as integers: each row is quantised to `SCALE` parts with the
largest-remainder method, so an embedded row sums to exactly 1 and each weight is within
1 / SCALE of the model's.

From Python::

    from interpsuite_plugins.attention.html_view import attention_view_html
    html = attention_view_html("tiny_gpt2", "The quick brown fox")
    Path("view.html").write_text(html)
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCALE = 10000
DATA_ELEMENT_ID = "attention-data"
_DATA_RE = re.compile(
    r'<script type="application/json" id="' + DATA_ELEMENT_ID + r'">(.*?)</script>',
    re.DOTALL,
)


@dataclass
class ViewText:
    """One text of a view: its tokens and patterns {layer: array[head, q, k]}."""

    tokens: list[str]
    patterns: Mapping[int, Any]
    label: str = ""


def display_token(token: str) -> str:
    """How a token is shown: whitespace made visible (newline, tab), nothing else changed."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def quantise_rows(weights: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Rows of non-negative weights -> integers that sum to `scale` per row (largest remainder).

    Rows are renormalised first; an all-zero row stays zero. Each entry is within 1 of
    weight * scale.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    sums = w.sum(axis=-1, keepdims=True)
    p = np.where(sums > 0, w / np.where(sums > 0, sums, 1.0), 0.0) * scale
    base = np.floor(p)
    short = np.rint(np.where(sums[..., 0] > 0, scale - base.sum(axis=-1), 0)).astype(np.int64)
    remainder = p - base
    order = np.argsort(-remainder, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(w.shape[-1]), w.shape), axis=-1)
    return (base + (rank < short[..., None])).astype(np.int64)


def build_view_data(texts: Sequence[ViewText], model_name: str = "", scale: int = SCALE) -> dict:
    """The JSON embedded in the page (also what `extract_view_data` reads back)."""
    out = {"scale": scale, "model": model_name, "texts": []}
    for index, text in enumerate(texts):
        layers = sorted(int(layer) for layer in text.patterns)
        arrays = [np.asarray(text.patterns[layer], dtype=np.float64) for layer in layers]
        n = len(text.tokens)
        for layer, array in zip(layers, arrays, strict=True):
            if array.ndim != 3 or array.shape[1:] != (n, n):
                raise ValueError(f"pattern of layer {layer} has shape {array.shape}; expected [head, {n}, {n}]")
        out["texts"].append(
            {
                "label": text.label or f"text {index}",
                "tokens": list(text.tokens),
                "n": n,
                "layers": layers,
                "heads": int(arrays[0].shape[0]) if arrays else 0,
                # patterns[layer index][head] = row-major q x k integers summing to `scale` per row
                "patterns": [[quantise_rows(head).ravel().tolist() for head in array] for array in arrays],
            }
        )
    return out


def _json_for_script(data: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element early."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def extract_view_data(page: str) -> dict:
    """The embedded data of a page made by `render_attention_views`."""
    match = _DATA_RE.search(page)
    if match is None:
        raise ValueError("no embedded attention data in this page")
    return json.loads(match.group(1))


def embedded_row_sum_error(data: dict) -> float:
    """max |row sum - 1| over every embedded row (0 for a well-formed page)."""
    error = 0.0
    scale = data["scale"]
    for text in data["texts"]:
        n = text["n"]
        for layer in text["patterns"]:
            for head in layer:
                rows = np.asarray(head, dtype=np.float64).reshape(n, n).sum(axis=1) / scale
                if rows.size:
                    error = max(error, float(np.abs(rows - 1.0).max()))
    return error


def _token_column(tokens: Sequence[str], side: str) -> str:
    cells = "".join(
        f'<div class="tok" data-i="{i}"><span class="t">{html.escape(display_token(t))}</span>'
        f'<span class="w"></span></div>'
        for i, t in enumerate(tokens)
    )
    return f'<div class="col {side}">{cells}</div>'


def render_attention_views(texts: Sequence[ViewText], title: str = "Attention", model_name: str = "") -> str:
    """One page for one or more texts (a selector picks the text)."""
    if not texts:
        raise ValueError("render_attention_views needs at least one text")
    data = build_view_data(texts, model_name)
    options = "".join(
        f'<option value="{i}">{html.escape(t["label"])} ({t["n"]} tokens)</option>' for i, t in enumerate(data["texts"])
    )
    panels = "".join(
        f'<div class="panel" data-text="{i}"{"" if i == 0 else " hidden"}>'
        f'<div class="hv">{_token_column(t.tokens, "left")}'
        f'<canvas class="lines" width="{LINE_WIDTH}" height="{max(1, len(t.tokens)) * ROW}"></canvas>'
        f"{_token_column(t.tokens, 'right')}</div></div>"
        for i, t in enumerate(texts)
    )
    first = data["texts"][0]
    meta = (
        f"{html.escape(model_name) + ' · ' if model_name else ''}{len(first['layers'])} layers × "
        f"{first['heads']} heads · weights to 1/{SCALE}"
    )
    page = PAGE.format(
        title=html.escape(title),
        meta=meta,
        options=options,
        panels=panels,
        data=_json_for_script(data),
        style=STYLE,
        script=SCRIPT.replace("__ROW__", str(ROW)),
    )
    return page


def render_attention_view(
    tokens: Sequence[str], patterns: Mapping[int, Any], title: str = "Attention", model_name: str = ""
) -> str:
    """The page for one text: tokens and {layer: array[head, q, k]} (rows summing to 1)."""
    return render_attention_views([ViewText(list(tokens), patterns)], title, model_name)


def attention_view_html(
    model,
    text: str | Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    max_tokens: int = 64,
    title: str | None = None,
) -> str:
    """Capture a model's attention on a text (or a few) and render the page.

    `model`: a HookedModel or a model name for `interpsuite.load_model`.
    """
    from interpsuite.models import HookedModel, load_model

    from .rollout import capture_text_patterns

    if not isinstance(model, HookedModel):
        model = load_model(str(model))
    texts = [text] if isinstance(text, str) else list(text)
    captured = capture_text_patterns(model, texts, layers=layers, max_length=max_tokens)
    views = [
        ViewText(c.tokens, {layer: c.patterns[i] for i, layer in enumerate(c.layers)}, f"text {c.text_id}")
        for c in captured
    ]
    return render_attention_views(views, title or f"Attention: {model.info.name}", model.info.name)


ROW = 22
LINE_WIDTH = 260

STYLE = """
:root { --fg: #1d2430; --muted: #6b7280; --line: #d1d5db; --accent: #2563eb; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  margin: 0; padding: 16px 24px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.meta, .hint { color: var(--muted); margin: 0 0 8px; }
.controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; padding: 8px 0;
  border-bottom: 1px solid var(--line); position: sticky; top: 0; background: #fff; z-index: 2; }
.controls select { font: inherit; padding: 2px 4px; }
.hv { display: flex; align-items: flex-start; }
.col { display: flex; flex-direction: column; min-width: 120px; }
.col.left { align-items: flex-end; }
.col.right { align-items: flex-start; }
.tok { height: __ROW__px; line-height: __ROW__px; padding: 0 6px; white-space: pre; cursor: default;
  border-radius: 3px; display: flex; gap: 6px; font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
.col.left .tok { flex-direction: row-reverse; }
.tok .w { color: var(--muted); font-size: 11px; min-width: 0; }
.tok.focus { outline: 2px solid var(--accent); }
canvas.lines { display: block; }
#grid { display: grid; gap: 6px; align-items: center; }
#grid .lab { color: var(--muted); font-size: 11px; text-align: center; }
#grid canvas { width: 72px; height: 72px; image-rendering: pixelated; border: 1px solid var(--line);
  cursor: pointer; display: block; }
#grid canvas.sel { outline: 3px solid var(--accent); }
""".replace("__ROW__", str(ROW))

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="meta">{meta}</p>
</header>
<nav class="controls">
<label>Text <select id="text-select">{options}</select></label>
<label>Layer <select id="layer-select"></select></label>
<label>Head <select id="head-select"></select></label>
</nav>
<section id="head-view">
<h2>Head view</h2>
<p class="hint">Line opacity is the attention weight from a token on the left (query) to a token on the right
(key). Hover a token on the left to see where it attends; hover one on the right to see what attends to it.</p>
{panels}
</section>
<section id="model-view">
<h2>Model view</h2>
<p class="hint">Every head of every layer (rows: layers, columns: heads; query down, key across).
Click one to open it in the head view.</p>
<div id="grid"></div>
</section>
<script type="application/json" id="attention-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

SCRIPT = """
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("attention-data").textContent);
  var Q = DATA.scale, ROW = __ROW__;
  var state = { text: 0, layer: 0, head: 0, focus: null, side: null };
  var textSel = document.getElementById("text-select");
  var layerSel = document.getElementById("layer-select");
  var headSel = document.getElementById("head-select");
  var meanCache = {};

  function weights(t, li, h) {
    var T = DATA.texts[t];
    if (h >= 0) { return T.patterns[li][h]; }
    var key = t + ":" + li;
    if (!meanCache[key]) {
      var heads = T.patterns[li], m = new Array(T.n * T.n).fill(0);
      for (var k = 0; k < heads.length; k++) {
        for (var x = 0; x < m.length; x++) { m[x] += heads[k][x] / heads.length; }
      }
      meanCache[key] = m;
    }
    return meanCache[key];
  }
  function headColour(h, alpha) {
    if (h < 0) { return "rgba(55,65,81," + alpha + ")"; }
    var H = DATA.texts[state.text].heads;
    return "hsla(" + Math.round(360 * h / Math.max(1, H)) + ",70%,45%," + alpha + ")";
  }
  function option(value, label) {
    var o = document.createElement("option");
    o.value = String(value); o.textContent = label; return o;
  }
  function fillControls() {
    var T = DATA.texts[state.text];
    layerSel.textContent = ""; headSel.textContent = "";
    T.layers.forEach(function (layer, li) { layerSel.appendChild(option(li, "layer " + layer)); });
    for (var h = 0; h < T.heads; h++) { headSel.appendChild(option(h, "head " + h)); }
    headSel.appendChild(option(-1, "mean of heads"));
    state.layer = Math.min(state.layer, T.layers.length - 1);
    state.head = Math.min(state.head, T.heads - 1);
    layerSel.value = String(state.layer); headSel.value = String(state.head);
  }
  function panel() { return document.querySelector('.panel[data-text="' + state.text + '"]'); }

  function drawHead() {
    var T = DATA.texts[state.text], p = panel(), n = T.n;
    var canvas = p.querySelector("canvas.lines"), ctx = canvas.getContext("2d");
    var W = canvas.width, w = weights(state.text, state.layer, state.head);
    ctx.clearRect(0, 0, W, canvas.height);
    var left = p.querySelectorAll(".col.left .tok"), right = p.querySelectorAll(".col.right .tok");
    for (var i = 0; i < n; i++) {
      left[i].style.background = ""; right[i].style.background = "";
      left[i].querySelector(".w").textContent = ""; right[i].querySelector(".w").textContent = "";
      left[i].classList.remove("focus"); right[i].classList.remove("focus");
    }
    ctx.lineWidth = 2;
    for (var q = 0; q < n; q++) {
      for (var k = 0; k < n; k++) {
        var a = w[q * n + k] / Q;
        if (a <= 0) { continue; }
        var shown = state.focus === null || (state.side === "left" && q === state.focus) ||
          (state.side === "right" && k === state.focus);
        if (!shown) { continue; }
        ctx.strokeStyle = headColour(state.head, Math.min(1, a));
        ctx.beginPath();
        ctx.moveTo(0, q * ROW + ROW / 2);
        ctx.lineTo(W, k * ROW + ROW / 2);
        ctx.stroke();
      }
    }
    if (state.focus !== null) {
      var f = state.focus;
      if (state.side === "left") {
        left[f].classList.add("focus");
        for (var k2 = 0; k2 < n; k2++) {
          var a2 = w[f * n + k2] / Q;
          right[k2].style.background = headColour(state.head, Math.min(0.6, a2));
          right[k2].querySelector(".w").textContent = a2 > 0 ? a2.toFixed(3) : "";
        }
      } else {
        right[f].classList.add("focus");
        for (var q2 = 0; q2 < n; q2++) {
          var a3 = w[q2 * n + f] / Q;
          left[q2].style.background = headColour(state.head, Math.min(0.6, a3));
          left[q2].querySelector(".w").textContent = a3 > 0 ? a3.toFixed(3) : "";
        }
      }
    }
  }

  function drawGrid() {
    var T = DATA.texts[state.text], grid = document.getElementById("grid"), n = T.n;
    grid.textContent = "";
    grid.style.gridTemplateColumns = "48px repeat(" + T.heads + ", 74px)";
    grid.appendChild(document.createElement("span"));
    for (var h = 0; h < T.heads; h++) {
      var lab = document.createElement("span"); lab.className = "lab"; lab.textContent = "head " + h;
      grid.appendChild(lab);
    }
    T.layers.forEach(function (layer, li) {
      var rowLab = document.createElement("span"); rowLab.className = "lab"; rowLab.textContent = "layer " + layer;
      grid.appendChild(rowLab);
      for (var h2 = 0; h2 < T.heads; h2++) {
        var c = document.createElement("canvas");
        c.width = n; c.height = n; c.title = "layer " + layer + ", head " + h2;
        c.dataset.layer = String(li); c.dataset.head = String(h2);
        if (li === state.layer && h2 === state.head) { c.className = "sel"; }
        var ctx = c.getContext("2d"), img = ctx.createImageData(n, n), w = T.patterns[li][h2];
        for (var x = 0; x < n * n; x++) {
          var v = Math.sqrt(w[x] / Q);
          img.data[4 * x] = Math.round(255 - 218 * v);
          img.data[4 * x + 1] = Math.round(255 - 156 * v);
          img.data[4 * x + 2] = Math.round(255 - 20 * v);
          img.data[4 * x + 3] = 255;
        }
        ctx.putImageData(img, 0, 0);
        c.addEventListener("click", function (ev) {
          state.layer = Number(ev.currentTarget.dataset.layer);
          state.head = Number(ev.currentTarget.dataset.head);
          layerSel.value = String(state.layer); headSel.value = String(state.head);
          state.focus = null; redraw();
          document.getElementById("head-view").scrollIntoView({ behavior: "smooth" });
        });
        grid.appendChild(c);
      }
    });
  }

  function redraw() {
    drawHead();
    var cells = document.querySelectorAll("#grid canvas");
    for (var i = 0; i < cells.length; i++) {
      var c = cells[i];
      c.className = Number(c.dataset.layer) === state.layer && Number(c.dataset.head) === state.head ? "sel" : "";
    }
  }

  document.querySelectorAll(".panel").forEach(function (p) {
    ["left", "right"].forEach(function (side) {
      p.querySelectorAll(".col." + side + " .tok").forEach(function (el) {
        el.addEventListener("mouseenter", function () {
          state.focus = Number(el.dataset.i); state.side = side; drawHead();
        });
        el.addEventListener("mouseleave", function () { state.focus = null; drawHead(); });
      });
    });
  });
  textSel.addEventListener("change", function () {
    state.text = Number(textSel.value); state.focus = null;
    document.querySelectorAll(".panel").forEach(function (p) {
      p.hidden = Number(p.dataset.text) !== state.text;
    });
    fillControls(); drawGrid(); redraw();
  });
  layerSel.addEventListener("change", function () { state.layer = Number(layerSel.value); redraw(); });
  headSel.addEventListener("change", function () { state.head = Number(headSel.value); redraw(); });
  fillControls(); drawGrid(); redraw();
})();
"""
