// Mechanistic heatmaps: activation patching (layer x position per site, and layer x head; the
// analyzer builds its own clean/corrupted pairs) and head ablation (layer x head effect per strategy,
// on the texts of the text box).

import { clear, el, heatmap, showToken } from "./dom.js";

function grid(rows, rowKey, colKey, valueKey) {
  const rowIds = [...new Set(rows.map((r) => r[rowKey]))].sort((a, b) => a - b);
  const colIds = [...new Set(rows.map((r) => r[colKey]))].sort((a, b) => a - b);
  const index = new Map(rows.map((r) => [`${r[rowKey]}/${r[colKey]}`, r[valueKey]]));
  const values = rowIds.map((r) => colIds.map((c) => (index.has(`${r}/${c}`) ? index.get(`${r}/${c}`) : null)));
  return { rowIds, colIds, values };
}

export default {
  id: "patching",
  title: "Patching & ablation",
  mount(section, ctx) {
    const site = el("select", { id: "patching-site" }, ["resid_pre", "attn_out", "mlp_out"].map((s) => el("option", { value: s }, s)));
    const patchBox = el("div", { id: "patching-box" });
    const strategy = el("select", { id: "ablation-strategy" });
    const ablationBox = el("div", { id: "ablation-box" });
    let patching = null;
    let ablation = null;

    const drawPatching = () => {
      if (!patching) return;
      const rows = patching.tables[site.value] || [];
      const { rowIds, colIds, values } = grid(rows, "layer", "position", "patched");
      const tokens = new Map(rows.map((r) => [r.position, r.token]));
      const heads = grid(patching.tables.heads || [], "layer", "head", "patched");
      const example = patching.summary.example || {};
      clear(patchBox,
        el("p", { class: "note" }, `clean: ${example.clean ?? ""} | corrupted: ${example.corrupted ?? ""} (1 = clean, 0 = corrupted)`),
        heatmap({ values, rowLabels: rowIds.map((l) => `L${l}`), colLabels: colIds.map((p) => `${p}:${showToken(tokens.get(p))}`),
          id: "patching-heatmap", mode: "diverging", cell: 14, rowTitle: "layer", colTitle: "position", title: site.value }),
        el("h4", {}, "heads"),
        heatmap({ values: heads.values, rowLabels: heads.rowIds.map((l) => `L${l}`), colLabels: heads.colIds.map((h) => `H${h}`),
          id: "patching-heads", mode: "diverging", rowTitle: "layer", colTitle: "head" }));
    };
    const drawAblation = () => {
      if (!ablation) return;
      const rows = ablation.tables.effects.filter((r) => r.strategy === strategy.value);
      const { rowIds, colIds, values } = grid(rows, "layer", "head", "effect");
      clear(ablationBox, el("p", { class: "note" }, `effect on ${ablation.summary.metric ?? "the metric"} of ablating each head (${strategy.value})`),
        heatmap({ values, rowLabels: rowIds.map((l) => `L${l}`), colLabels: colIds.map((h) => `H${h}`), id: "ablation-heatmap",
          mode: "diverging", rowTitle: "layer", colTitle: "head" }));
    };

    const runPatching = () => ctx.guard(async () => {
      const outcome = await ctx.run({ activation_patching: null });
      patching = outcome.analyzers.activation_patching;
      drawPatching();
    });
    const runAblation = () => ctx.guard(async () => {
      const texts = ctx.texts();
      const strategies = texts.length > 1 ? ["zero", "mean", "resample"] : ["zero", "mean"];
      const outcome = await ctx.run({ head_ablation: { strategies } }, texts);
      ablation = outcome.analyzers.head_ablation;
      const names = [...new Set(ablation.tables.effects.map((r) => r.strategy))];
      clear(strategy, names.map((s) => el("option", { value: s }, s)));
      drawAblation();
    });
    site.addEventListener("change", drawPatching);
    strategy.addEventListener("change", drawAblation);
    section.append(
      el("h3", {}, "Activation patching"),
      el("div", { class: "controls" }, el("button", { type: "button", id: "patching-run", onclick: runPatching }, "Run activation patching"),
        el("label", {}, "site ", site)),
      patchBox,
      el("h3", {}, "Head ablation"),
      el("div", { class: "controls" }, el("button", { type: "button", id: "ablation-run", onclick: runAblation }, "Run head ablation"),
        el("label", {}, "strategy ", strategy)),
      ablationBox,
    );
  },
};
