// Attention, bertviz's head view as a heatmap: pick a layer and a head, see query x key weights
// over the tokens of the text (from attention_patterns' `patterns` table); a layer x head overview
// of the head statistics picks the head by click.

import { clear, el, heatmap, showToken } from "./dom.js";

const STATS = ["mean_entropy", "mean_max_weight", "mean_distance", "first_token", "previous_token", "self"];

export default {
  id: "attention",
  title: "Attention",
  mount(section, ctx) {
    const layer = el("select", { id: "attention-layer" });
    const head = el("select", { id: "attention-head" });
    const stat = el("select", { id: "attention-stat" }, STATS.map((s) => el("option", { value: s }, s)));
    const map = el("div", { id: "attention-map" });
    const overview = el("div", { id: "attention-overview" });
    let result = null;

    const draw = () => {
      if (!result) return;
      const L = Number(layer.value);
      const H = Number(head.value);
      const tokens = result.tables.tokens.filter((t) => t.text === 0).map((t) => t.token);
      const n = tokens.length;
      const values = Array.from({ length: n }, () => Array(n).fill(null));
      for (const row of result.tables.patterns) {
        if (row.text === 0 && row.layer === L && row.head === H) values[row.query_pos][row.key_pos] = row.weight;
      }
      const labels = tokens.map((t, i) => `${i}:${showToken(t)}`);
      clear(map, el("p", { class: "note" }, `layer ${L}, head ${H}: rows are queries, columns keys`),
        heatmap({ values, rowLabels: labels, colLabels: labels, id: "attention-heatmap", rowTitle: "query", colTitle: "key",
          title: `attention L${L}H${H}` }));
      const rows = result.tables.head_summary;
      const layers = [...new Set(rows.map((r) => r.layer))].sort((a, b) => a - b);
      const heads = [...new Set(rows.map((r) => r.head))].sort((a, b) => a - b);
      const grid = layers.map((l) => heads.map((h) => {
        const r = rows.find((x) => x.layer === l && x.head === h);
        return r ? r[stat.value] : null;
      }));
      const svgNode = heatmap({ values: grid, rowLabels: layers.map((l) => `L${l}`), colLabels: heads.map((h) => `H${h}`),
        id: "attention-heads", rowTitle: "layer", colTitle: "head", title: stat.value, fromZero: false });
      svgNode.addEventListener("click", (event) => {
        const cell = event.target.closest("rect.cell");
        if (!cell) return;
        layer.value = String(layers[Number(cell.dataset.row)]);
        head.value = String(heads[Number(cell.dataset.col)]);
        draw();
      });
      clear(overview, el("p", { class: "note" }, `${stat.value} per head (click a cell to view it)`), svgNode);
    };

    const run = () => ctx.guard(async () => {
      const outcome = await ctx.run({ attention_patterns: { max_texts: 1 } });
      result = outcome.analyzers.attention_patterns;
      const rows = result.tables.head_summary;
      const layers = [...new Set(rows.map((r) => r.layer))].sort((a, b) => a - b);
      const heads = [...new Set(rows.map((r) => r.head))].sort((a, b) => a - b);
      clear(layer, layers.map((l) => el("option", { value: l }, `layer ${l}`)));
      clear(head, heads.map((h) => el("option", { value: h }, `head ${h}`)));
      draw();
    });

    for (const select of [layer, head, stat]) select.addEventListener("change", draw);
    section.append(
      el("div", { class: "controls" }, el("button", { type: "button", id: "attention-run", onclick: run }, "Run attention"),
        el("label", {}, "layer ", layer), el("label", {}, "head ", head), el("label", {}, "overview ", stat)),
      el("div", { class: "two-col" }, overview, map),
    );
  },
};
