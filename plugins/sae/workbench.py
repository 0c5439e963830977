"""The SAE workbench engine: one SAE spliced into a model, a list of feature patches, live inference.

What the server's workbench routes (and the benchmarks) call; plain Python, no web framework.
A `Workbench` holds:

- an `SAESplice` (interpsuite.models.splice) with the patches applied as its edits, so a prompt
  patched again recomputes only the layers from the spliced one on (the clean run is cached);
- the patches, each with a stable id ("p1", "p2", ...); a second patch on the same feature
  replaces the first and keeps its id (a slider on a feature is one patch);
- feature statistics over a corpus, computed ONCE at construction by `feature_report` (density,
  max activation, top contexts, direct logit effects, histograms): listing features and showing
  one feature's details never re-encode the corpus.

Why one lock: the splice's edits and its cached clean run belong to one session and are not
thread-safe, while the server answers requests on several threads. The model itself is shared
with the analyses (a spliced run installs nothing on it).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpsuite.errors import ConfigError

from .features import FeatureEntry, FeatureReport, LogitEffects, _logit_effects, _Tokens, feature_report

__all__ = [
    "KINDS",
    "Patch",
    "UnknownFeatureError",
    "UnknownPatchError",
    "Workbench",
    "default_corpus",
    "plain_inference",
]

#: the edit kinds a patch may have
KINDS = ("set", "scale", "add")
#: features listed in `inference`'s `active_features`
N_ACTIVE = 20
#: top tokens / logits shown per feature in the list
N_LIST_TOKENS = 5


class UnknownFeatureError(ConfigError):
    """A feature id outside the SAE (the server answers 404)."""


class UnknownPatchError(ConfigError):
    """A patch id that is not in the list (the server answers 404)."""


@dataclass
class Patch:
    """One feature edit (see `interpsuite.models.splice.FeatureEdit` for the kinds)."""

    id: str
    feature: int
    kind: str
    value: float
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_corpus() -> list[str]:
    """The built-in English sentences (plugins/datasets/english.txt)."""
    from interpsuite_plugins.datasets import english_sentences

    return english_sentences()


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ConfigError(f"patch kind {kind!r} is unknown; choose one of {list(KINDS)}")
    return str(kind)


def _check_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(f"patch value {value!r} is not a finite number; give a finite number")
    return float(value)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return k


def _check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the text is empty; give a prompt to run")
    return text


def _token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    tokenizer = model.tokenizer
    return [tokenizer.convert_tokens_to_string([t]) or t for t in tokenizer.convert_ids_to_tokens(list(ids))]


def _top_json(model: Any, logits: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """[{token, id, prob}] of the k most likely next tokens, from one row of logits."""
    probs = torch.softmax(logits.float().reshape(-1), dim=-1)
    values, ids = probs.topk(min(k, probs.shape[-1]))
    id_list = ids.tolist()
    return [
        {"token": token, "id": int(i), "prob": float(p)}
        for token, i, p in zip(_token_strings(model, id_list), id_list, values.tolist(), strict=True)
    ]


def _prompt_tokens(model: Any, batch: Any) -> list[str]:
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    return _token_strings(model, ids)


def _numbers(feature: int, entry: FeatureEntry) -> dict[str, Any]:
    """The numbers a feature's list row and its details page share."""
    return {
        "id": feature,
        "density": float(entry.density),
        "max_activation": float(entry.max_activation),
        "mean_active": float(entry.mean_active),
    }


def plain_inference(model: Any, text: str, k: int = 10) -> dict[str, Any]:
    """The inference answer without an SAE (`top == clean_top`, no patches, no features)."""
    text, k = _check_text(text), _check_k(k)
    if not model.info.is_causal:
        raise ConfigError(f"{model.info.name} is an encoder; next-token inference needs a causal LM")
    batch = model.tokenize([text])
    keep, column = batch.last_positions()
    started = time.perf_counter()
    with torch.no_grad():
        output = model.forward(batch, logits_to_keep=keep).output
    latency = (time.perf_counter() - started) * 1000
    logits = output[0, int(column[0])] if output.ndim == 3 else output[0]
    top = _top_json(model, logits, k)
    return {
        "text": text,
        "tokens": _prompt_tokens(model, batch),
        "top": top,
        "clean_top": top,
        "patches": [],
        "active_features": [],
        "latency_ms": round(latency, 3),
    }


class Workbench:
    """An SAE spliced into `model` with patches and corpus statistics (see the module doc).

    `corpus` (default: the built-in English sentences) is encoded once here, up to
    `max_corpus_tokens` tokens; `n_contexts` top contexts are kept per feature."""

    def __init__(
        self,
        model: Any,
        sae: Any,
        sae_path: str | Path | None = None,
        *,
        corpus: Sequence[str] | None = None,
        max_corpus_tokens: int = 4096,
        n_contexts: int = 10,
        n_logit_tokens: int = 10,
        histogram_bins: int = 20,
    ):
        if not model.info.is_causal:
            raise ConfigError(f"{model.info.name} is an encoder; the workbench shows next-token logits of causal LMs")
        if isinstance(max_corpus_tokens, bool) or not isinstance(max_corpus_tokens, int) or max_corpus_tokens < 1:
            raise ConfigError(f"max_corpus_tokens must be a positive integer, got {max_corpus_tokens!r}")
        self.model = model
        self.sae = sae
        self.sae_path = str(sae_path) if sae_path is not None else None
        self.splice = model.sae_splice(sae)  # checks the hook point and the width (ConfigError)
        self.hook: str = self.splice.hook
        cfg = sae.cfg
        self.width = int(cfg.width)
        self.d_in = int(cfg.d_in)
        self.architecture = str(getattr(cfg, "architecture", ""))
        texts = list(corpus) if corpus is not None else default_corpus()
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError("the corpus must be a non-empty list of texts (or null for the built-in one)")
        self.report: FeatureReport = feature_report(
            model,
            sae,
            texts,
            self.hook,
            top_n=self.width,  # every alive feature (an explicit list of all ids is checked pairwise)
            n_contexts=n_contexts,
            n_quantiles=1,
            samples_per_quantile=0,
            histogram_bins=histogram_bins,
            n_logit_tokens=n_logit_tokens,
            n_cofiring=0,
            max_tokens=max_corpus_tokens,
        )
        self._dead_effects = self._effects_of_dead(n_logit_tokens)
        self._top_tokens = [self._distinct_top_tokens(f) for f in range(self.width)]
        self._lock = threading.Lock()
        self._patches: dict[int, Patch] = {}  # by feature
        self._counter = 0

    # --- description ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What GET /sae answers."""
        return {
            "hook": self.hook,
            "width": self.width,
            "d_in": self.d_in,
            "architecture": self.architecture,
            "path": self.sae_path,
            "n_features": self.width,
            "n_alive": int((self.report.density > 0).sum()),
            "corpus_tokens": int(self.report.n_tokens),
        }

    def _effects_of_dead(self, n: int) -> dict[int, LogitEffects]:
        """Direct logit effects of the features that never fired on the corpus (the report has no
        entry for them, yet a steering patch on one still has an effect worth seeing)."""
        dead = [f for f in range(self.width) if f not in self.report.entries]
        if not dead or n < 1 or self.d_in != self.model.info.d_model:
            return {}
        return _logit_effects(self.model, self.sae, self.hook, dead, n, _Tokens(self.model.tokenizer))

    def _entry(self, feature: int) -> FeatureEntry:
        entry = self.report.entries.get(feature)
        if entry is None:
            bins = len(next(iter(self.report.entries.values())).histogram_counts) if self.report.entries else 20
            entry = FeatureEntry(
                feature=feature,
                density=0.0,
                max_activation=0.0,
                mean_active=0.0,
                n_active=0,
                top_contexts=[],
                quantiles=[],
                histogram_counts=np.zeros(bins, dtype=np.int64),
                histogram_edges=np.linspace(0.0, 1.0, bins + 1),
                logit_effects=self._dead_effects.get(feature),
                cofiring=[],
                note=f"never fired on these {self.report.n_tokens} tokens",
            )
        return entry

    def _distinct_top_tokens(self, feature: int) -> list[str]:
        seen: list[str] = []
        for context in self._entry(feature).top_contexts:
            if context.token not in seen:
                seen.append(context.token)
            if len(seen) == N_LIST_TOKENS:
                break
        return seen

    def check_feature(self, feature: Any) -> int:
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < self.width:
            raise UnknownFeatureError(
                f"feature {feature!r} is not in this SAE (width {self.width}: ids 0..{self.width - 1})"
            )
        return int(feature)

    # --- features -----------------------------------------------------------------------------
    def _summary(self, feature: int) -> dict[str, Any]:
        entry = self._entry(feature)
        effects = entry.logit_effects
        return {
            **_numbers(feature, entry),
            "top_tokens": list(self._top_tokens[feature]),
            "top_logits": [t for t, _ in effects.top[:N_LIST_TOKENS]] if effects else [],
        }

    def features(self, offset: int = 0, limit: int = 50, sort: str = "density", q: str | None = None) -> dict:
        """A page of features: sorted by density or max activation (descending, ties by id) or by
        index; `q` keeps those with a top token containing it (case-insensitive)."""
        if sort not in ("density", "max", "index"):
            raise ConfigError(f"sort {sort!r} is unknown; choose density, max or index")
        if offset < 0 or limit < 1:
            raise ConfigError(f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        ids = np.arange(self.width)
        if sort == "density":
            order = np.lexsort((ids, -self.report.density))
        elif sort == "max":
            order = np.lexsort((ids, -self.report.max_activation))
        else:
            order = ids
        chosen = [int(f) for f in order]
        if q:
            needle = q.lower()
            chosen = [f for f in chosen if any(needle in t.lower() for t in self._top_tokens[f])]
        page = chosen[offset : offset + limit]
        return {"total": len(chosen), "offset": offset, "features": [self._summary(f) for f in page]}

    def feature_details(self, feature: Any) -> dict[str, Any]:
        """Contexts (tokens + activations), direct logit effects and the activation histogram."""
        feature = self.check_feature(feature)
        entry = self._entry(feature)
        effects = entry.logit_effects
        return {
            **_numbers(feature, entry),
            "n_active": int(entry.n_active),
            "note": entry.note,
            "contexts": [{"tokens": c.tokens, "acts": c.acts, "focus": c.focus} for c in entry.top_contexts],
            "logits": {
                "top": [[t, float(v)] for t, v in effects.top] if effects else [],
                "bottom": [[t, float(v)] for t, v in effects.bottom] if effects else [],
            },
            "histogram": {
                "edges": [float(e) for e in entry.histogram_edges],
                "counts": [int(c) for c in entry.histogram_counts],
            },
        }

    # --- patches ------------------------------------------------------------------------------
    def patches(self) -> list[Patch]:
        with self._lock:
            return [Patch(**asdict(p)) for p in self._ordered()]

    def _ordered(self) -> list[Patch]:
        return sorted(self._patches.values(), key=lambda p: int(p.id[1:]))

    def _find(self, patch_id: str) -> Patch:
        for patch in self._patches.values():
            if patch.id == patch_id:
                return patch
        raise UnknownPatchError(f"no patch {patch_id!r}; GET /patches lists them")

    def _sync(self) -> None:
        """The splice's edits := the patches (cheap: a dict of a few entries)."""
        splice = self.splice
        splice.clear()
        for patch in self._patches.values():
            {"set": splice.set_feature, "scale": splice.scale_feature, "add": splice.add_feature}[patch.kind](
                patch.feature, patch.value
            )
            if not patch.enabled:
                splice.toggle(patch.feature, False)

    def add_patch(self, feature: Any, kind: str, value: Any, enabled: bool = True) -> Patch:
        """Create a patch, or replace the one on the same feature (its id is kept)."""
        feature = self.check_feature(feature)
        kind, value = _check_kind(kind), _check_value(value)
        with self._lock:
            old = self._patches.get(feature)
            if old is None:
                self._counter += 1
                patch_id = f"p{self._counter}"
            else:
                patch_id = old.id
            patch = Patch(patch_id, feature, kind, value, bool(enabled))
            self._patches[feature] = patch
            self._sync()
            return Patch(**asdict(patch))

    def update(self, patch_id: str, value: Any = None, enabled: bool | None = None, kind: str | None = None) -> Patch:
        """Change a patch's value (a slider), kind or state."""
        value = _check_value(value) if value is not None else None
        kind = _check_kind(kind) if kind is not None else None
        with self._lock:
            patch = self._find(patch_id)
            if value is not None:
                patch.value = value
            if kind is not None:
                patch.kind = kind
            if enabled is not None:
                patch.enabled = bool(enabled)
            self._sync()
            return Patch(**asdict(patch))

    def toggle(self, patch_id: str, enabled: bool | None = None) -> Patch:
        """Switch a patch on or off (None: flip)."""
        with self._lock:
            patch = self._find(patch_id)
            patch.enabled = (not patch.enabled) if enabled is None else bool(enabled)
            self._sync()
            return Patch(**asdict(patch))

    def remove(self, patch_id: str) -> None:
        with self._lock:
            patch = self._find(patch_id)
            del self._patches[patch.feature]
            self._sync()

    def clear(self) -> None:
        with self._lock:
            self._patches.clear()
            self._sync()

    def replace_patches(self, patches: Sequence[dict[str, Any]]) -> list[Patch]:
        """Replace every patch by these specs (feature, kind, value, enabled); ids restart at p1.
        Everything is checked before anything changes."""
        checked = []
        for spec in patches:
            checked.append(
                (
                    self.check_feature(spec.get("feature")),
                    _check_kind(spec.get("kind")),
                    _check_value(spec.get("value")),
                    bool(spec.get("enabled", True)),
                )
            )
        with self._lock:
            self._patches.clear()
            self._counter = 0
            for feature, kind, value, enabled in checked:
                old = self._patches.get(feature)
                if old is None:
                    self._counter += 1
                self._patches[feature] = Patch(old.id if old else f"p{self._counter}", feature, kind, value, enabled)
            self._sync()
            return [Patch(**asdict(p)) for p in self._ordered()]

    def steering_vector(self, patches: Sequence[Patch] | None = None) -> torch.Tensor:
        """Sum of `value * W_dec[feature]` over the enabled "add" patches ([d_in], float32)."""
        chosen = self.patches() if patches is None else list(patches)
        w_dec = self.sae.W_dec.detach()
        total = torch.zeros(w_dec.shape[1], dtype=torch.float32)
        for patch in chosen:
            if patch.enabled and patch.kind == "add":
                total += patch.value * w_dec[patch.feature].float().cpu()
        return total

    # --- inference ----------------------------------------------------------------------------
    def inference(self, text: str, k: int = 10) -> dict[str, Any]:
        """Next-token top-k with the enabled patches and without them (the cached clean run), the
        prompt's tokens, the 20 largest features at the last token after the edits, and the time
        the spliced forward took."""
        text, k = _check_text(text), _check_k(k)
        with self._lock:
            started = time.perf_counter()
            out = self.splice.run(text, top_k=k)
            latency = (time.perf_counter() - started) * 1000
            active = [p.id for p in self._ordered() if p.enabled]
        batch = out.batch
        last = int(batch.last_index[0])
        features = out.features[0, last].float().cpu()
        order = torch.argsort(-features, stable=True)[:N_ACTIVE].tolist()
        return {
            "text": text,
            "tokens": _prompt_tokens(self.model, batch),
            "top": _top_json(self.model, out.logits[0], k),
            "clean_top": _top_json(self.model, out.clean_logits[0], k),
            "patches": active,
            "active_features": [[int(f), float(features[f])] for f in order if float(features[f]) != 0.0],
            "latency_ms": round(latency, 3),
        }

    def logits(self, text: str) -> torch.Tensor:
        """The patched next-token logits of one prompt ([vocab]; for exactness checks)."""
        with self._lock:
            return self.splice.run(_check_text(text), top_k=1).logits[0].detach().clone()

    def close(self) -> None:
        with self._lock:
            self.splice.close()
