// Token attributions: each token of the text coloured by its attribution (red negative, blue
// positive, scaled by the largest magnitude), with the value in its tooltip and data-value.

import { clear, diverging, el, fmt, showToken, table } from "./dom.js";

export default {
  id: "attribution",
  title: "Attributions",
  mount(section, ctx) {
    const method = el("select", { id: "attribution-method" });
    const tokensNode = el("div", { class: "tokens", id: "attribution-tokens" });
    const info = el("p", { class: "note", id: "attribution-target" });
    const agreement = el("div", { id: "attribution-agreement" });
    let result = null;

    const draw = () => {
      if (!result) return;
      const rows = result.tables.token_scores.filter((r) => r.text_id === 0);
      const m = method.value;
      const max = Math.max(1e-12, ...rows.map((r) => Math.abs(r[m] ?? 0)));
      clear(tokensNode, rows.map((r) => el("span", {
        class: "token", style: `background:${diverging((r[m] ?? 0) / max)}`,
        title: `${showToken(r.token)} (position ${r.position}): ${m} = ${fmt(r[m])}`,
        dataset: { position: r.position, value: r[m], token: r.token },
      }, r.token)));
      const summary = (result.summary.texts || [])[0];
      info.textContent = summary ? `target: ${summary.target} (value ${fmt(summary.target_value)})` : "";
    };

    const run = () => ctx.guard(async () => {
      const outcome = await ctx.run({ token_attribution: { max_texts: 1 } });
      result = outcome.analyzers.token_attribution;
      const methods = result.summary.methods || [];
      clear(method, methods.map((m) => el("option", { value: m }, m)));
      draw();
      clear(agreement, el("h4", {}, "method agreement"), table(result.tables.method_agreement || []));
    });

    method.addEventListener("change", draw);
    section.append(
      el("div", { class: "controls" }, el("button", { type: "button", id: "attribution-run", onclick: run }, "Run attributions"),
        el("label", {}, "method ", method)),
      info, tokensNode, agreement,
    );
  },
};
