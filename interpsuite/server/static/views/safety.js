// Failure prediction and anomaly scores for the text box (POST /predict/failure, /detect/anomaly).

import { api } from "../api.js";
import { barChart, clear, diverging, el, fmt, showToken } from "./dom.js";

export default {
  id: "safety",
  title: "Failure & anomaly",
  mount(section, ctx) {
    const predictor = el("input", { id: "failure-predictor", size: 50, placeholder: "predictor folder (empty: the newest run's)" });
    const failureBox = el("div", { id: "failure-box" });
    const detector = el("input", { id: "anomaly-detector", size: 50, placeholder: "detector folder (or give normal texts below)" });
    const normal = el("textarea", { id: "anomaly-normal", rows: 4, cols: 60, placeholder: "normal texts, one per line" });
    const perToken = el("input", { type: "checkbox", id: "anomaly-per-token" });
    const anomalyBox = el("div", { id: "anomaly-box" });

    const predict = () => ctx.guard(async () => {
      const body = { texts: ctx.texts(), top: 5 };
      if (predictor.value.trim()) body.predictor = predictor.value.trim();
      const answer = await api("/predict/failure", { method: "POST", body });
      clear(failureBox, el("p", { class: "note" }, `predictor: ${answer.predictor.path ?? ""}`),
        answer.results.map((r, i) => el("div", { class: "box failure-result", dataset: { index: i, value: r.probability } },
          el("div", {}, el("strong", {}, "P(failure) = "), el("span", { class: "probability", dataset: { value: r.probability } }, fmt(r.probability)),
            " ", el("progress", { max: 1, value: r.probability })),
          el("div", { class: "note" }, r.text),
          r.top_features && r.top_features.length
            ? barChart({ items: r.top_features.map((f) => ({ label: f.name, value: f.contribution })), id: `failure-features-${i}` })
            : null)));
      ctx.setStatus("failure prediction done");
    });

    const detect = () => ctx.guard(async () => {
      const body = { texts: ctx.texts(), per_token: perToken.checked };
      const lines = normal.value.split("\n").map((t) => t.trim()).filter(Boolean);
      if (detector.value.trim()) body.detector = detector.value.trim();
      else body.normal = lines;
      const answer = await api("/detect/anomaly", { method: "POST", body });
      clear(anomalyBox, answer.results.map((r, i) => {
        const tokens = r.tokens && r.token_scores
          ? el("div", { class: "tokens" }, r.tokens.map((t, j) => {
            const max = Math.max(1e-12, ...r.token_scores.map(Math.abs));
            return el("span", { class: "token", style: `background:${diverging(r.token_scores[j] / max)}`,
              title: `${showToken(t)}: ${fmt(r.token_scores[j])}`, dataset: { value: r.token_scores[j] } }, t);
          }))
          : null;
        return el("div", { class: "box anomaly-result", dataset: { index: i, value: r.score, anomalous: r.anomalous } },
          el("div", {}, el("strong", {}, r.anomalous ? "anomalous" : "normal"),
            ` score ${fmt(r.score)} (threshold ${fmt(r.threshold)})`, r.p_value !== undefined ? `, p = ${fmt(r.p_value)}` : ""),
          el("div", { class: "note" }, r.text), tokens);
      }));
      ctx.setStatus("anomaly detection done");
    });

    section.append(
      el("h3", {}, "Failure prediction"),
      el("div", { class: "controls" }, predictor, el("button", { type: "button", id: "failure-run", onclick: predict }, "Predict")),
      failureBox,
      el("h3", {}, "Anomaly detection"),
      el("div", { class: "controls" }, detector, el("label", {}, perToken, "per token"),
        el("button", { type: "button", id: "anomaly-run", onclick: detect }, "Detect")),
      normal, anomalyBox,
    );
  },
};
