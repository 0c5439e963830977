// Logit lens: a layer x position grid of the top-1 token under the lens with its probability
// (cell colour, relative to the grid's largest), the top-k in the tooltip; from logit_lens' `top_tokens` table.

import { clear, el, fmt, sequential, showToken } from "./dom.js";

export default {
  id: "logitlens",
  title: "Logit lens",
  mount(section, ctx) {
    const grid = el("div", { id: "logitlens-grid-box" });
    const run = () => ctx.guard(async () => {
      const outcome = await ctx.run({ logit_lens: { max_positions: 64 } });
      const result = outcome.analyzers.logit_lens;
      const rows = result.tables.top_tokens.filter((r) => r.text_id === 0);
      const layers = [...new Set(rows.map((r) => r.layer))].sort((a, b) => b - a); // last layer on top
      const positions = [...new Set(rows.map((r) => r.position))].sort((a, b) => a - b);
      const inputs = new Map(rows.map((r) => [r.position, r.input_token]));
      const maxProb = Math.max(1e-12, ...rows.filter((r) => r.k === 1).map((r) => r.prob)); // colour: relative to the grid's best
      const cell = (layer, position) => {
        const top = rows.filter((r) => r.layer === layer && r.position === position).sort((a, b) => a.k - b.k);
        if (!top.length) return el("td", {});
        const best = top[0];
        return el("td", {
          class: "lens-cell", style: `background:${sequential(best.prob / maxProb)}`,
          title: top.map((r) => `${r.k}. ${showToken(r.token)} ${fmt(r.prob)}`).join("\n"),
          dataset: { layer, position, token: best.token, value: best.prob },
        }, showToken(best.token), el("span", { class: "prob" }, fmt(best.prob, 3)));
      };
      const layerName = (l) => (l < 0 ? "embed" : `L${l}`);
      clear(grid,
        el("table", { class: "grid", id: "logitlens-grid" },
          el("thead", {}, el("tr", {}, el("th", {}, "layer \\ input"),
            positions.map((p) => el("th", { dataset: { position: p } }, showToken(inputs.get(p)))))),
          el("tbody", {}, layers.map((l) => el("tr", { dataset: { layer: l } }, el("th", {}, layerName(l)),
            positions.map((p) => cell(l, p)))))),
        el("p", { class: "note" }, `positions shown: ${positions.length}; probabilities of the top-1 token; hover for the top-${Math.max(...rows.map((r) => r.k))}`));
    });
    section.append(el("div", { class: "controls" },
      el("button", { type: "button", id: "logitlens-run", onclick: run }, "Run logit lens")), grid);
  },
};
