// Pruning: impact curves (a task's value against sparsity, confidence bands, the unpruned baseline),
// batch analysis (one curve per criterion on one chart), a plan at one sparsity (candidates, with
// its plan id) and the export of a plan as a pruned Hugging Face folder, checked against the masked
// model. All of it on the texts of the text box (one per line), through /api/pruning/*.

import { api } from "../api.js";
import { clear, el, fmt, lineChart, outcome, pairs, table } from "./dom.js";

/** The criteria of each granularity (plugins/pruning/criteria.py CRITERIA). */
const CRITERIA = {
  neurons: ["activation", "taylor", "ablation"],
  heads: ["taylor", "ablation"],
  unstructured: ["magnitude", "wanda"],
};

function select(id, values) {
  return el("select", { id }, values.map((v) => el("option", { value: v }, v)));
}

/** Keep `criterion`'s options those of the chosen granularity (the current one kept when valid). */
function follow(granularity, criterion) {
  const sync = () => {
    const keep = criterion.value;
    const allowed = CRITERIA[granularity.value] || [];
    clear(criterion, allowed.map((c) => el("option", { value: c }, c)));
    if (allowed.includes(keep)) criterion.value = keep;
  };
  granularity.addEventListener("change", sync);
  sync();
}

function numbers(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map(Number).filter((s) => Number.isFinite(s));
}

function words(text) {
  return text.split(",").map((t) => t.trim()).filter(Boolean);
}

/** Curves per task: `series(task)` -> [{name, points}] drawn on one chart with the baseline. */
function curveBoxes(node, answerTasks, series, baselineOf, idPrefix) {
  clear(node);
  for (const task of answerTasks) {
    const lines = series(task);
    const baseline = baselineOf(task);
    node.append(el("div", { class: "box", dataset: { task } }, el("h4", {}, task),
      lineChart({ series: lines, baselines: Number.isFinite(baseline) ? [{ name: "unpruned", y: baseline }] : [],
        id: `${idPrefix}-${task}`, xLabel: "sparsity", yLabel: task }),
      lines.length === 1 ? table(lines[0].rows) : null));
  }
}

const toPoints = (rows) => rows.map((p) => ({ x: p.sparsity, y: p.value, lo: p.ci_low, hi: p.ci_high }));

export default {
  id: "pruning",
  title: "Pruning",
  mount(section, ctx) {
    // --- impact curves and batch analysis ---------------------------------------------------------
    const granularity = select("pruning-granularity", Object.keys(CRITERIA));
    const criterion = select("pruning-criterion", CRITERIA.neurons);
    follow(granularity, criterion);
    const sparsities = el("input", { id: "pruning-sparsities", value: "0.1, 0.2, 0.3, 0.5", size: 20 });
    const tasks = el("input", { id: "pruning-tasks", value: "perplexity", size: 30 });
    const batchCriteria = el("input", { id: "pruning-batch-criteria", value: "activation, taylor", size: 24 });
    const charts = el("div", { id: "pruning-charts" });
    granularity.addEventListener("change", () => { // criteria of another granularity would be refused
      const allowed = CRITERIA[granularity.value] || [];
      if (!words(batchCriteria.value).every((c) => allowed.includes(c))) batchCriteria.value = allowed.join(", ");
    });

    const run = () => ctx.guard(async () => {
      const body = { texts: ctx.texts(), criterion: criterion.value, granularity: granularity.value,
        sparsities: numbers(sparsities.value), tasks: words(tasks.value) };
      const answer = await ctx.busy("pruning impact analysis", () => api("/api/pruning/impact-analysis", { method: "POST", body }));
      const curves = answer.curves || {};
      curveBoxes(charts, Object.keys(curves), (task) => [{ name: task, points: toPoints(curves[task]), rows: curves[task] }],
        (task) => (answer.baseline || {})[task], "pruning-curve");
      ctx.setStatus("pruning impact analysis done");
    });

    const batch = () => ctx.guard(async () => {
      const criteria = words(batchCriteria.value);
      if (criteria.length < 1) throw new Error("list the criteria to compare, separated by commas");
      const body = { texts: ctx.texts(), criteria, granularity: granularity.value, sparsities: numbers(sparsities.value),
        tasks: words(tasks.value) };
      const answer = await ctx.busy(`pruning batch analysis (${criteria.join(", ")})`,
        () => api("/api/pruning/batch-analysis", { method: "POST", body }));
      const results = answer.results || {};
      const first = results[criteria[0]] || {};
      curveBoxes(charts, Object.keys(first.curves || {}),
        (task) => criteria.map((c) => ({ name: c, points: toPoints(((results[c] || {}).curves || {})[task] || []) })),
        (task) => (first.baseline || {})[task], "pruning-batch");
      ctx.setStatus(`pruning batch analysis done: ${criteria.length} criteria`);
    });

    // --- candidates: one plan at one sparsity ------------------------------------------------------
    const candGranularity = select("pruning-cand-granularity", Object.keys(CRITERIA));
    const candCriterion = select("pruning-cand-criterion", CRITERIA.neurons);
    follow(candGranularity, candCriterion);
    const candSparsity = el("input", { id: "pruning-cand-sparsity", type: "number", min: 0, max: 0.99, step: "any", value: 0.2, size: 6 });
    const planBox = el("div", { id: "pruning-plan", class: "box", hidden: true });

    // --- export of a plan ----------------------------------------------------------------------------
    const exportPlan = el("input", { id: "pruning-export-plan", size: 20, placeholder: "plan id" });
    const exportName = el("input", { id: "pruning-export-name", size: 20, placeholder: "export name (a folder)" });
    const exportOverwrite = el("input", { type: "checkbox", id: "pruning-export-overwrite" });
    const exportBox = el("div", { id: "pruning-export-result", class: "box", hidden: true });

    const candidates = () => ctx.guard(async () => {
      const sparsity = Number(candSparsity.value);
      if (!Number.isFinite(sparsity)) throw new Error("the sparsity must be a number in [0, 1)");
      const body = { texts: ctx.texts(), criterion: candCriterion.value, granularity: candGranularity.value, sparsity };
      try {
        const answer = await ctx.busy(`pruning candidates ${body.criterion}`, () => api("/api/pruning/candidates", { method: "POST", body }));
        const s = answer.summary || {};
        const rows = [["plan_id", answer.plan_id], ["granularity", s.granularity], ["criterion", s.criterion], ["scope", s.scope],
          ["sparsity", s.sparsity], ["achieved_sparsity", s.achieved_sparsity], ["pruned", s.pruned], ["total", s.total]];
        if (s.modules !== undefined) rows.push(["modules", s.modules]);
        for (const [layer, n] of Object.entries(s.per_layer || {})) rows.push([`layer ${layer}`, n]);
        outcome(planBox, pairs(rows, { id: "pruning-plan-summary" }));
        planBox.dataset.planId = answer.plan_id;
        exportPlan.value = answer.plan_id;
        ctx.setStatus(`plan ${answer.plan_id}: ${s.pruned} of ${s.total} pruned`);
      } catch (err) {
        outcome(planBox, null, err);
        throw err;
      }
    });

    const exportRun = () => ctx.guard(async () => {
      const body = { plan_id: exportPlan.value.trim(), name: exportName.value.trim(), overwrite: exportOverwrite.checked };
      if (!body.plan_id || !body.name) throw new Error("give a plan id (make a plan above) and an export name");
      try {
        const report = await ctx.busy(`pruning export ${body.name}`, () => api("/api/pruning/export", { method: "POST", body }));
        outcome(exportBox, [
          el("p", { class: report.passed ? "" : "error" }, el("strong", { class: "export-passed", dataset: { value: report.passed } },
            report.passed ? "passed" : "FAILED"),
          ` the reloaded folder's logits are within ${fmt(report.tolerance)} of the masked model's`),
          pairs([["path", report.path], ["max_abs_logit_diff", report.max_abs_logit_diff], ["tolerance", report.tolerance],
            ["physical", String(report.physical)], ["overall_sparsity", report.overall_sparsity],
            ["parameters_before", report.parameters_before], ["parameters_after", report.parameters_after]], { id: "pruning-export-report" }),
          (report.notes || []).length ? el("ul", { class: "note" }, report.notes.map((n) => el("li", {}, n))) : null,
          el("ul", { class: "export-files" }, (report.files || []).map((f) => el("li", { dataset: { file: f } }, f)))]);
        exportBox.dataset.passed = String(report.passed);
        ctx.setStatus(`exported plan ${body.plan_id} to ${report.path}`);
      } catch (err) {
        outcome(exportBox, null, err);
        throw err;
      }
    });

    section.append(
      el("h3", {}, "Impact curves"),
      el("div", { class: "controls" }, el("label", {}, "granularity ", granularity), el("label", {}, "criterion ", criterion),
        el("label", {}, "sparsities ", sparsities), el("label", {}, "tasks ", tasks),
        el("button", { type: "button", id: "pruning-run", onclick: run }, "Run impact analysis")),
      el("div", { class: "controls" }, el("label", {}, "compare criteria ", batchCriteria),
        el("button", { type: "button", id: "pruning-batch-run", onclick: batch }, "Run batch analysis"),
        el("span", { class: "note" }, "one curve per criterion, same granularity, sparsities and tasks")),
      charts,
      el("h3", {}, "Plan (candidates)"),
      el("div", { class: "controls" }, el("label", {}, "granularity ", candGranularity), el("label", {}, "criterion ", candCriterion),
        el("label", {}, "sparsity ", candSparsity),
        el("button", { type: "button", id: "pruning-cand-run", onclick: candidates }, "Make plan")),
      planBox,
      el("h3", {}, "Export a plan"),
      el("div", { class: "controls" }, exportPlan, exportName, el("label", {}, exportOverwrite, "overwrite"),
        el("button", { type: "button", id: "pruning-export-run", onclick: exportRun }, "Export pruned model")),
      exportBox,
    );
  },
};
