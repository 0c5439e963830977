"""Perturbation attributions at token granularity: LIME (lime's `LimeBase`) and SHAP (shap's
`PermutationExplainer` with a masker over token positions).

Both explain one token sequence `token_ids` for a caller-given, batched `score_fn`
(list of token-id sequences -> one float each, e.g. `logit_score_fn`).

Perturbation = deleting tokens (default) or replacing them with `mask_token_id` when one is given.
Deletion is the default because decoders have no mask token: a pad/eos/unk token in the middle of
a sentence is itself an out-of-distribution input that the model reacts to (eos resets the
context), while deleting a token gives a real, shorter text; this is also what lime's text
explainer does with words. Encoders (BERT) have a trained [MASK] token: pass
`mask_token_id=tokenizer.mask_token_id` there to keep positions fixed.

Some positions are never perturbed and get score 0: position 0 on decoders (the attention sink,
removing it makes every other activation out of distribution) and every special token
(BOS/CLS/SEP/pad). A text with no perturbable token is refused with a ConfigError.

Why `LimeBase` and not `LimeTextExplainer`: the text explainer perturbs regex-split words and
merges repeated words into one feature (" John" occurs twice in the IOI prompt), so it cannot
give one score per token. We sample binary keep-masks exactly as `LimeTextExplainer` does
(number of removed features uniform in 1..d, then a random subset), use its cosine distance x 100
and its default kernel (width 25), and fit lime's `LimeBase` (weighted ridge) on them.

Both functions evaluate each distinct perturbed sequence once (cache) and call `score_fn` on
whole lists of sequences, never per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch

from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, TokenBatch

ScoreFn = Callable[[list[list[int]]], np.ndarray]

LIME_KERNEL_WIDTH = 25.0  # LimeTextExplainer's default


def fixed_positions(model: HookedModel, token_ids: Sequence[int]) -> list[int]:
    """Positions never perturbed: position 0 on decoders (attention sink) and special tokens."""
    special = set(model.tokenizer.all_special_ids)
    fixed = {i for i, t in enumerate(token_ids) if int(t) in special}
    if model.info.is_causal and token_ids:
        fixed.add(0)
    return sorted(fixed)


def _free_positions(model: HookedModel, token_ids: Sequence[int]) -> list[int]:
    if len(token_ids) == 0:
        raise ConfigError("empty token sequence: give a non-empty text to attribute")
    fixed = set(fixed_positions(model, token_ids))
    free = [i for i in range(len(token_ids)) if i not in fixed]
    if not free:
        raise ConfigError(
            f"the text has {len(token_ids)} token(s) and none can be perturbed (position 0 is the attention "
            "sink on decoders and special tokens are kept): give a text of at least 2 tokens"
        )
    return free


class _MaskedScorer:
    """Turns keep-masks over the free positions into token sequences and scores them, batched and cached."""

    def __init__(self, token_ids: Sequence[int], free: list[int], score_fn: ScoreFn, mask_token_id: int | None):
        self.ids = [int(t) for t in token_ids]
        self.free = free
        self.score_fn = score_fn
        self.mask_token_id = mask_token_id
        self.cache: dict[tuple[int, ...], float] = {}
        self.recording: list[np.ndarray] | None = None  # dry-run mode: remember the masks, return zeros
        self.n_calls = 0

    def sequence(self, keep: np.ndarray) -> list[int]:
        dropped = {p for p, k in zip(self.free, keep, strict=True) if not k}
        if self.mask_token_id is None:
            return [t for i, t in enumerate(self.ids) if i not in dropped]
        return [self.mask_token_id if i in dropped else t for i, t in enumerate(self.ids)]

    def __call__(self, keeps: np.ndarray) -> np.ndarray:
        keeps = np.asarray(keeps).astype(bool).reshape(-1, len(self.free))
        if self.recording is not None:
            self.recording.append(keeps)
            return np.zeros(len(keeps), dtype=np.float64)
        seqs = [self.sequence(k) for k in keeps]
        keys = [tuple(s) for s in seqs]
        new: dict[tuple[int, ...], list[int]] = {}
        for key, seq in zip(keys, seqs, strict=True):
            if key not in self.cache and key not in new:
                new[key] = seq
        if new:
            self.n_calls += 1
            values = np.asarray(self.score_fn(list(new.values())), dtype=np.float64).reshape(-1)
            if len(values) != len(new):
                raise ConfigError(
                    f"score_fn returned {len(values)} values for {len(new)} sequences; it must give one each"
                )
            self.cache.update(zip(new.keys(), values.tolist(), strict=True))
        return np.array([self.cache[k] for k in keys], dtype=np.float64)

    @property
    def n_evaluated(self) -> int:
        """Distinct sequences actually passed to score_fn."""
        return len(self.cache)


def lime_token_scores(
    model: HookedModel,
    token_ids: list[int],
    score_fn: ScoreFn,
    n_samples: int = 500,
    seed: int = 0,
    mask_token_id: int | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """LIME weight of every token of `token_ids` (0 for the fixed positions, see the module doc).

    `stats`, if given, is filled with the sample counts (requested, distinct sequences scored)."""
    from lime.lime_base import LimeBase
    from sklearn.metrics.pairwise import pairwise_distances

    if n_samples < 2:
        raise ConfigError(f"lime needs n_samples >= 2 (got {n_samples}); use a few hundred")
    free = _free_positions(model, token_ids)
    d = len(free)
    rng = np.random.RandomState(seed)
    # LimeTextExplainer's sampler: row 0 is the instance, then remove k ~ U{1..d} random features.
    data = np.ones((n_samples, d), dtype=np.int64)
    for row, k in enumerate(rng.randint(1, d + 1, n_samples - 1), start=1):
        data[row, rng.choice(d, k, replace=False)] = 0
    scorer = _MaskedScorer(token_ids, free, score_fn, mask_token_id)
    labels = scorer(data)[:, None]
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel() * 100

    def kernel(dist, kernel_width):
        return np.sqrt(np.exp(-(dist**2) / kernel_width**2))

    base = LimeBase(partial(kernel, kernel_width=LIME_KERNEL_WIDTH), random_state=np.random.RandomState(seed))
    _, weights, _, _ = base.explain_instance_with_data(
        data, labels, distances, label=0, num_features=d, feature_selection="none"
    )
    scores = np.zeros(len(token_ids), dtype=np.float64)
    for feature, weight in weights:
        scores[free[feature]] = weight
    if stats is not None:
        stats.update(n_samples=n_samples, n_evaluated=scorer.n_evaluated, n_features=d)
    return scores


def shap_token_scores(
    model: HookedModel,
    token_ids: list[int],
    score_fn: ScoreFn,
    max_evals: int = 500,
    seed: int = 0,
    mask_token_id: int | None = None,
    stats: dict | None = None,
) -> tuple[np.ndarray, float]:
    """SHAP values per token (0 for fixed positions) and the relative efficiency error
    |sum(values) - (f(x) - f(all perturbed))| / |f(x) - f(all perturbed)|.

    shap's PermutationExplainer over the free positions (antithetic permutations, so the
    efficiency property holds up to float error for any budget); a budget below one permutation
    (2 d + 1 evaluations) is raised to one permutation. `stats`, if given, is filled with the
    sample counts (requested, distinct sequences scored), f(x) and f(all perturbed).
    """
    import shap

    free = _free_positions(model, token_ids)
    d = len(free)
    scorer = _MaskedScorer(token_ids, free, score_fn, mask_token_id)
    x = np.ones((1, d), dtype=np.int64)  # features = keep flags of the free positions

    def masker(mask, row):
        return (np.asarray(row) * np.asarray(mask, dtype=np.int64)).reshape(1, -1)

    evals = max(int(max_evals), 2 * d + 1)

    def explain():
        explainer = shap.PermutationExplainer(scorer, masker, seed=seed)  # seeds numpy's global RNG
        return explainer(x, max_evals=evals, batch_size=evals, silent=True)

    state = np.random.get_state()  # restored afterwards: we do not leak the explainer's seeding
    try:
        # The permutation explainer asks for one permutation's masks at a time, but which masks it
        # asks for depends only on the seed, not on the scores. A dry run records them all, one
        # batched score_fn call scores every distinct sequence, and the real run reads the cache.
        scorer.recording = []
        explain()
        recorded, scorer.recording = scorer.recording, None
        scorer(np.concatenate([np.ones((1, d), bool), np.zeros((1, d), bool), *recorded]))
        explanation = explain()
    finally:
        scorer.recording = None
        np.random.set_state(state)
    values = np.asarray(explanation.values, dtype=np.float64).reshape(-1)
    f_x, f_0 = scorer(np.stack([np.ones(d), np.zeros(d)]))
    delta = f_x - f_0
    gap = abs(values.sum() - delta)
    error = float(gap / abs(delta)) if delta != 0 else float(gap)
    scores = np.zeros(len(token_ids), dtype=np.float64)
    scores[free] = values
    n_perm = evals // (2 * d + 1)
    if stats is not None:
        stats.update(
            max_evals=evals,
            n_permutations=n_perm,
            n_score_calls=scorer.n_calls,
            n_evaluated=scorer.n_evaluated,
            n_features=d,
            f_x=float(f_x),
            f_masked=float(f_0),
        )
    return scores, error


def logit_score_fn(
    model: HookedModel, target_id: int, contrast_id: int | None = None, batch_size: int = 32
) -> Callable[[list[list[int]]], np.ndarray]:
    """Batched scorer for causal LMs: logit of `target_id` (minus that of `contrast_id` if given)
    at each sequence's last real token. Sequences are right-padded per batch of `batch_size`."""
    if not model.info.is_causal:
        raise ConfigError(
            f"logit_score_fn needs a causal LM with an unembedding; {model.info.name} is an encoder: "
            "give your own score_fn (e.g. a masked-token logit or an embedding similarity)"
        )
    vocab = model.info.vocab_size
    for name, tid in (("target", target_id), ("contrast", contrast_id)):
        if tid is not None and not 0 <= int(tid) < vocab:
            raise ConfigError(f"{name} token id {tid} is outside the vocabulary (0..{vocab - 1}); pick a valid token")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0

    def score(seqs: list[list[int]]) -> np.ndarray:
        out = np.empty(len(seqs), dtype=np.float64)
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            lengths = [len(s) for s in chunk]
            if min(lengths) == 0:
                raise ConfigError("logit_score_fn got an empty sequence: keep at least one token")
            width = max(lengths)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            batch = TokenBatch(ids, mask, [[""] * n for n in lengths], list(range(len(chunk)))).to(model.device)
            last = batch.last_index[:, None]
            logits = model.forward(batch, logits_to_keep=last).output[:, 0, :].float()
            value = logits[:, target_id]
            if contrast_id is not None:
                value = value - logits[:, contrast_id]
            out[start : start + len(chunk)] = value.cpu().numpy()
        return out

    return score


ANALYZERS: list = []  # helpers only; the `lime`/`shap` methods are wired in by the attribution analyzers
