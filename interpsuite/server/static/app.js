// The dashboard shell: the shared text box, the progress bar, the status line, and one tab per view.
// Each view module exports {id, title, mount(section, ctx), show?()}; the URL hash picks the tab.

import { analyze, api } from "./api.js";
import { el, status } from "./views/dom.js";
import analyzeView from "./views/analyze.js";
import attentionView from "./views/attention.js";
import attributionView from "./views/attribution.js";
import logitLensView from "./views/logitlens.js";
import patchingView from "./views/patching.js";
import safetyView from "./views/safety.js";
import workbenchView from "./views/workbench.js";
import pruningView from "./views/pruning.js";
import runsView from "./views/runs.js";

const VIEWS = [analyzeView, attentionView, attributionView, logitLensView, patchingView, safetyView, workbenchView,
  pruningView, runsView];

const textBox = document.getElementById("text");
const statusLine = document.getElementById("status");
const progressBox = document.getElementById("progress-box");
const progressBar = document.getElementById("progress");
const progressLabel = document.getElementById("progress-label");

function showProgress(event) {
  progressBox.hidden = false;
  if (event.type === "progress") progressBox.dataset.events = String(Number(progressBox.dataset.events || 0) + 1);
  if (event.total) {
    progressBar.max = event.total;
    progressBar.value = event.done;
  } else {
    progressBar.removeAttribute("value");
  }
  const parts = [event.analyzer, event.desc, event.total ? `${event.done}/${event.total}` : event.kind];
  progressLabel.textContent = parts.filter(Boolean).join(" · ");
  progressBox.dataset.kind = event.kind;
}

const ctx = {
  text: () => textBox.value,
  texts: () => textBox.value.split("\n").map((t) => t.trim()).filter(Boolean),
  setStatus: (message, isError = false) => status(statusLine, message, isError),
  /** Run `analyzers` ({name: options|null}) on the text box through the WebSocket, with progress. */
  async run(analyzers, texts) {
    const given = texts || [ctx.text()];
    if (!given.length || !given[0].trim()) throw new Error("type a text first");
    const names = Object.keys(analyzers).join(", ");
    ctx.setStatus(`running ${names}…`);
    progressBox.dataset.events = "0"; // progress messages received over the WebSocket for this run
    showProgress({ kind: "run_start", analyzer: names, done: 0, total: null });
    try {
      const outcome = await analyze(given, analyzers, showProgress);
      progressBar.max = 1;
      progressBar.value = 1;
      progressLabel.textContent = `${names} · ${outcome.status}`;
      progressBox.dataset.kind = "done";
      const failed = Object.entries(outcome.analyzers || {}).filter(([, a]) => a.status !== "ok");
      if (failed.length) {
        const [name, a] = failed[0];
        throw new Error(`${name}: ${a.error || a.status}`);
      }
      ctx.setStatus(`${names}: ${outcome.status} (run ${outcome.run_id})`);
      return outcome;
    } catch (err) {
      ctx.setStatus(err.message, true);
      progressBox.dataset.kind = "error";
      throw err;
    }
  },
  /**
   * Run a long REST request (no progress events: an export, training an SAE) with the progress bar
   * in its wait state; the bar's data-kind ends "done" or "error" and the status line says which.
   */
  async busy(label, action) {
    progressBox.dataset.events = "0";
    showProgress({ kind: "waiting", desc: label, done: 0, total: null });
    ctx.setStatus(`${label}…`);
    try {
      const answer = await action();
      progressBar.max = 1;
      progressBar.value = 1;
      progressLabel.textContent = `${label} · done`;
      progressBox.dataset.kind = "done";
      return answer;
    } catch (err) {
      progressLabel.textContent = `${label} · failed`;
      progressBox.dataset.kind = "error";
      throw err;
    }
  },
  /** Run an async action, showing its error in the status line (for button handlers). */
  async guard(action) {
    try {
      return await action();
    } catch (err) {
      ctx.setStatus(err.message, true);
      return undefined;
    }
  },
  show,
};

const tabs = document.getElementById("tabs");
const main = document.getElementById("views");
const sections = new Map();

for (const view of VIEWS) {
  const section = el("section", { class: "view", id: `view-${view.id}`, hidden: true }, el("h2", {}, view.title));
  main.append(section);
  sections.set(view.id, { view, section });
  tabs.append(el("button", { type: "button", id: `tab-${view.id}`, dataset: { view: view.id },
    onclick: () => { window.location.hash = view.id; } }, view.title));
  view.mount(section, ctx);
}

function show(id) {
  const target = sections.has(id) ? id : VIEWS[0].id;
  for (const [key, { section }] of sections) section.hidden = key !== target;
  for (const button of tabs.querySelectorAll("button")) button.classList.toggle("active", button.dataset.view === target);
  const { view } = sections.get(target);
  if (view.show) ctx.guard(() => view.show());
}

window.addEventListener("hashchange", () => show(window.location.hash.slice(1)));
show(window.location.hash.slice(1));

api("/health").then((health) => {
  document.getElementById("model-name").textContent = `model: ${health.model ?? ""}`;
}).catch(() => {});
document.body.dataset.ready = "true";
