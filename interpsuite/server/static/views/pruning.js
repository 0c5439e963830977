// Pruning impact curves: a task's value against sparsity, with confidence bands and the unpruned
// baseline (POST /api/pruning/impact-analysis on the texts of the text box).

import { api } from "../api.js";
import { clear, el, lineChart, table } from "./dom.js";

export default {
  id: "pruning",
  title: "Pruning",
  mount(section, ctx) {
    const criterion = el("select", { id: "pruning-criterion" }, ["activation", "taylor", "ablation"].map((c) => el("option", { value: c }, c)));
    const granularity = el("select", { id: "pruning-granularity" }, ["neurons", "heads", "unstructured"].map((g) => el("option", { value: g }, g)));
    const sparsities = el("input", { id: "pruning-sparsities", value: "0.1, 0.2, 0.3, 0.5", size: 20 });
    const tasks = el("input", { id: "pruning-tasks", value: "perplexity", size: 30 });
    const charts = el("div", { id: "pruning-charts" });

    const run = () => ctx.guard(async () => {
      const values = sparsities.value.split(",").map((s) => Number(s.trim())).filter((s) => Number.isFinite(s));
      const body = { texts: ctx.texts(), criterion: criterion.value, granularity: granularity.value, sparsities: values,
        tasks: tasks.value.split(",").map((t) => t.trim()).filter(Boolean) };
      ctx.setStatus("pruning impact analysis running…");
      const answer = await api("/api/pruning/impact-analysis", { method: "POST", body });
      clear(charts);
      for (const [task, points] of Object.entries(answer.curves || {})) {
        const series = [{ name: task, points: points.map((p) => ({ x: p.sparsity, y: p.value, lo: p.ci_low, hi: p.ci_high })) }];
        const baseline = (answer.baseline || {})[task];
        charts.append(el("div", { class: "box", dataset: { task } }, el("h4", {}, task),
          lineChart({ series, baselines: Number.isFinite(baseline) ? [{ name: "unpruned", y: baseline }] : [],
            id: `pruning-curve-${task}`, xLabel: "sparsity", yLabel: task }),
          table(points)));
      }
      ctx.setStatus("pruning impact analysis done");
    });

    section.append(el("div", { class: "controls" }, el("label", {}, "criterion ", criterion), el("label", {}, "granularity ", granularity),
      el("label", {}, "sparsities ", sparsities), el("label", {}, "tasks ", tasks),
      el("button", { type: "button", id: "pruning-run", onclick: run }, "Run impact analysis")), charts);
  },
};
