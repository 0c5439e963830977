// Any analyzer on the text box: the picker lists the registry's analyzers (from the OpenAPI schema
// the server generates from their Config dataclasses), the options box starts at their defaults.

import { api, fileUrl } from "../api.js";
import { clear, el, table } from "./dom.js";

let schemas = null;

/** {name: {description, defaults}} from /openapi.json (cached). */
export async function analyzerSchemas() {
  if (schemas) return schemas;
  const openapi = await api("/openapi.json");
  const components = openapi.components.schemas;
  const out = {};
  for (const [name, prop] of Object.entries(components.Analyzers.properties)) {
    const ref = (prop.anyOf || []).map((a) => a.$ref).find(Boolean);
    const options = ref ? components[ref.split("/").pop()] : null;
    const defaults = {};
    for (const [key, field] of Object.entries(options ? options.properties : {})) {
      if ("default" in field) defaults[key] = field.default;
    }
    out[name] = { description: prop.description || "", defaults };
  }
  schemas = out;
  return out;
}

/** Metrics, tables and figures of one analyzer's result, generically. */
export async function renderResult(node, name, result) {
  clear(node, el("h3", {}, name), el("p", { class: "note" }, `status ${result.status}`, result.cached ? " (cached)" : ""));
  if (result.error) node.append(el("p", { class: "error" }, result.error));
  const metrics = Object.entries(result.metrics || {}).map(([metric, value]) => ({ metric, value }));
  if (metrics.length) node.append(el("h4", {}, "metrics"), table(metrics, { limit: 100 }));
  for (const [tableName, rows] of Object.entries(result.tables || {})) {
    if (Array.isArray(rows)) node.append(el("h4", {}, `table ${tableName} (${rows.length} rows)`), table(rows, { limit: 20 }));
  }
  const figures = el("div", { class: "figures" });
  node.append(figures);
  for (const url of result.figures || []) {
    if (!String(url).endsWith(".png")) continue;
    const img = el("img", { alt: url, title: url });
    figures.append(img);
    fileUrl(url).then((src) => { img.src = src; }).catch(() => { img.alt = `${url} (not loaded)`; });
  }
  for (const [artifact, url] of Object.entries(result.artifacts || {})) {
    node.append(el("p", {}, "artifact ", el("a", { href: url, target: "_blank", rel: "noopener" }, artifact)));
  }
  const checks = Object.entries(result.checks || {}).map(([check, c]) => ({ check, value: c.value, threshold: c.threshold, passed: c.passed }));
  if (checks.length) node.append(el("h4", {}, "checks"), table(checks));
}

export default {
  id: "analyze",
  title: "Analyze",
  mount(section, ctx) {
    const picker = el("select", { id: "analyzer-picker" });
    const description = el("p", { class: "note", id: "analyzer-description" });
    const options = el("textarea", { class: "options", id: "analyzer-options", rows: 6, spellcheck: "false" });
    const output = el("div", { id: "analyze-output" });
    const fill = async () => {
      const all = await analyzerSchemas();
      const info = all[picker.value];
      description.textContent = info ? info.description : "";
      options.value = JSON.stringify(info ? info.defaults : {}, null, 1);
    };
    const run = () => ctx.guard(async () => {
      let parsed;
      try {
        parsed = options.value.trim() ? JSON.parse(options.value) : null;
      } catch (err) {
        throw new Error(`the options are not JSON: ${err.message}`);
      }
      const name = picker.value;
      const outcome = await ctx.run({ [name]: parsed }, ctx.texts());
      await renderResult(output, name, outcome.analyzers[name]);
    });
    picker.addEventListener("change", () => ctx.guard(fill));
    section.append(
      el("div", { class: "controls" }, el("label", {}, "analyzer ", picker),
        el("button", { type: "button", id: "analyze-run", onclick: run }, "Run")),
      description,
      el("p", { class: "note" }, "options (JSON; the analyzer's config keys). One text per line of the text box."),
      options, output,
    );
    this.ready = ctx.guard(async () => {
      const all = await analyzerSchemas();
      for (const [name, info] of Object.entries(all)) picker.append(el("option", { value: name, title: info.description }, name));
      await fill();
    });
  },
};
