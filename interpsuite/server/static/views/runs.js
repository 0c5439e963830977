// Earlier runs: the list (GET /runs), and one run's analyzers with metrics and figures as PNGs
// from the run's files (GET /runs/{id}, /runs/{id}/files/...).

import { api, fileUrl } from "../api.js";
import { clear, el, fmt, table } from "./dom.js";

function pngs(figures) {
  const out = [];
  for (const value of Object.values(figures || {})) {
    for (const path of [value].flat()) if (String(path).endsWith(".png")) out.push(path);
  }
  return out;
}

export default {
  id: "runs",
  title: "Runs",
  mount(section, ctx) {
    const list = el("ul", { class: "runs", id: "runs-list" });
    const detail = el("div", { id: "run-detail" });

    const open = (runId) => ctx.guard(async () => {
      const run = await api(`/runs/${encodeURIComponent(runId)}`);
      clear(detail, el("h3", {}, runId), el("p", { class: "note" }, `status ${run.status}, model ${run.model ? run.model.name : ""}`));
      for (const [name, a] of Object.entries(run.analyzers || {})) {
        const metrics = Object.entries(a.metrics || {}).map(([metric, value]) => ({ metric, value: fmt(value) }));
        const figures = el("div", { class: "figures" });
        detail.append(el("div", { class: "box run-analyzer", dataset: { analyzer: name } }, el("h4", {}, `${name} (${a.status})`),
          a.error ? el("p", { class: "error" }, a.error) : null, metrics.length ? table(metrics) : null, figures));
        for (const path of pngs(a.figures)) {
          const url = `/runs/${encodeURIComponent(runId)}/files/${path}`;
          const img = el("img", { alt: path, title: path, class: "run-figure", dataset: { path } });
          figures.append(img);
          fileUrl(url).then((src) => { img.src = src; }).catch(() => { img.alt = `${path} (not loaded)`; });
        }
      }
    });

    const refresh = () => ctx.guard(async () => {
      const { runs } = await api("/runs");
      clear(list, runs.map((r) => el("li", { dataset: { run: r.id }, onclick: () => open(r.id) },
        `${r.id} — ${(r.analyzers || []).join(", ")} (${r.status})`)));
      if (!runs.length) list.append(el("li", {}, "no runs yet"));
    });

    section.append(el("div", { class: "controls" }, el("button", { type: "button", id: "runs-refresh", onclick: refresh }, "Refresh")),
      el("div", { class: "two-col" }, list, detail));
    this.show = refresh;
  },
};
