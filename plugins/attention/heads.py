"""head_classification: a score in [0, 1] per head for five kinds of attention head, and an
ablation showing that the induction heads found are the ones the model copies with.

Scores (every head of every layer; `blocks.{L}.attn.pattern` of all layers captured in one
pass per batch):

- `previous_token`: mean weight from query i to key i-1.
- `first_token`: mean weight from query i to key 0 (attention sink / BOS).
- `self`: mean weight from query i to key i.
- `local`: mean weight from query i on keys i-window .. i-1 (the `window` previous tokens,
  not the token itself; it includes the previous token, so local >= previous_token).
- `induction`: on generated sequences (below), mean weight from query i in the second copy
  to key i - seq_len + 1: the token after the earlier occurrence of the current token.

The first four use the input texts and average over real query tokens at positions >= 1
(query 0 of a causal model can only attend to itself); padding never counts.

Induction probe: `n_sequences` sequences of `seq_len` random tokens, each repeated twice
(seeded by `seed`). The tokens of one sequence are drawn without replacement from the
vocabulary minus special tokens, so every token of the second copy has exactly one earlier
occurrence. With `prepend_bos` (default) the tokenizer's BOS token is put in front
(SmolLM2: `<|im_start|>`, which its tokenizer does not add by itself; tokenizers without a BOS
token fall back to CLS, then EOS), so that position 0 is a fixed token rather than a random
one: the random tokens are all content, none doubles as the attention sink.

Ablation (causal LMs; encoders have no logits, the ablation is skipped and the summary says
so): the loss on the predictable part of the second copy (tokens 2..seq_len of it) with
no heads ablated, with the top `n_ablate` induction heads zero-ablated
(`blocks.{L}.attn.z`, heads=...), and with `n_random_sets` sets of `n_ablate` random heads
whose induction score is below `control_max_induction` (seeded). All variants run as one
`HookedModel.sweep` (batched passes, one copy of the probe per variant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

from .patterns import ROW_SUM_TOLERANCE, PatternErrors, pattern_name
from .plots import plot_ablation_losses, plot_layer_head_heatmap

SCORES = ("previous_token", "induction", "first_token", "self", "local")
#: label precedence for heads that pass the threshold in several classes
LABEL_ORDER = ("induction", "previous_token", "first_token", "self")
#: rows per forward pass in the ablation sweep (logits are [rows, seq_len, vocab])
ABLATION_ROWS_PER_PASS = 64
UNIT_INTERVAL_TOLERANCE = 1e-6
CLEAN_LOSS_TOLERANCE = 1e-4


@dataclass
class HeadClassificationConfig:
    seq_len: int = 32  # length of the random block; the probe repeats it twice
    n_sequences: int = 16
    prepend_bos: bool = True
    window: int = 3  # `local`: attention to the `window` tokens before the query
    threshold: float = 0.5  # a head is labelled with a class whose score reaches this
    seed: int = 0  # random tokens of the probe and the random control heads
    ablation: bool = True
    n_ablate: int = 3  # top induction heads ablated (and heads per random control set)
    n_random_sets: int = 3  # random control sets, reported as their mean (and spread)
    control_max_induction: float = 0.1  # control heads have an induction score below this


# --- scoring (pure functions of patterns; tests call them on hand-built tensors) -----------------
def dataset_score_sums(pattern: torch.Tensor, attention_mask: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    """Per-head sums of the dataset scores over real queries at positions >= 1.

    pattern: [batch, heads, q, k] of one layer; returns float64 [heads] sums (divide by
    `query_count(attention_mask)`).
    """
    p = pattern.to(torch.float64)
    later = attention_mask.to(torch.float64)[:, None, :].clone()  # [b, 1, q]
    later[..., 0] = 0.0
    n = p.shape[-1]

    def diagonal(offset: int) -> torch.Tensor:
        """p[..., i, i - offset] at query i (0 where i < offset)."""
        out = torch.zeros_like(p[..., 0])
        if offset < n:
            out[..., offset:] = p.diagonal(-offset, dim1=-2, dim2=-1)
        return out

    local = sum(diagonal(d) for d in range(1, window + 1))
    return {
        "previous_token": (diagonal(1) * later).sum((0, 2)),
        "first_token": (p[..., 0] * later).sum((0, 2)),
        "self": (diagonal(0) * later).sum((0, 2)),
        "local": (local * later).sum((0, 2)),
    }


def query_count(attention_mask: torch.Tensor) -> float:
    """Number of real queries at positions >= 1 (the denominator of the dataset scores)."""
    return float(attention_mask[:, 1:].sum())


def induction_scores(pattern: torch.Tensor, seq_len: int, offset: int) -> torch.Tensor:
    """Mean attention from each query of the second copy to the token after the earlier
    occurrence of its own token: [batch, heads, q, k] -> [heads] (float64).

    The probe is `offset` prefix tokens, then the block at offset..offset+seq_len-1, then
    its copy; query q = offset + seq_len + j attends to key q - seq_len + 1 = offset + j + 1.
    """
    stripe = pattern.to(torch.float64).diagonal(-(seq_len - 1), dim1=-2, dim2=-1)  # key k -> query k+seq_len-1
    return stripe[..., offset + 1 : offset + seq_len + 1].mean((0, 2))


def repeated_random_tokens(
    vocab: torch.Tensor, seq_len: int, n_sequences: int, seed: int, prefix: int | None
) -> torch.Tensor:
    """[n, (prefix) + 2*seq_len] ids: random blocks without repeats inside a block, twice."""
    if seq_len > len(vocab):
        raise ConfigError(f"head_classification.seq_len={seq_len} exceeds the {len(vocab)} non-special tokens")
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.stack([vocab[torch.randperm(len(vocab), generator=generator)[:seq_len]] for _ in range(n_sequences)])
    ids = torch.cat([blocks, blocks], dim=1)
    if prefix is not None:
        ids = torch.cat([torch.full((n_sequences, 1), prefix, dtype=ids.dtype), ids], dim=1)
    return ids


def label_heads(scores: pd.DataFrame, threshold: float) -> list[str]:
    """The class of each head: the highest of induction / previous_token / first_token / self
    reaching `threshold` (ties by that order), else `local` if it does, else `mixed`."""
    labels = []
    for row in scores.itertuples():
        passing = [
            (getattr(row, name), -i, name) for i, name in enumerate(LABEL_ORDER) if getattr(row, name) >= threshold
        ]
        if passing:
            labels.append(max(passing)[2])
        elif row.local >= threshold:
            labels.append("local")
        else:
            labels.append("mixed")
    return labels


def second_half_loss(logits: torch.Tensor, input_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-row mean NLL of tokens 2..seq_len of the second copy from logits of the last
    seq_len positions ([rows, seq_len, vocab], i.e. `logits_to_keep=seq_len`)."""
    targets = input_ids[:, -(seq_len - 1) :]
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return -logprobs.gather(-1, targets[..., None])[..., 0].mean(1)


def zero_heads(heads: list[tuple[int, int]]) -> list[Intervention]:
    """Zero-ablation of some heads: one `attn.z` intervention per layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [Intervention(f"blocks.{layer}.attn.z", "zero", heads=hs) for layer, hs in sorted(by_layer.items())]


def probe_vocabulary(model: HookedModel) -> torch.Tensor:
    size = min(model.info.vocab_size, len(model.tokenizer))
    special = set(model.tokenizer.all_special_ids)
    return torch.tensor([i for i in range(size) if i not in special], dtype=torch.long)


def prefix_token(model: HookedModel) -> int | None:
    tokenizer = model.tokenizer
    for token_id in (tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None), tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


class HeadClassification(Analyzer):
    name = "head_classification"
    family = "attention"
    description = "previous-token, induction, first-token, self and local scores of every head; induction ablation"
    Config = HeadClassificationConfig

    def validate(self, info: ModelInfo, cfg: HeadClassificationConfig) -> None:
        what = "head_classification"
        if cfg.seq_len < 2:
            raise ConfigError(f"{what}.seq_len must be >= 2, got {cfg.seq_len}")
        length = 2 * cfg.seq_len + int(cfg.prepend_bos)
        if length > info.max_positions:
            raise ConfigError(
                f"{what}.seq_len={cfg.seq_len}: the probe has {length} tokens, more than the "
                f"{info.max_positions} positions of {info.name}"
            )
        if cfg.n_sequences < 1:
            raise ConfigError(f"{what}.n_sequences must be >= 1, got {cfg.n_sequences}")
        if cfg.window < 1:
            raise ConfigError(f"{what}.window must be >= 1, got {cfg.window}")
        if not 0.0 < cfg.threshold <= 1.0:
            raise ConfigError(f"{what}.threshold must be in (0, 1], got {cfg.threshold}")
        n_heads = info.n_layers * info.n_heads
        if cfg.ablation and not 1 <= cfg.n_ablate <= n_heads // 2:
            raise ConfigError(f"{what}.n_ablate must be in 1..{n_heads // 2} for {info.name}, got {cfg.n_ablate}")
        if cfg.n_random_sets < 0:
            raise ConfigError(f"{what}.n_random_sets must be >= 0, got {cfg.n_random_sets}")

    # --- probes -----------------------------------------------------------------------------
    def dataset_scores(self, ctx: RunContext, errors: PatternErrors) -> dict[str, np.ndarray]:
        """Previous-token, first-token, self and local scores over the input texts: [layers, heads]."""
        info = ctx.model.info
        names = [pattern_name(layer) for layer in range(info.n_layers)]
        sums = {
            name: torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
            for name in SCORES
            if name != "induction"
        }
        count = 0.0
        for batch in ctx.batches("head_classification"):
            cache = ctx.model.forward(batch, capture=names, logits_to_keep=1).cache
            for layer, name in enumerate(names):
                pattern = cache.pop(name)
                errors.update(pattern, batch.attention_mask, info.is_causal)
                for key, value in dataset_score_sums(pattern, batch.attention_mask, self.cfg.window).items():
                    sums[key][layer] += value.cpu()
            count += query_count(batch.attention_mask)
        if count == 0:
            raise AnalyzerError("head_classification: every text is a single token; no query has a previous token")
        return {key: (value / count).numpy() for key, value in sums.items()}

    def probe(self, model: HookedModel) -> tuple[TokenBatch, int]:
        cfg: HeadClassificationConfig = self.cfg
        prefix = prefix_token(model) if cfg.prepend_bos else None
        ids = repeated_random_tokens(probe_vocabulary(model), cfg.seq_len, cfg.n_sequences, cfg.seed, prefix)
        tokens = [[model._readable(t) for t in model.tokenizer.convert_ids_to_tokens(row.tolist())] for row in ids]
        batch = TokenBatch(ids, torch.ones_like(ids), tokens, list(range(len(ids)))).to(model.device)
        return batch, int(prefix is not None)

    def induction_probe(self, ctx: RunContext, errors: PatternErrors, result: Result) -> tuple[np.ndarray, TokenBatch]:
        """Induction scores [layers, heads] from one pass over the repeated random sequences."""
        cfg: HeadClassificationConfig = self.cfg
        info = ctx.model.info
        batch, offset = self.probe(ctx.model)
        probe_errors = PatternErrors()
        names = [pattern_name(layer) for layer in range(info.n_layers)]
        out = ctx.model.forward(batch, capture=names, logits_to_keep=0)
        scores = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
        for layer, name in enumerate(names):
            pattern = out.cache.pop(name)
            probe_errors.update(pattern, batch.attention_mask, info.is_causal)
            scores[layer] = induction_scores(pattern, cfg.seq_len, offset).cpu()
        result.add_check("probe_rows_sum_to_one", probe_errors.row_sum, ROW_SUM_TOLERANCE)
        if info.is_causal:
            ids = batch.input_ids
            logprobs = out.output[:, :-1].float().log_softmax(-1)
            nll = -logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # nll[:, t] predicts token t + 1
            first = nll[:, offset : offset + cfg.seq_len - 1].mean()  # tokens 2..seq_len of copy 1
            second = nll[:, offset + cfg.seq_len :].mean()  # tokens 2..seq_len of copy 2
            result.metrics["probe.loss_first_copy"] = float(first)
            result.metrics["probe.loss_second_copy"] = float(second)
            self._probe_loss = float(second)
        return scores.numpy(), batch

    # --- ablation ---------------------------------------------------------------------------
    def control_sets(self, induction: np.ndarray, top: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """`n_random_sets` seeded sets of `n_ablate` heads that are not induction heads."""
        cfg: HeadClassificationConfig = self.cfg
        n_layers, n_heads = induction.shape
        everything = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        candidates = [lh for lh in everything if lh not in top and induction[lh] < cfg.control_max_induction]
        if len(candidates) < cfg.n_ablate:  # few low-scoring heads: fall back to the lower half
            ranked = sorted((lh for lh in everything if lh not in top), key=lambda lh: induction[lh])
            candidates = ranked[: max(cfg.n_ablate, len(ranked) // 2)]
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        sets = []
        for _ in range(cfg.n_random_sets):
            picks = torch.randperm(len(candidates), generator=generator)[: cfg.n_ablate].tolist()
            sets.append(sorted(candidates[i] for i in picks))
        return sets

    def ablate(self, ctx: RunContext, batch: TokenBatch, induction: np.ndarray, result: Result) -> dict:
        cfg: HeadClassificationConfig = self.cfg
        order = np.argsort(-induction, axis=None, kind="stable")[: cfg.n_ablate]
        top = [tuple(int(i) for i in np.unravel_index(flat, induction.shape)) for flat in order]
        controls = self.control_sets(induction, top)
        items = [[], zero_heads(top), *[zero_heads(heads) for heads in controls]]

        def metric(logits: torch.Tensor, rows: TokenBatch) -> torch.Tensor:
            return second_half_loss(logits, rows.input_ids, cfg.seq_len)

        rows_per_pass = max(batch.size, min(len(items) * batch.size, ABLATION_ROWS_PER_PASS))
        losses = ctx.model.sweep(batch, items, metric, batch_size=rows_per_pass, logits_to_keep=cfg.seq_len)
        per_item = losses.mean(1).double().cpu()
        clean, induction_loss = float(per_item[0]), float(per_item[1])
        random_losses = per_item[2:].tolist()
        random_mean = float(np.mean(random_losses)) if random_losses else float("nan")
        result.add_check("ablation_clean_matches_forward", abs(clean - self._probe_loss), CLEAN_LOSS_TOLERANCE)
        result.metrics["ablation.loss_none"] = clean
        result.metrics["ablation.loss_induction_heads"] = induction_loss
        result.metrics["ablation.increase_induction_heads"] = induction_loss - clean
        if random_losses:
            result.metrics["ablation.loss_random_heads"] = random_mean
            result.metrics["ablation.loss_random_heads_max"] = float(max(random_losses))
            result.metrics["ablation.increase_random_heads"] = random_mean - clean
        spread = float(np.std(random_losses)) if random_losses else 0.0
        bars = {"none": clean, f"top-{cfg.n_ablate} induction": induction_loss}
        if random_losses:
            bars[f"random x{len(random_losses)}"] = random_mean
        result.add_figure(
            "ablation_loss",
            plot_ablation_losses,
            bars,
            {f"random x{len(random_losses)}": spread},
            f"{ctx.model.info.name}: zero-ablating {cfg.n_ablate} heads on repeated random tokens",
            ctx.style,
        )
        return {
            "induction_heads": [f"L{layer}H{head}" for layer, head in top],
            "induction_head_scores": [round(float(induction[lh]), 4) for lh in top],
            "random_head_sets": [[f"L{layer}H{head}" for layer, head in heads] for heads in controls],
            "loss_none": round(clean, 4),
            "loss_induction_heads": round(induction_loss, 4),
            "loss_random_heads": round(random_mean, 4) if random_losses else None,
            "loss_random_heads_each": [round(v, 4) for v in random_losses],
            "increase_induction_heads": round(induction_loss - clean, 4),
            "increase_random_heads": round(random_mean - clean, 4) if random_losses else None,
            "loss_on": f"tokens 2..{cfg.seq_len} of the second copy, {cfg.n_sequences} sequences",
        }

    # --- run --------------------------------------------------------------------------------
    def estimate(self, info: ModelInfo, cfg: HeadClassificationConfig, workload):
        """Patterns of every layer over the inputs, one pass over the repeated random sequences (all
        logits), and the ablation sweep (clean, the top induction heads, the random control sets)."""
        names = [pattern_name(layer) for layer in range(info.n_layers)]
        cost = workload.forward_inputs(logits=1, capture=names)
        rows, width = cfg.n_sequences, 2 * cfg.seq_len + int(cfg.prepend_bos)
        cost = cost + workload.forward(rows, width, logits=None if info.is_causal else 0, capture=names)
        if cfg.ablation and info.is_causal:
            # which heads are ablated is known only after the probe: the induction set is assumed
            # in the middle of the model, each random set to reach down to the first layers
            starts = [(info.n_layers, width), (info.n_layers // 2, 0)] + [(0, 0)] * cfg.n_random_sets
            per_pass = max(rows, min(len(starts) * rows, ABLATION_ROWS_PER_PASS))
            cost = cost + workload.sweep(rows, width, starts, per_pass, logits=cfg.seq_len)
        return cost + workload.figures(len(SCORES)) + workload.table(info.n_layers * info.n_heads, 8)

    def run(self, ctx: RunContext) -> Result:
        cfg: HeadClassificationConfig = self.cfg
        info = ctx.model.info
        result = Result()
        errors = PatternErrors()
        self._probe_loss = float("nan")
        scores = self.dataset_scores(ctx, errors)
        scores["induction"], batch = self.induction_probe(ctx, errors, result)
        errors.add_checks(result, info.is_causal)
        stacked = np.stack([scores[name] for name in SCORES])
        outside = float(np.maximum(-stacked, stacked - 1.0).max())
        result.add_check("scores_in_unit_interval", max(outside, 0.0), UNIT_INTERVAL_TOLERANCE)

        table = pd.DataFrame(
            [
                {"layer": layer, "head": head, **{name: float(scores[name][layer, head]) for name in SCORES}}
                for layer in range(info.n_layers)
                for head in range(info.n_heads)
            ]
        )
        table["label"] = label_heads(table, cfg.threshold)
        result.tables["head_scores"] = table
        layers, heads = list(range(info.n_layers)), list(range(info.n_heads))
        titles = {
            "previous_token": "previous-token score (query i -> key i-1)",
            "induction": f"induction score (repeated random tokens, seq_len {cfg.seq_len})",
            "first_token": "first-token (sink) score",
            "self": "self (diagonal) score",
            "local": f"local score (keys i-{cfg.window}..i-1)",
        }
        for name in SCORES:
            result.add_figure(
                f"{name}_scores",
                plot_layer_head_heatmap,
                scores[name],
                layers,
                heads,
                f"{info.name}: {titles[name]}",
                "score",
                ctx.style,
                0.0,
                1.0,
            )
            result.metrics[f"max.{name}"] = float(scores[name].max())
            result.metrics[f"heads_above_threshold.{name}"] = float((scores[name] >= cfg.threshold).sum())

        summary: dict = {
            "threshold": cfg.threshold,
            "labels": {k: int(v) for k, v in table["label"].value_counts().items()},
            "top_heads": {
                name: [
                    {"head": f"L{int(r.layer)}H{int(r.head)}", "score": round(float(getattr(r, name)), 4)}
                    for r in table.sort_values(name, ascending=False).head(5).itertuples()
                ]
                for name in SCORES
            },
            "probe": {
                "seq_len": cfg.seq_len,
                "n_sequences": cfg.n_sequences,
                "prefix": batch.tokens[0][0] if cfg.prepend_bos and prefix_token(ctx.model) is not None else None,
                "seed": cfg.seed,
            },
        }
        if info.is_causal:
            summary["probe"]["loss_first_copy"] = round(result.metrics["probe.loss_first_copy"], 4)
            summary["probe"]["loss_second_copy"] = round(result.metrics["probe.loss_second_copy"], 4)
        if not cfg.ablation:
            summary["ablation"] = {"skipped": "ablation=false"}
        elif not info.is_causal:
            summary["ablation"] = {"skipped": f"{info.name} is an encoder without logits: the loss needs a causal LM"}
        else:
            summary["ablation"] = self.ablate(ctx, batch, scores["induction"], result)
        result.summary = summary
        return result


ANALYZERS = [HeadClassification]
