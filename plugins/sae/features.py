"""What an SAE's latents respond to: the data behind a feature browser, from one pass over text.

`feature_report(model, sae, texts)` streams the texts once and gives, for a chosen set of
latents, what SAELens / sae_vis / Neuronpedia show on a feature's page:

- every latent's density (fraction of tokens it is active on), max activation and mean
  activation when active (the global numbers that pick which features to browse);
- per chosen latent: the top activating tokens with a window of context and the latent's
  activation on every token of the window (for per-token highlighting); samples from equal-width
  intervals of its activation range (sae_vis "quantiles": the top examples alone hide what the
  feature does at ordinary strength); a histogram of its non-zero activations; its direct logit
  effects (decoder row through the final norm's scale and the unembedding, as TransformerLens
  folds ln_final; causal LMs only); and the latents that fire on the same tokens most (Jaccard).

Activations are kept sparsely (token row, latent, value for value > 0) with each row's token id,
text and position, so memory grows with L0 x tokens, not width x tokens: a 16k-latent SAE over a
million tokens at L0 = 64 holds ~64M entries instead of 16G. Everything after the pass is
computed from that store, and everything random is seeded (`seed`), so a report is a pure
function of its inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from interpsuite.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from interpsuite.models import HookedModel

__all__ = [
    "SELECTIONS",
    "CoFiring",
    "FeatureContext",
    "FeatureEntry",
    "FeatureReport",
    "LogitEffects",
    "QuantileGroup",
    "feature_report",
]

#: how `top_n` features are chosen when `features` is not given
SELECTIONS = ("active", "max", "random")
#: significant digits of floats in `FeatureReport.to_json` (activations are read as colours and
#: 3-4 digits; more would only make a 1,000-feature browser file larger)
JSON_DIGITS = 4
#: features per chunk of the logit-effect matmul (bounds a [chunk, vocab] temporary)
LOGIT_CHUNK = 256


# --- the report ---------------------------------------------------------------------------


@dataclass
class FeatureContext:
    """A window of tokens around one token (the focus) with the feature's activation on each."""

    text_id: int
    position: int  # the focus token's position in its text
    focus: int  # index of the focus token in `tokens`
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]  # the feature's activation on every token of the window
    activation: float  # on the focus token
    max_activation: float  # over the window

    @property
    def token(self) -> str:
        return self.tokens[self.focus]


@dataclass
class QuantileGroup:
    """One equal-width interval of a feature's non-zero activation range and a seeded sample of
    its tokens. `low <= activation < high`, the last interval also includes `high`."""

    low: float
    high: float
    count: int
    samples: list[FeatureContext]


@dataclass
class LogitEffects:
    """The logits a feature's decoder direction raises (`top`) and lowers (`bottom`) directly."""

    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]
    top_ids: list[int]
    bottom_ids: list[int]


@dataclass
class CoFiring:
    """Another feature and how often it is active on the same tokens: `count` tokens where both
    are, Jaccard = count / |tokens where either is|."""

    feature: int
    count: int
    jaccard: float


@dataclass
class FeatureEntry:
    """Everything the browser shows for one feature."""

    feature: int
    density: float
    max_activation: float
    mean_active: float
    n_active: int
    top_contexts: list[FeatureContext]
    quantiles: list[QuantileGroup]
    histogram_counts: np.ndarray  # of the non-zero activations
    histogram_edges: np.ndarray  # uniform bins, len(counts) + 1
    logit_effects: LogitEffects | None
    cofiring: list[CoFiring]
    note: str = ""

    @property
    def dead(self) -> bool:
        return self.n_active == 0

    @property
    def top_token(self) -> str | None:
        return self.top_contexts[0].token if self.top_contexts else None

    @property
    def top_logit(self) -> str | None:
        return self.logit_effects.top[0][0] if self.logit_effects and self.logit_effects.top else None


@dataclass
class FeatureReport:
    """Global latent statistics over all tokens and an entry per chosen feature.

    `density`, `max_activation` and `mean_active` are [width] arrays (mean_active is 0 for
    dead latents); `features` is the chosen features in the order chosen."""

    model_name: str
    hook: str
    width: int
    n_tokens: int
    n_texts: int
    density: np.ndarray
    max_activation: np.ndarray
    mean_active: np.ndarray
    features: list[int]
    entries: dict[int, FeatureEntry]
    selection: str = "active"
    seed: int = 0
    context_window: tuple[int, int] = (12, 4)
    is_causal: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def n_dead(self) -> int:
        return int((self.density == 0).sum())

    def summary_table(self) -> pd.DataFrame:
        """One row per chosen feature, in the order chosen."""
        import pandas as pd

        rows = []
        for f in self.features:
            entry = self.entries[f]
            effects = entry.logit_effects
            rows.append(
                {
                    "feature": f,
                    "density": entry.density,
                    "max_activation": entry.max_activation,
                    "mean_active": entry.mean_active,
                    "n_active": entry.n_active,
                    "top_token": entry.top_token,
                    "top_activation": entry.top_contexts[0].activation if entry.top_contexts else None,
                    "top_logit": entry.top_logit,
                    "bottom_logit": effects.bottom[0][0] if effects and effects.bottom else None,
                    "top_cofiring": entry.cofiring[0].feature if entry.cofiring else None,
                    "top_cofiring_jaccard": entry.cofiring[0].jaccard if entry.cofiring else None,
                }
            )
        return pd.DataFrame(rows)

    def cards(self, features: Sequence[int] | None = None, limit: int = 8, n_logits: int = 3) -> list[dict]:
        """Plain-list data for `feature_plots.plot_feature_cards` (the first `limit` features)."""
        chosen = list(features) if features is not None else self.features
        cards = []
        for f in chosen[:limit]:
            entry = self.entries[int(f)]
            effects = entry.logit_effects
            cards.append(
                {
                    "feature": int(f),
                    "density": float(entry.density),
                    "counts": [int(c) for c in entry.histogram_counts],
                    "edges": [float(e) for e in entry.histogram_edges],
                    "top_logits": [t for t, _ in effects.top[:n_logits]] if effects else [],
                    "top_token": entry.top_token or "",
                }
            )
        return cards

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-serialisable dict (what the browser embeds and the analyzer saves).

        Floats are rounded to 4 significant digits. Token strings are interned: `tokens` is the
        list of distinct strings and everything else refers to them by index. Schema::

            {version, model, hook, width, n_tokens, n_texts, n_dead, selection, seed,
             context_window: [before, after], is_causal, tokens: [str],
             entries: [{id, density, max, mean, n, top_token (index or null), note,
                        top: [context], quantiles: [{lo, hi, n, samples: [context]}],
                        hist: {counts: [int], lo, hi} (uniform bins),
                        logits: {top: [[token, value]], bottom: [[token, value]]} | null,
                        cofiring: [[feature, count, jaccard]]}]}
            context = {t: text_id, p: position, i: focus index, k: [token], a: [activation]}
        """
        vocab: dict[str, int] = {}

        def tok(text: str) -> int:
            index = vocab.get(text)
            if index is None:
                index = vocab[text] = len(vocab)
            return index

        def context(c: FeatureContext) -> dict[str, Any]:
            return {"t": c.text_id, "p": c.position, "i": c.focus, "k": [tok(t) for t in c.tokens], "a": _round(c.acts)}

        entries = []
        for f in self.features:
            e = self.entries[f]
            effects = e.logit_effects
            entries.append(
                {
                    "id": f,
                    "density": _sig(e.density),
                    "max": _sig(e.max_activation),
                    "mean": _sig(e.mean_active),
                    "n": e.n_active,
                    "top_token": tok(e.top_token) if e.top_token is not None else None,
                    "note": e.note,
                    "top": [context(c) for c in e.top_contexts],
                    "quantiles": [
                        {
                            "lo": _sig(q.low),
                            "hi": _sig(q.high),
                            "n": q.count,
                            "samples": [context(c) for c in q.samples],
                        }
                        for q in e.quantiles
                    ],
                    "hist": {
                        "counts": [int(c) for c in e.histogram_counts],
                        "lo": _sig(e.histogram_edges[0]),
                        "hi": _sig(e.histogram_edges[-1]),
                    },
                    "logits": None
                    if effects is None
                    else {
                        "top": [[tok(t), _sig(v)] for t, v in effects.top],
                        "bottom": [[tok(t), _sig(v)] for t, v in effects.bottom],
                    },
                    "cofiring": [[c.feature, c.count, _sig(c.jaccard)] for c in e.cofiring],
                }
            )
        return {
            "version": 1,
            "model": self.model_name,
            "hook": self.hook,
            "width": self.width,
            "n_tokens": self.n_tokens,
            "n_texts": self.n_texts,
            "n_dead": self.n_dead,
            "selection": self.selection,
            "seed": self.seed,
            "context_window": list(self.context_window),
            "is_causal": self.is_causal,
            "tokens": list(vocab),
            "entries": entries,
        }


def _sig(value: float, digits: int = JSON_DIGITS) -> float | None:
    value = float(value)
    if not np.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _round(values: Sequence[float]) -> list[float | None]:
    return [0 if v == 0 else _sig(v) for v in values]


# --- the pass -----------------------------------------------------------------------------


@dataclass
class _Store:
    """The sparse activations of one pass. Token rows are numbered in reading order (text by
    text, position by position), so a text's tokens are consecutive rows and a window is a
    row range."""

    width: int
    rows: list[np.ndarray] = field(default_factory=list)
    feats: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    token_ids: list[np.ndarray] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)  # the caller's index of each text seen
    text_start: list[int] = field(default_factory=list)  # its first row
    text_len: list[int] = field(default_factory=list)
    n: int = 0

    def __post_init__(self) -> None:
        self.fires = np.zeros(self.width, dtype=np.int64)
        self.maxes = np.zeros(self.width, dtype=np.float64)
        self.sums = np.zeros(self.width, dtype=np.float64)

    def add(self, acts: torch.Tensor, ids: torch.Tensor, text_ids: list[int], lengths: list[int]) -> None:
        if acts.shape[0] == 0:
            return
        on = acts > 0
        self.fires += on.sum(0).cpu().numpy()
        self.maxes = np.maximum(self.maxes, acts.max(0).values.double().clamp_min(0).cpu().numpy())
        self.sums += acts.double().sum(0).cpu().numpy()
        row, feat = on.nonzero(as_tuple=True)  # row-major: rows ascending
        values = acts[row, feat]
        values = values if values.dtype == torch.float64 else values.float()
        self.rows.append(row.cpu().numpy().astype(np.int64) + self.n)
        self.feats.append(feat.cpu().numpy().astype(np.int64))
        self.vals.append(values.cpu().numpy())
        self.token_ids.append(ids.cpu().numpy().astype(np.int64))
        for text_id, length in zip(text_ids, lengths, strict=True):
            if length > 0:
                self.text_ids.append(int(text_id))
                self.text_start.append(self.n)
                self.text_len.append(int(length))
                self.n += int(length)

    def finish(self) -> None:
        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        self.row = cat(self.rows, np.int64)
        self.feat = cat(self.feats, np.int64)
        self.val = cat(self.vals, np.float32)
        self.ids = cat(self.token_ids, np.int64)
        self.rows, self.feats, self.vals, self.token_ids = [], [], [], []
        starts = np.asarray(self.text_start, dtype=np.int64)
        lengths = np.asarray(self.text_len, dtype=np.int64)
        self.row_text = np.repeat(np.arange(len(starts)), lengths)  # index into text_* lists
        self.starts, self.lengths = starts, lengths


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"feature report: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _resolve_hook(model: HookedModel, sae: Any, hook: str | None) -> tuple[str, int, int]:
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(cfg, "width") or not hasattr(cfg, "d_in"):
        raise ConfigError(f"feature report: the SAE ({type(sae).__name__}) has no cfg with width and d_in")
    chosen = hook or getattr(cfg, "hook", "") or ""
    if not chosen:
        raise ConfigError("feature report: the SAE's cfg.hook is not set; give hook='blocks.L.site'")
    if chosen not in model.info.hook_points():
        from interpsuite.hooks import unknown_hook_message

        raise ConfigError(f"feature report: {unknown_hook_message(chosen, model.adapter.sites)}")
    return chosen, int(cfg.width), int(cfg.d_in)


def _stream(
    model: HookedModel,
    sae: Any,
    texts: list[str],
    hook: str,
    width: int,
    d_in: int,
    batch_size: int,
    max_length: int | None,
    max_tokens: int | None,
    progress: Callable[..., Iterable] | None = None,
) -> _Store:
    store = _Store(width)
    sae_device = sae.W_dec.device
    with torch.no_grad():
        batches = model.batches(texts, batch_size, max_length)
        n_batches = (len(texts) + batch_size - 1) // batch_size
        for batch in progress(batches, "sae_features", n_batches) if progress else batches:
            x = model.forward(batch, capture=[hook]).cache[hook]
            if x.shape[-1] != d_in:
                raise ConfigError(
                    f"feature report: the SAE's d_in is {d_in} but {hook} has {x.shape[-1]} entries per position; "
                    f"use the SAE trained for this hook point"
                )
            real = batch.attention_mask.bool().to(x.device)
            tokens = x[real]
            ids = batch.input_ids.to(x.device)[real]
            lengths = [int(n) for n in batch.attention_mask.sum(dim=1).tolist()]
            if max_tokens is not None and store.n + tokens.shape[0] > max_tokens:
                keep = max_tokens - store.n
                tokens, ids = tokens[:keep], ids[:keep]
                cut, left = [], keep
                for length in lengths:
                    cut.append(min(length, left))
                    left -= cut[-1]
                lengths = cut
            store.add(sae.encode(tokens.to(sae_device)), ids, list(batch.text_ids), lengths)
            if max_tokens is not None and store.n >= max_tokens:
                break
    store.finish()
    return store


# --- choosing features --------------------------------------------------------------------


def _choose(
    features: Sequence[int] | None,
    top_n: int,
    selection: str,
    width: int,
    fires: np.ndarray,
    maxes: np.ndarray,
    seed: int,
) -> list[int]:
    if features is not None:
        if isinstance(features, (int, np.integer)):
            features = [int(features)]
        chosen: list[int] = []
        for f in features:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= f < width:
                raise ConfigError(
                    f"feature report: feature {f!r} is not a latent of this SAE (width {width}: 0..{width - 1})"
                )
            if int(f) not in chosen:
                chosen.append(int(f))
        if not chosen:
            raise ConfigError("feature report: features is an empty list; give latent ids or None for the top_n")
        return chosen
    alive = np.flatnonzero(fires > 0)
    ids = np.arange(width)
    if selection == "active":  # densest first, ties by id
        order = np.lexsort((ids[alive], -fires[alive]))
        return [int(f) for f in alive[order][:top_n]]
    if selection == "max":
        order = np.lexsort((ids[alive], -maxes[alive]))
        return [int(f) for f in alive[order][:top_n]]
    rng = np.random.default_rng(seed)
    picked = rng.choice(alive, size=min(top_n, len(alive)), replace=False) if len(alive) else alive
    return sorted(int(f) for f in picked)


# --- per-feature pieces -------------------------------------------------------------------


class _Tokens:
    """Readable token strings by id, decoded once each: `decode([id])` shows ' the' for GPT-2's
    'Ġthe' and the text of byte tokens; an id that decodes to nothing keeps its raw piece."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            if not text:
                text = self.tokenizer.convert_ids_to_tokens(token_id) or ""
            self.cache[token_id] = text
        return text


def _context(
    store: _Store, decode: _Tokens, row: int, rows_f: np.ndarray, vals_f: np.ndarray, window
) -> FeatureContext:
    before, after = window
    text = int(store.row_text[row])
    start, length = int(store.starts[text]), int(store.lengths[text])
    lo, hi = max(start, row - before), min(start + length, row + after + 1)
    acts = np.zeros(hi - lo, dtype=np.float64)
    a, b = np.searchsorted(rows_f, lo), np.searchsorted(rows_f, hi)
    acts[rows_f[a:b] - lo] = vals_f[a:b]
    ids = store.ids[lo:hi]
    return FeatureContext(
        text_id=store.text_ids[text],
        position=row - start,
        focus=row - lo,
        tokens=[decode(i) for i in ids],
        token_ids=[int(i) for i in ids],
        acts=[float(v) for v in acts],
        activation=float(acts[row - lo]),
        max_activation=float(acts.max()),
    )


def _quantiles(
    rows_f: np.ndarray, vals_f: np.ndarray, n_quantiles: int, per_group: int, rng: np.random.Generator, make
) -> list[QuantileGroup]:
    """sae_vis-style: equal-width intervals of [min, max] of the non-zero activations."""
    edges = np.linspace(float(vals_f.min()), float(vals_f.max()), n_quantiles + 1)
    group = np.clip(np.searchsorted(edges, vals_f, side="right") - 1, 0, n_quantiles - 1)
    groups = []
    for g in range(n_quantiles):
        members = np.flatnonzero(group == g)
        take = members[rng.choice(len(members), size=min(per_group, len(members)), replace=False)]
        take = take[np.lexsort((rows_f[take], -vals_f[take]))]
        samples = [make(int(rows_f[i])) for i in take]
        groups.append(QuantileGroup(float(edges[g]), float(edges[g + 1]), len(members), samples))
    return groups


def _logit_effects(model: HookedModel, sae: Any, hook: str, chosen: list[int], n: int, decode: _Tokens):
    """(W_dec[f] * gamma) @ W_U.T per chosen feature: the direct effect on the logits of adding
    the decoder direction to the residual stream, with the final norm's scale folded in as
    TransformerLens folds ln_final (the norm's data-dependent 1/rms is left out: it scales
    all logits alike and does not change their order). Gemma's norms scale by (1 + weight); at
    the `final` hook (after the norm) the scale is already applied and is not folded again."""
    adapter = model.adapter
    w_u = adapter.unembed_matrix().detach()
    final = adapter.final_module()
    gamma = None
    weight = getattr(final, "weight", None) if final is not None and hook != "final" else None
    if weight is not None:
        gamma = weight.detach().float().to(w_u.device)
        if getattr(adapter, "norm_kind", "") == "rms_offset":
            gamma = 1.0 + gamma
    results = {}
    n = min(n, w_u.shape[0])
    with torch.no_grad():
        for start in range(0, len(chosen), LOGIT_CHUNK):
            part = chosen[start : start + LOGIT_CHUNK]
            directions = sae.W_dec.detach()[part].float().to(w_u.device)
            if gamma is not None:
                directions = directions * gamma
            effects = (directions.to(w_u.dtype) @ w_u.t()).float().cpu()
            top = effects.topk(n, dim=1)
            bottom = (-effects).topk(n, dim=1)
            for i, f in enumerate(part):
                top_ids, bottom_ids = top.indices[i].tolist(), bottom.indices[i].tolist()
                results[f] = LogitEffects(
                    top=[(decode(t), float(v)) for t, v in zip(top_ids, top.values[i].tolist(), strict=True)],
                    bottom=[(decode(t), -float(v)) for t, v in zip(bottom_ids, bottom.values[i].tolist(), strict=True)],
                    top_ids=top_ids,
                    bottom_ids=bottom_ids,
                )
    return results


def _cofiring(store: _Store, chosen: list[int], n_cofiring: int) -> dict[int, list[CoFiring]]:
    """[n_chosen, width] co-activation counts as one sparse matmul: (tokens x chosen)^T @ (tokens x width)."""
    result: dict[int, list[CoFiring]] = {f: [] for f in chosen}
    if n_cofiring == 0 or store.row.size == 0:
        return result
    local = np.full(store.width, -1, dtype=np.int64)
    local[chosen] = np.arange(len(chosen))
    pick = local[store.feat] >= 0
    if not pick.any():
        return result
    left = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([local[store.feat[pick]], store.row[pick]])),
        torch.ones(int(pick.sum()), dtype=torch.float64),
        (len(chosen), store.n),
        check_invariants=False,
    )
    right = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([store.row, store.feat])),
        torch.ones(store.row.size, dtype=torch.float64),
        (store.n, store.width),
        check_invariants=False,
    )
    with warnings.catch_warnings():  # "sparse CSR support is in beta", raised inside torch's COO matmul
        warnings.simplefilter("ignore", UserWarning)
        both = torch.sparse.mm(left.coalesce(), right.coalesce()).coalesce()
    index = both.indices().numpy()
    counts = np.rint(both.values().numpy()).astype(np.int64)
    ptr = np.searchsorted(index[0], np.arange(len(chosen) + 1))
    for i, f in enumerate(chosen):
        others, shared = index[1, ptr[i] : ptr[i + 1]], counts[ptr[i] : ptr[i + 1]]
        keep = others != f
        others, shared = others[keep], shared[keep]
        jaccard = shared / (store.fires[f] + store.fires[others] - shared)
        order = np.lexsort((others, -shared, -jaccard))[:n_cofiring]
        result[f] = [CoFiring(int(others[j]), int(shared[j]), float(jaccard[j])) for j in order]
    return result


# --- the entry point ----------------------------------------------------------------------


def feature_report(
    model: HookedModel,
    sae: Any,
    texts: Sequence[str],
    hook: str | None = None,
    *,
    features: Sequence[int] | None = None,
    top_n: int = 50,
    n_contexts: int = 20,
    context_window: tuple[int, int] = (12, 4),
    n_quantiles: int = 5,
    samples_per_quantile: int = 3,
    histogram_bins: int = 40,
    n_logit_tokens: int = 10,
    n_cofiring: int = 10,
    batch_size: int = 8,
    max_length: int | None = 128,
    max_tokens: int | None = None,
    selection: str = "active",
    seed: int = 0,
    progress: Callable[..., Iterable] | None = None,
) -> FeatureReport:
    """Browse `sae`'s latents at `hook` (default: the SAE's own) over `texts`; see the module docstring.

    `features`: explicit latent ids (dead ones allowed: their entry says they never fired), else
    the `top_n` alive latents by `selection`: "active" (highest density), "max" (highest max
    activation) or "random" (seeded). `context_window` = (tokens before, tokens after) the focus
    token. `max_tokens` stops the pass after that many real tokens. `progress(iterable, desc,
    total)` wraps the batches (a RunContext's `progress`: a bar).
    """
    hook, width, d_in = _resolve_hook(model, sae, hook)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ConfigError("feature report: no texts; give the texts whose tokens the features are browsed on")
    if selection not in SELECTIONS:
        raise ConfigError(f"feature report: selection {selection!r} is unknown; choose one of {list(SELECTIONS)}")
    top_n = _check_int("top_n", top_n, 1)
    n_contexts = _check_int("n_contexts", n_contexts, 1)
    n_quantiles = _check_int("n_quantiles", n_quantiles, 1)
    samples_per_quantile = _check_int("samples_per_quantile", samples_per_quantile, 0)
    histogram_bins = _check_int("histogram_bins", histogram_bins, 1)
    n_logit_tokens = _check_int("n_logit_tokens", n_logit_tokens, 0)
    n_cofiring = _check_int("n_cofiring", n_cofiring, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    if max_tokens is not None:
        max_tokens = _check_int("max_tokens", max_tokens, 1)
    if (
        not isinstance(context_window, (tuple, list))
        or len(context_window) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in context_window)
    ):
        raise ConfigError(
            f"feature report: context_window must be (tokens before, tokens after), two integers >= 0, "
            f"got {context_window!r}"
        )
    window = (int(context_window[0]), int(context_window[1]))
    if features is not None:  # refuse a bad id before the pass, not after it
        _choose(features, top_n, selection, width, np.zeros(width), np.zeros(width), seed)

    store = _stream(model, sae, texts, hook, width, d_in, batch_size, max_length, max_tokens, progress)
    if store.n == 0:
        raise ConfigError("feature report: the texts hold no tokens")
    density = store.fires / store.n
    mean_active = np.divide(store.sums, store.fires, out=np.zeros(width), where=store.fires > 0)
    chosen = _choose(features, top_n, selection, width, store.fires, store.maxes, seed)

    decode = _Tokens(model.tokenizer)
    causal = bool(model.info.is_causal)
    logit_notes = []
    effects: dict[int, LogitEffects] = {}
    if causal and n_logit_tokens > 0:
        if d_in == model.info.d_model:
            effects = _logit_effects(model, sae, hook, chosen, n_logit_tokens, decode)
        else:
            logit_notes.append(f"no logit effects: {hook} has {d_in} entries, not the residual width")
    cofiring = _cofiring(store, chosen, n_cofiring)

    # the chosen features' entries, grouped by feature (rows stay ascending inside a group)
    local = np.full(width, -1, dtype=np.int64)
    local[chosen] = np.arange(len(chosen))
    pick = np.flatnonzero(local[store.feat] >= 0)
    pick = pick[np.argsort(local[store.feat[pick]], kind="stable")]
    ptr = np.searchsorted(local[store.feat[pick]], np.arange(len(chosen) + 1))

    entries: dict[int, FeatureEntry] = {}
    for i, f in enumerate(chosen):
        group = pick[ptr[i] : ptr[i + 1]]
        rows_f, vals_f = store.row[group], store.val[group].astype(np.float64)

        def make(row: int, rows_f=rows_f, vals_f=vals_f) -> FeatureContext:
            return _context(store, decode, row, rows_f, vals_f, window)

        if len(rows_f):
            top = np.lexsort((rows_f, -vals_f))[:n_contexts]
            contexts = [make(int(rows_f[j])) for j in top]
            rng = np.random.default_rng([seed, f])
            groups = _quantiles(rows_f, vals_f, n_quantiles, samples_per_quantile, rng, make)
            counts, edges = np.histogram(vals_f, bins=histogram_bins)
            note = ""
        else:
            contexts, groups = [], []
            counts, edges = np.zeros(histogram_bins, dtype=np.int64), np.linspace(0.0, 1.0, histogram_bins + 1)
            note = f"never fired on these {store.n} tokens"
        entries[f] = FeatureEntry(
            feature=f,
            density=float(density[f]),
            max_activation=float(store.maxes[f]),
            mean_active=float(mean_active[f]),
            n_active=int(store.fires[f]),
            top_contexts=contexts,
            quantiles=groups,
            histogram_counts=counts,
            histogram_edges=edges,
            logit_effects=effects.get(f),
            cofiring=cofiring[f],
            note=note,
        )
    return FeatureReport(
        model_name=model.info.name,
        hook=hook,
        width=width,
        n_tokens=store.n,
        n_texts=len(store.text_ids),
        density=density,
        max_activation=store.maxes,
        mean_active=mean_active,
        features=chosen,
        entries=entries,
        selection="explicit" if features is not None else selection,
        seed=seed,
        context_window=window,
        is_causal=causal,
        notes=logit_notes,
    )
