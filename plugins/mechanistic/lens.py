"""logit_lens: decode the residual stream of every layer with the model's own unembedding.

The logit lens (nostalgebraist 2020) applies the final norm and the unembedding to the
residual stream after block L (`blocks.{L}.resid_post`, and the embedding `embed` as layer
-1) as if the remaining blocks were skipped: `model.unembed(resid)`. Reading the decoded
distributions layer by layer shows when the model's final prediction takes shape. At the
last layer the lens *is* the model, which the analyzer checks.

Per layer, over the real tokens of all texts (padding never counts):

- KL(final || lens): sum_v p_final(v) (log p_final(v) - log p_lens(v)), in nats, averaged;
- top-1 agreement: the fraction of tokens where the lens top-1 equals the final top-1;
- the probability and rank (1 = top) of a target token: `target` (one token, e.g. " Paris")
  at every position, or by default the model's own final top-1 prediction at each position;
  reported over all tokens and at each text's last token (the next-token prediction of a
  prompt);
- the top-k decoded tokens at every position (table for the first `table_texts` texts).

Per text (last token): the first layer whose lens top-1 equals the final top-1, and the
"settle" layer from which the lens top-1 stays equal to it for every later layer.

The logits of one layer for one batch ([batch, pos, vocab]) are the largest tensor held;
layers are decoded one after another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

from .lens_plots import plot_kl_by_layer, plot_target_by_layer, plot_top_token_grid

#: layer index used for the embedding (`embed`, the residual stream entering block 0)
EMBED = -1
LAST_LAYER_TOLERANCE = 1e-4
NORMALISATION_TOLERANCE = 1e-4
LAST_LAYER_KL_TOLERANCE = 1e-5

log = logging.getLogger("interpsuite")


def layer_label(layer: int) -> str:
    """'embed' for the embedding, 'L05' for block 5 (metric keys, figure ticks)."""
    return "embed" if layer == EMBED else f"L{layer:02d}"


def layer_hook(layer: int) -> str:
    return "embed" if layer == EMBED else f"blocks.{layer}.resid_post"


def lens_layers(info: ModelInfo, layers: Sequence[int] | None, include_embed: bool, what: str) -> list[int]:
    """Sorted, de-duplicated lens layers (EMBED first when included); validated with check_layers."""
    chosen = sorted(set(check_layers(info, layers, what)))
    return ([EMBED] if include_embed else []) + chosen


def kl_to_final(final_logp: torch.Tensor, lens_logp: torch.Tensor) -> torch.Tensor:
    """KL(final || lens) per position, in nats: [..., V] x [..., V] -> [...]."""
    return (final_logp.exp() * (final_logp - lens_logp)).sum(-1)


def decode_ids(model: HookedModel, ids: Sequence[int]) -> list[str]:
    """Readable strings of single token ids (for tables and figures), cached per call."""
    unique = sorted(set(int(i) for i in ids))
    texts = model.tokenizer.batch_decode([[i] for i in unique])
    lookup = dict(zip(unique, texts, strict=True))
    return [lookup[int(i)] for i in ids]


@dataclass
class LogitLensConfig:
    layers: list[int] | None = None
    include_embed: bool = True
    top_k: int = 5
    target: str | None = None
    max_positions: int = 16
    table_texts: int = 8


@dataclass
class LayerStats:
    """Running sums for one lens layer over all real tokens."""

    kl: float = 0.0
    agree: float = 0.0
    target_prob: float = 0.0
    entropy: float = 0.0
    tokens: int = 0
    last_prob: list[float] = field(default_factory=list)
    last_rank: list[int] = field(default_factory=list)


class LogitLens(Analyzer):
    name = "logit_lens"
    window_outputs = "stitch"  # per-position tables stitched, statistics over counted tokens
    family = "mechanistic"
    description = "Decode every layer's residual stream with the final norm + unembedding: top tokens, KL, target rank"
    Config = LogitLensConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: LogitLensConfig) -> None:
        check_layers(info, cfg.layers, self.name)
        if not 1 <= cfg.top_k <= info.vocab_size:
            raise ConfigError(f"{self.name}: top_k={cfg.top_k} must be in 1..{info.vocab_size}; e.g. top_k: 5")
        if cfg.max_positions < 1 or cfg.table_texts < 0:
            raise ConfigError(
                f"{self.name}: max_positions ({cfg.max_positions}) must be >= 1 and table_texts "
                f"({cfg.table_texts}) >= 0; e.g. max_positions: 16, table_texts: 8"
            )
        if cfg.target is not None and cfg.target == "":
            raise ConfigError(f"{self.name}: target is an empty string; give one token such as ' Paris', or null")

    def estimate(self, info: ModelInfo, cfg: LogitLensConfig, workload):
        """One pass per batch (all logits) capturing the residual stream at every lens layer, then
        every token unembedded at every lens layer (the vocabulary-wide softmax, KL, entropy)."""
        from interpsuite.estimate_analyzers import lens_unembed_macs

        layers = lens_layers(info, cfg.layers, cfg.include_embed, self.name)
        capture = sorted({layer_hook(L) for L in layers} | {layer_hook(info.n_layers - 1)})
        cost = workload.forward_inputs(capture=capture)
        padded = sum(max(b) * len(b) for b in workload.batches())
        cost = cost + workload.macs(lens_unembed_macs(padded, len(layers) + 1, info.d_model, info.vocab_size))
        widest = max((max(b) * len(b) for b in workload.batches()), default=0)
        cost = cost.hold(3 * 4 * widest * info.vocab_size)  # a lens layer's logits, log-probs and probs
        rows = min(cfg.table_texts, len(workload.lengths))
        table = workload.table(sum(workload.lengths[:rows]) * len(layers) * cfg.top_k, 7)
        return cost + workload.figures(3, 4) + table

    def run(self, ctx: RunContext) -> Result:
        cfg: LogitLensConfig = self.cfg
        model = ctx.model
        info = model.info
        target_id, target_note = model.token_id(cfg.target, f"{self.name} target") if cfg.target else (None, "")
        if target_note:
            log.warning(target_note)
        layers = lens_layers(info, cfg.layers, cfg.include_embed, self.name)
        last = info.n_layers - 1
        capture = sorted({layer_hook(L) for L in layers} | {layer_hook(last)})
        stats = {L: LayerStats() for L in layers}
        top_rows: list[tuple] = []
        per_text: list[dict] = []
        grid = None
        last_err = norm_err = last_kl = 0.0
        with torch.no_grad():
            for batch in ctx.batches(self.name):
                out = model.forward(batch, capture=capture)
                final_logits = out.output.float()
                final_logp = torch.log_softmax(final_logits, -1)
                final_top = final_logits.argmax(-1)
                mask = batch.counted_mask.bool()  # a window's own tokens: each document token once
                rows = torch.arange(batch.size, device=mask.device)
                last_pos = batch.last_index
                targets = final_top if target_id is None else torch.full_like(final_top, target_id)
                lens_at_last = model.unembed(out.cache[layer_hook(last)]).float()
                last_err = max(last_err, float((lens_at_last - final_logits).abs()[mask].max()))
                last_kl = max(last_kl, float(kl_to_final(final_logp, torch.log_softmax(lens_at_last, -1))[mask].max()))
                del lens_at_last
                top1 = {}
                in_table = [r for r, t in enumerate(batch.text_ids) if t < cfg.table_texts]
                want_grid = grid is None and batch.text_ids[0] == 0
                grid_layers = {}
                for layer in layers:
                    logits = model.unembed(out.cache[layer_hook(layer)]).float()
                    logp = torch.log_softmax(logits, -1)
                    probs = logp.exp()
                    norm_err = max(norm_err, float((probs.sum(-1) - 1).abs()[mask].max()))
                    s = stats[layer]
                    s.kl += float(kl_to_final(final_logp, logp)[mask].sum())
                    s.entropy += float(-(probs * logp).sum(-1)[mask].sum())
                    top1[layer] = logits.argmax(-1)
                    s.agree += float((top1[layer] == final_top)[mask].sum())
                    target_logit = logits.gather(-1, targets[..., None])
                    target_prob = probs.gather(-1, targets[..., None]).squeeze(-1)
                    rank = (logits > target_logit).sum(-1) + 1
                    s.target_prob += float(target_prob[mask].sum())
                    s.tokens += int(mask.sum())
                    s.last_prob += target_prob[rows, last_pos].tolist()
                    s.last_rank += rank[rows, last_pos].tolist()
                    if in_table:
                        top_rows += top_token_rows(batch, in_table, probs, cfg.top_k, layer)
                    if want_grid:
                        grid_layers[layer] = grid_cells(probs[0], int(batch.lengths[0]), cfg.max_positions)
                    del logits, logp, probs
                if want_grid:
                    grid = grid_layers, batch.tokens[0]
                for r in range(batch.size):
                    p = int(last_pos[r])
                    matches = [bool(top1[L][r, p] == final_top[r, p]) for L in layers]
                    per_text.append(
                        {
                            "text_id": batch.text_ids[r],
                            "final_top1_id": int(final_top[r, p]),
                            "final_top1_prob": float(final_logp[r, p, final_top[r, p]].exp()),
                            "target_id": int(targets[r, p]),
                            "first_match_layer": first_match(layers, matches),
                            "settle_layer": settle(layers, matches),
                        }
                    )
        result = self._result(ctx, cfg, layers, stats, top_rows, per_text, grid, last_err, norm_err, last_kl)
        result.summary["target_note"] = target_note
        return result

    def _result(self, ctx, cfg, layers, stats, top_rows, per_text, grid, last_err, norm_err, last_kl) -> Result:
        model = ctx.model
        result = Result()
        target_label = repr(cfg.target) if cfg.target is not None else "the model's final top-1 at each position"
        layer_table = pd.DataFrame(
            [
                {
                    "layer": L,
                    "hook": layer_hook(L),
                    "kl_to_final": s.kl / s.tokens,
                    "top1_agreement": s.agree / s.tokens,
                    "target_prob": s.target_prob / s.tokens,
                    "target_prob_last": float(np.mean(s.last_prob)),
                    "target_rank_last_median": float(np.median(s.last_rank)),
                    "entropy": s.entropy / s.tokens,
                }
                for L, s in stats.items()
            ]
        )
        result.tables["layers"] = layer_table
        texts = pd.DataFrame(per_text).sort_values("text_id").reset_index(drop=True)
        texts["final_top1"] = decode_ids(model, texts["final_top1_id"])
        texts["target"] = decode_ids(model, texts["target_id"])
        result.tables["texts"] = texts
        by_layer = pd.DataFrame(
            [
                {"text_id": tid, "layer": L, "target": tgt, "prob": s.last_prob[i], "rank": s.last_rank[i]}
                for L, s in stats.items()
                for i, (tid, tgt) in enumerate(zip(texts_in_order(per_text), targets_in_order(per_text), strict=True))
            ]
        )
        by_layer["target"] = decode_ids(model, by_layer["target"])
        result.tables["target_by_layer"] = by_layer.sort_values(["text_id", "layer"]).reset_index(drop=True)
        if top_rows:
            top = pd.DataFrame(
                top_rows, columns=["text_id", "position", "input_token", "layer", "k", "token_id", "prob"]
            )
            top.insert(6, "token", decode_ids(model, top["token_id"]))
            result.tables["top_tokens"] = top.sort_values(["text_id", "position", "layer", "k"]).reset_index(drop=True)
        for row in layer_table.itertuples():
            key = layer_label(int(row.layer))
            result.metrics[f"kl_to_final.{key}"] = float(row.kl_to_final)
            result.metrics[f"top1_agreement.{key}"] = float(row.top1_agreement)
            result.metrics[f"target_prob_last.{key}"] = float(row.target_prob_last)
            result.metrics[f"target_rank_last_median.{key}"] = float(row.target_rank_last_median)
        settled = texts["settle_layer"].dropna()
        if len(settled):
            result.metrics["settle_layer_last.mean"] = float(settled.mean())
        result.add_check("last_layer_matches_logits_max_abs", last_err, LAST_LAYER_TOLERANCE)
        result.add_check("last_layer_kl_max", last_kl, LAST_LAYER_KL_TOLERANCE)
        result.add_check("probabilities_normalised_max_err", norm_err, NORMALISATION_TOLERANCE)
        if grid is not None:
            cells, tokens = grid
            result.add_figure(
                "top_token_grid",
                plot_top_token_grid,
                {L: (decode_ids(model, ids), p, start) for L, (ids, p, start) in cells.items()},
                tokens,
                model.info.name,
                ctx.style,
            )
        result.add_figure(
            "target_by_layer",
            plot_target_by_layer,
            result.tables["target_by_layer"],
            layer_table,
            model.info.name,
            target_label,
            ctx.style,
        )
        result.add_figure("kl_by_layer", plot_kl_by_layer, layer_table, model.info.name, ctx.style)
        result.summary = {
            "target": target_label,
            "layers": [layer_label(L) for L in layers],
            "tokens": int(next(iter(stats.values())).tokens),
            "texts": [
                {
                    "text_id": int(r.text_id),
                    "final_top1": r.final_top1,
                    "final_top1_prob": round(float(r.final_top1_prob), 4),
                    "first_match_layer": none_or_int(r.first_match_layer),
                    "settle_layer": none_or_int(r.settle_layer),
                }
                for r in texts.head(cfg.table_texts or 8).itertuples()
            ],
        }
        return result


def top_token_rows(batch, rows: list[int], probs: torch.Tensor, k: int, layer: int) -> list[tuple]:
    """(text_id, position, input token, layer, k, token id, prob) for the top-k of every real position."""
    top_p, top_i = probs[rows].topk(k, dim=-1)
    top_p, top_i = top_p.tolist(), top_i.tolist()
    out = []
    for j, r in enumerate(rows):
        for pos in range(int(batch.lengths[r])):
            for rank in range(k):
                out.append(
                    (
                        batch.text_ids[r],
                        pos,
                        batch.tokens[r][pos],
                        layer,
                        rank + 1,
                        top_i[j][pos][rank],
                        top_p[j][pos][rank],
                    )
                )
    return out


def grid_cells(probs: torch.Tensor, length: int, max_positions: int):
    """Top-1 ids and probabilities of one text's last `max_positions` real positions: (ids, probs, start)."""
    start = max(0, length - max_positions)
    top_p, top_i = probs[start:length].max(-1)
    return top_i.tolist(), top_p.tolist(), start


def first_match(layers: Sequence[int], matches: Sequence[bool]) -> int | None:
    """The first layer whose lens top-1 equals the final top-1 (None: never)."""
    return next((L for L, m in zip(layers, matches, strict=True) if m), None)


def settle(layers: Sequence[int], matches: Sequence[bool]) -> int | None:
    """The first layer from which the lens top-1 equals the final top-1 at every later layer."""
    found = None
    for layer, m in zip(reversed(layers), reversed(matches), strict=True):
        if not m:
            break
        found = layer
    return found


def texts_in_order(per_text: list[dict]) -> list[int]:
    return [t["text_id"] for t in per_text]


def targets_in_order(per_text: list[dict]) -> list[int]:
    return [t["target_id"] for t in per_text]


def none_or_int(value) -> int | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else int(value)


ANALYZERS = [LogitLens]
