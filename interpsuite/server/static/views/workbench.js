// The SAE workbench: load an SAE, search its features, read one feature's details, and patch
// features with sliders and toggles while the model's top-k next tokens for the text box update
// live over the WebSocket (`inference` makes the text this connection's live prompt; every patch
// change, from any client, pushes fresh `logits`). Patches export (patches / PEFT LoRA / SAELens) and
// import; with no SAE at hand (a fresh install), "Train a small SAE" trains one on a built-in corpus
// (POST /train-sae with load: true) and opens it here.

import { api, socket } from "../api.js";
import { barChart, clear, el, fmt, outcome, pairs, sequential, showToken } from "./dom.js";

const K = 10;
/** Hook sites POST /train-sae accepts (one d_model or d_mlp vector per token), per block. */
const TRAIN_SITES = ["resid_post", "resid_mid", "resid_pre", "attn.out", "mlp.out", "mlp.post"];

/** The rows shown for a training answer: where it went and how well it reconstructs held-out text. */
function trainRows(answer) {
  const t = answer.train || {};
  const held = t.held_out || {};
  return [["path", answer.path], ["hook", answer.hook], ["width", answer.width], ["architecture", answer.architecture],
    ["corpus", t.corpus], ["tokens", t.tokens], ["steps", t.steps], ["final_loss", t.final_loss],
    ["held_out_explained_variance", held.explained_variance], ["held_out_fvu", held.fvu], ["held_out_l0", held.l0],
    ["seconds", t.seconds]];
}

/** The slider's range for a patch kind (set: up to ten times the feature's max activation, for steering). */
function range(kind, maxActivation) {
  if (kind === "scale") return { min: 0, max: 5, step: 0.05 };
  if (kind === "add") return { min: -20, max: 20, step: 0.1 };
  const top = Math.max(1, Math.ceil((maxActivation || 1) * 10));
  return { min: 0, max: top, step: top / 200 };
}

export default {
  id: "workbench",
  title: "SAE workbench",
  mount(section, ctx) {
    const path = el("input", { id: "wb-path", size: 50, placeholder: "SAE folder, relative to the runs or an artifact dir" });
    const info = el("div", { id: "wb-info", class: "note" }, "no SAE loaded");
    const search = el("input", { id: "wb-search", placeholder: "search top tokens", size: 20 });
    const sort = el("select", { id: "wb-sort" }, ["density", "max", "index"].map((s) => el("option", { value: s }, s)));
    const list = el("ul", { id: "wb-features" });
    const total = el("p", { class: "note", id: "wb-total" });
    const details = el("div", { id: "wb-details" });
    const patchesNode = el("div", { id: "wb-patches" });
    const top = el("div", { id: "wb-top-box" });
    const state = { sae: null, features: new Map(), patches: new Map(), selected: null };

    // --- live logits -----------------------------------------------------------------------------
    const renderLogits = (message) => {
      if (message.text !== undefined && message.text !== ctx.text()) return; // an older prompt's answer
      const clean = new Map((message.clean_top || []).map((t) => [t.id, t.prob]));
      const rows = (message.top || []).map((t, i) => el("tr", { class: "top-row", dataset: { rank: i, token: t.token, id: t.id, value: t.prob } },
        el("td", {}, String(i + 1)), el("td", { class: "top-token" }, showToken(t.token)),
        el("td", { class: "top-prob", dataset: { value: t.prob } }, fmt(t.prob)),
        el("td", { class: "clean-prob", dataset: { value: clean.get(t.id) ?? "" } }, clean.has(t.id) ? fmt(clean.get(t.id)) : "–")));
      const active = (message.active_features || []).slice(0, 10).map(([f, a]) => `${f}: ${fmt(a, 3)}`).join(", ");
      clear(top, el("table", { class: "data", id: "wb-top", dataset: { patches: (message.patches || []).join(",") } },
        el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "next token"), el("th", {}, "prob"), el("th", {}, "clean prob"))),
        el("tbody", {}, rows)),
      el("p", { class: "note" }, `active features at the last token: ${active || "none"}; ${fmt(message.latency_ms, 3)} ms`));
    };
    socket.on("logits", renderLogits);
    const live = () => ctx.guard(() => socket.request({ type: "inference", text: ctx.text(), k: K }, ["logits"]));
    socket.on("open", () => { if (!section.hidden) live(); }); // a new connection has no live prompt yet
    let timer = null;
    document.getElementById("text").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { if (!section.hidden) live(); }, 250);
    });

    // --- patches ---------------------------------------------------------------------------------
    const sending = new Map(); // patch id -> {busy, next}
    const sendValue = async (id, value) => {
      const slot = sending.get(id) || { busy: false, next: null };
      sending.set(id, slot);
      slot.next = value;
      if (slot.busy) return; // the latest value goes out when the one in flight is answered
      slot.busy = true;
      try {
        while (slot.next !== null) {
          const v = slot.next;
          slot.next = null;
          await socket.request({ type: "patch", patch_id: id, value: v }, ["patch"]);
        }
      } catch (err) {
        ctx.setStatus(err.message, true);
      } finally {
        slot.busy = false;
      }
    };
    const renderPatches = () => {
      clear(patchesNode, [...state.patches.values()].map((p) => {
        const feature = state.features.get(p.feature);
        const r = range(p.kind, feature ? feature.max_activation : undefined);
        const label = el("span", { class: "patch-value-label" }, fmt(p.value));
        const slider = el("input", { type: "range", class: "patch-value", min: Math.min(r.min, p.value), max: Math.max(r.max, p.value),
          step: r.step, value: p.value, dataset: { patch: p.id } });
        slider.addEventListener("input", () => {
          label.textContent = fmt(Number(slider.value));
          sendValue(p.id, Number(slider.value));
        });
        const toggle = el("input", { type: "checkbox", class: "patch-enabled", checked: p.enabled, dataset: { patch: p.id } });
        toggle.addEventListener("change", () => ctx.guard(() =>
          socket.request({ type: "patch", patch_id: p.id, enabled: toggle.checked }, ["patch"])));
        const remove = el("button", { type: "button", class: "patch-delete", title: `delete patch ${p.id}`, dataset: { patch: p.id }, onclick: () => ctx.guard(async () => {
          await api(`/patch/${encodeURIComponent(p.id)}`, { method: "DELETE" });
          state.patches.delete(p.id);
          renderPatches();
          await live();
        }) }, "✕");
        return el("div", { class: "patch", dataset: { patchId: p.id, feature: p.feature, kind: p.kind, value: p.value } },
          el("label", {}, toggle, ` feature ${p.feature} · ${p.kind}`), slider, label, remove);
      }));
      if (!state.patches.size) patchesNode.append(el("p", { class: "note" }, "no patches: pick a feature and press Patch"));
    };
    socket.on("patch", (message) => {
      if (!message.patch) return;
      const known = state.patches.get(message.patch.id);
      state.patches.set(message.patch.id, message.patch);
      if (!known || known.kind !== message.patch.kind || known.enabled !== message.patch.enabled) renderPatches();
      else {
        const row = patchesNode.querySelector(`.patch[data-patch-id="${CSS.escape(message.patch.id)}"]`);
        if (row) row.dataset.value = message.patch.value;
      }
    });

    // --- features --------------------------------------------------------------------------------
    const showFeature = (id) => ctx.guard(async () => {
      state.selected = id;
      for (const li of list.querySelectorAll("li")) li.classList.toggle("selected", Number(li.dataset.feature) === id);
      const d = await api(`/feature/${id}/details`);
      const kind = el("select", { id: "wb-kind" }, ["set", "scale", "add"].map((k) => el("option", { value: k }, k)));
      const value = el("input", { id: "wb-value", type: "number", step: "any", value: fmt(d.max_activation * 2 || 1), size: 8 });
      const add = el("button", { type: "button", id: "wb-add-patch", onclick: () => ctx.guard(async () => {
        const v = Number(value.value);
        if (!Number.isFinite(v)) throw new Error("the patch value must be a number");
        await socket.request({ type: "patch", feature: id, kind: kind.value, value: v, enabled: true }, ["patch"]);
      }) }, "Patch");
      const contexts = (d.contexts || []).slice(0, 10).map((c) => {
        const max = Math.max(1e-12, ...c.acts);
        return el("div", { class: "tokens context" }, c.tokens.map((t, i) => el("span", {
          class: i === c.focus ? "token focus" : "token", style: `background:${sequential(c.acts[i] / max)}`,
          title: `${showToken(t)}: ${fmt(c.acts[i])}`, dataset: { value: c.acts[i] } }, t)));
      });
      const logitList = (pairs) => el("ul", {}, (pairs || []).map(([t, v]) => el("li", { dataset: { value: v } }, `${showToken(t)} ${fmt(v)}`)));
      const hist = d.histogram && d.histogram.counts ? d.histogram.counts.map((c, i) => ({ label: fmt(d.histogram.edges[i], 3), value: c })) : [];
      clear(details, el("h3", { id: "wb-feature-title", dataset: { feature: id } }, `feature ${id}`),
        el("p", { class: "note" }, `density ${fmt(d.density)}, max activation ${fmt(d.max_activation)}`),
        el("div", { class: "controls" }, el("label", {}, "kind ", kind), el("label", {}, "value ", value), add),
        el("h4", {}, "top contexts"), contexts,
        el("div", { class: "two-col" }, el("div", {}, el("h4", {}, "promoted tokens"), logitList(d.logits && d.logits.top)),
          el("div", {}, el("h4", {}, "suppressed tokens"), logitList(d.logits && d.logits.bottom))),
        hist.length ? el("div", {}, el("h4", {}, "activation histogram"), barChart({ items: hist, id: "wb-histogram", barHeight: 8 })) : null);
    });
    const loadFeatures = () => ctx.guard(async () => {
      const query = new URLSearchParams({ offset: "0", limit: "100", sort: sort.value });
      if (search.value.trim()) query.set("q", search.value.trim());
      const answer = await api(`/features?${query}`);
      for (const f of answer.features) state.features.set(f.id, f);
      total.textContent = `${answer.total} features match`;
      clear(list, answer.features.map((f) => el("li", { dataset: { feature: f.id, value: f.density }, class: f.id === state.selected ? "selected" : "",
        onclick: () => showFeature(f.id) }, `#${f.id} `, el("span", { class: "note" }, `d=${fmt(f.density, 2)} max=${fmt(f.max_activation, 3)} `),
      (f.top_tokens || []).slice(0, 5).map(showToken).join(" "))));
    });

    // --- the SAE -----------------------------------------------------------------------------------
    const showSae = async (sae) => {
      state.sae = sae;
      info.dataset.width = sae.width;
      clear(info, `${sae.path}: ${sae.architecture} SAE on ${sae.hook}, ${sae.width} features (${sae.n_alive} alive on ${sae.corpus_tokens} corpus tokens)`);
      const { patches } = await api("/patches");
      state.patches = new Map(patches.map((p) => [p.id, p]));
      renderPatches();
      await loadFeatures();
      await live();
    };
    const load = () => ctx.guard(async () => {
      if (!path.value.trim()) throw new Error("give the SAE folder first");
      ctx.setStatus("loading the SAE…");
      const sae = await api("/load-sae", { method: "POST", body: { path: path.value.trim() } });
      await showSae(sae);
      ctx.setStatus(`SAE loaded: ${sae.width} features`);
    });

    // --- export and import the patches --------------------------------------------------------------
    const exportName = el("input", { id: "wb-export-name", size: 20, placeholder: "export name (a folder)" });
    const exportFormat = el("select", { id: "wb-export-format" }, ["patches", "lora", "saelens"].map((f) => el("option", { value: f }, f)));
    const exportOverwrite = el("input", { type: "checkbox", id: "wb-export-overwrite" });
    const exportResult = el("div", { id: "wb-export-result", class: "box", hidden: true });
    const importPath = el("input", { id: "wb-import-path", size: 30, placeholder: "patches folder (e.g. an export's name)" });
    const importResult = el("div", { id: "wb-import-result", class: "box", hidden: true });
    const exportPatches = () => ctx.guard(async () => {
      const name = exportName.value.trim();
      if (!name) throw new Error("give the export a name first");
      const body = { name, format: exportFormat.value, overwrite: exportOverwrite.checked };
      try {
        const answer = await ctx.busy(`export-sae ${body.format}`, () => api("/export-sae", { method: "POST", body }));
        outcome(exportResult, [el("p", {}, `${answer.format} written to `, el("code", { class: "export-path" }, answer.path)),
          el("ul", { class: "export-files" }, answer.files.map((f) => el("li", { dataset: { file: f } }, f)))]);
        exportResult.dataset.format = answer.format;
        if (answer.format === "patches") importPath.value = name;
        ctx.setStatus(`exported ${answer.files.length} files to ${answer.path}`);
      } catch (err) {
        outcome(exportResult, null, err);
        throw err;
      }
    });
    const importPatches = () => ctx.guard(async () => {
      const folder = importPath.value.trim();
      if (!folder) throw new Error("give the patches folder first");
      try {
        const answer = await api("/import-patches", { method: "POST", body: { path: folder } });
        state.patches = new Map(answer.patches.map((p) => [p.id, p]));
        renderPatches();
        outcome(importResult, el("p", { dataset: { count: answer.patches.length } }, `${answer.patches.length} patches imported from ${folder}`));
        ctx.setStatus(`imported ${answer.patches.length} patches`);
        await live();
      } catch (err) {
        outcome(importResult, null, err);
        throw err;
      }
    });

    // --- train a small SAE (a fresh install has none) -------------------------------------------------
    const trainHook = el("select", { id: "wb-train-hook" }, el("option", { value: "" }, "default: a middle layer's resid_post"));
    const trainWidth = el("input", { id: "wb-train-width", type: "number", min: 1, step: 1, value: 512, size: 6 });
    const trainTokens = el("input", { id: "wb-train-tokens", type: "number", min: 64, step: 1, value: 20000, size: 8 });
    const trainArch = el("select", { id: "wb-train-architecture" }, ["topk", "relu", "jumprelu"].map((a) => el("option", { value: a }, a)));
    const trainCorpus = el("select", { id: "wb-train-corpus" }, ["python_docs", "english"].map((c) => el("option", { value: c }, c)));
    const trainName = el("input", { id: "wb-train-name", size: 20, placeholder: "name (empty: automatic)" });
    const trainResult = el("div", { id: "wb-train-result", class: "box", hidden: true });
    const trainButton = el("button", { type: "button", id: "wb-train" }, "Train and load");
    let hooksListed = false;
    const listHooks = async () => {
      if (hooksListed) return;
      const info = await api("/model/info");
      for (let layer = 0; layer < info.n_layers; layer += 1) {
        for (const site of TRAIN_SITES) trainHook.append(el("option", { value: `blocks.${layer}.${site}` }, `blocks.${layer}.${site}`));
      }
      hooksListed = true;
    };
    const train = () => ctx.guard(async () => {
      const width = Number(trainWidth.value);
      const tokens = Number(trainTokens.value);
      if (!Number.isInteger(width) || !Number.isInteger(tokens)) throw new Error("width and tokens must be whole numbers");
      const body = { hook: trainHook.value || null, width, tokens, architecture: trainArch.value, corpus: trainCorpus.value,
        name: trainName.value.trim() || null, load: true };
      trainButton.disabled = true;
      trainResult.hidden = false;
      trainResult.dataset.state = "running";
      clear(trainResult, el("p", { class: "note" }, `training a ${width}-feature SAE on ${tokens} tokens… (the server answers when it is trained and loaded)`));
      try {
        const answer = await ctx.busy(`train-sae ${body.hook || "default hook"} width ${width}`,
          () => api("/train-sae", { method: "POST", body }));
        outcome(trainResult, pairs(trainRows(answer), { id: "wb-train-summary" }));
        trainResult.dataset.path = answer.path;
        path.value = answer.path;
        if (answer.loaded) await showSae(answer.loaded);
        ctx.setStatus(`SAE trained and loaded: ${answer.path}`);
      } catch (err) {
        outcome(trainResult, null, err);
        throw err;
      } finally {
        trainButton.disabled = false;
      }
    });
    trainButton.addEventListener("click", train);
    const trainBox = el("details", { id: "wb-train-box", class: "box" }, el("summary", {}, "Train a small SAE (on a built-in corpus, then load it)"),
      el("div", { class: "controls" }, el("label", {}, "hook ", trainHook), el("label", {}, "width ", trainWidth),
        el("label", {}, "tokens ", trainTokens), el("label", {}, "architecture ", trainArch), el("label", {}, "corpus ", trainCorpus),
        trainName, trainButton), trainResult);

    let searchTimer = null;
    search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadFeatures, 200); });
    sort.addEventListener("change", loadFeatures);
    section.append(
      el("div", { class: "controls" }, path, el("button", { type: "button", id: "wb-load", onclick: load }, "Load SAE")),
      info,
      trainBox,
      el("div", { class: "two-col" },
        el("div", {}, el("div", { class: "controls" }, search, el("label", {}, "sort ", sort)), total, el("div", { class: "feature-list" }, list)),
        el("div", {}, el("h3", {}, "Live next-token prediction"), top, el("h3", {}, "Patches"), patchesNode,
          el("div", { class: "controls" }, exportName, el("label", {}, "format ", exportFormat), el("label", {}, exportOverwrite, "overwrite"),
            el("button", { type: "button", id: "wb-export", onclick: exportPatches }, "Export")),
          exportResult,
          el("div", { class: "controls" }, importPath, el("button", { type: "button", id: "wb-import", onclick: importPatches }, "Import patches")),
          importResult, details)),
    );
    renderPatches();
    this.show = async () => {
      await listHooks();
      try {
        await showSae(await api("/sae"));
      } catch (err) {
        if (err.status !== 404) throw err;
        clear(info, "no SAE loaded: give an SAE folder above, or train a small one");
        trainBox.open = true;
        await live();
      }
    };
  },
};
