"""HookedModel: one model, one hook-point vocabulary, captures and batched interventions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, HookError
from ..hooks import (
    ActivationCache,
    HookPlan,
    Intervention,
    attach,
    count_hooks,
    hook_layer,
)
from .adapters import adapter_for
from .info import ModelInfo
from .sources import LoadedModel, load_weights


@dataclass
class TokenBatch:
    """Right-padded token ids with their mask and the decoded tokens (for tables/figures)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[str]]
    text_ids: list[int]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    @property
    def last_index(self) -> torch.Tensor:
        """Position of each row's last real token."""
        return self.lengths - 1

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def repeat(self, k: int) -> TokenBatch:
        """k copies of the batch, copy-major: rows j*B .. (j+1)*B-1 are copy j."""
        return TokenBatch(
            self.input_ids.repeat(k, 1),
            self.attention_mask.repeat(k, 1),
            self.tokens * k,
            self.text_ids * k,
        )

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.tokens, self.text_ids)


@dataclass
class ForwardResult:
    """`output` is logits for causal LMs and the last hidden state for encoders."""

    output: torch.Tensor
    cache: ActivationCache


SweepMetric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


class HookedModel:
    """A transformers model seen through the hook-point vocabulary (see DESIGN.md).

    Every method that installs hooks removes them before returning, also after an error:
    `count_hooks(model.hf_model)` is 0 between calls.
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.hf_model = loaded.hf_model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.info: ModelInfo = loaded.info
        self.device = torch.device(device)
        self.adapter = adapter_for(self.hf_model.config.model_type)(self.hf_model, self.info)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # --- inputs ------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, text_ids: Sequence[int] | None = None
    ) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ConfigError("no texts to tokenize: give at least one non-empty text")
        encoded = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        tokens = [
            [self._readable(t) for t in self.tokenizer.convert_ids_to_tokens(row[:length].tolist())]
            for row, length in zip(ids, lengths, strict=True)
        ]
        ids_list = list(text_ids) if text_ids is not None else list(range(len(texts)))
        return TokenBatch(ids, mask, tokens, ids_list).to(self.device)

    def _readable(self, token: str) -> str:
        text = self.tokenizer.convert_tokens_to_string([token])
        return text if text else token

    def batches(self, texts: Sequence[str], batch_size: int, max_length: int | None = None) -> Iterator[TokenBatch]:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            yield self.tokenize(chunk, max_length, range(start, start + len(chunk)))

    def token_id(self, text: str, what: str = "target", allow_first_piece: bool = False) -> tuple[int, str]:
        """(id, note) of a one-token string such as ' Mary'; empty, unknown and multi-piece strings
        are refused naming the pieces (or, with allow_first_piece, the first piece is used and
        `note` says so)."""
        if not text:
            raise ConfigError(f"{what} is an empty string; give a token such as ' Mary'")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise ConfigError(f"{what} {text!r} is not in the vocabulary of {self.info.name} (pieces {pieces})")
        if len(ids) > 1:
            if not allow_first_piece:
                raise ConfigError(
                    f"{what} {text!r} is split by the tokenizer into {len(ids)} pieces {pieces}, not one; give a "
                    f"single-token {what} or set allow_first_piece: true to use the first piece {pieces[0]!r}"
                )
            return int(ids[0]), f"{what} {text!r} is {len(ids)} pieces {pieces}: using the first piece {pieces[0]!r}"
        if not 0 <= int(ids[0]) < self.info.vocab_size:
            raise ConfigError(
                f"{what} {text!r} has id {ids[0]} outside the model's vocabulary ({self.info.vocab_size})"
            )
        return int(ids[0]), ""

    def count_tokens(self, texts: Sequence[str], max_length: int | None = None) -> int:
        """Real tokens the texts tokenize to (as `tokenize` would), without building batches."""
        encoded = self.tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    def to_single_token(self, text: str) -> int:
        """The id of a one-token string (e.g. ' Mary'); a clear error otherwise."""
        return self.token_id(text)[0]

    # --- hook points -------------------------------------------------------------------
    @property
    def sites(self):
        return self.adapter.sites

    def hook_names(self) -> list[str]:
        return list(self.adapter.sites)

    @contextlib.contextmanager
    def hooks(
        self,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        detach: bool = True,
    ) -> Iterator[ActivationCache]:
        """Capture/intervene during the forward passes inside the block (always cleaned up)."""
        plan = HookPlan(tuple(capture), tuple(interventions), detach)
        with attach(self.adapter.sites, plan) as cache:
            yield cache

    def forward(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        grad: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        start_layer: int | None = None,
        start_resid: torch.Tensor | None = None,
    ) -> ForwardResult:
        """One forward pass with captures and interventions.

        With `start_layer`/`start_resid` (= the clean `blocks.{L}.resid_pre`), the blocks
        below L are skipped: interventions at L or later cannot change them.
        """
        capture = tuple(capture)
        interventions = tuple(interventions)
        kwargs: dict = {"attention_mask": batch.attention_mask, "use_cache": False}
        if self.info.is_causal:
            kwargs["logits_to_keep"] = logits_to_keep
        skip = start_layer is not None and start_layer > 0
        if skip:
            if start_resid is None:
                raise HookError("start_layer needs start_resid (the clean resid_pre at that layer)")
            early = [n for n in (*capture, *(iv.hook for iv in interventions)) if hook_layer(n) < start_layer]
            if early:
                raise HookError(f"hook points {early} lie before start_layer={start_layer}")
            kwargs["inputs_embeds"] = start_resid
        else:
            kwargs["input_ids"] = batch.input_ids
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            cache = stack.enter_context(self.hooks(capture, interventions, detach=not grad))
            if skip:
                stack.enter_context(self.adapter.starting_at(start_layer))
            out = self.hf_model(**kwargs)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, cache)

    def run_with_cache(self, batch: TokenBatch, names: Iterable[str]) -> ForwardResult:
        return self.forward(batch, capture=names)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.adapter.unembed(resid)

    # --- batched sweeps ----------------------------------------------------------------
    def sweep(
        self,
        batch: TokenBatch,
        items: Sequence[Sequence[Intervention]],
        metric: SweepMetric,
        *,
        batch_size: int = 32,
        logits_to_keep: int | torch.Tensor = 0,
        reuse_prefix: bool = True,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> torch.Tensor:
        """Run N intervention sets on the same inputs as batched passes: [N, batch.size].

        Item i's interventions apply to its own copy of `batch` inside a pass of up to
        `batch_size` rows; their `rows` refer to rows of `batch`. Items are ordered by the
        earliest layer they touch, and with `reuse_prefix` each pass starts at the earliest
        layer of its items from the clean residual stream (exact: nothing below changes).
        """
        n_items, base = len(items), batch.size
        per_pass = max(1, batch_size // base)
        first_layer = [min((hook_layer(iv.hook) for iv in ivs), default=self.info.n_layers) for ivs in items]
        first_layer = [min(layer, self.info.n_layers - 1) for layer in first_layer]
        order = sorted(range(n_items), key=lambda i: first_layer[i])
        clean_resid: dict[int, torch.Tensor] = {}
        use_prefix = reuse_prefix
        if use_prefix:
            needed = sorted({first_layer[i] for i in order if first_layer[i] > 0})
            if needed:
                names = [f"blocks.{layer}.resid_pre" for layer in needed]
                cache = self.forward(batch, capture=names, logits_to_keep=1).cache
                clean_resid = {layer: cache[f"blocks.{layer}.resid_pre"] for layer in needed}
        results = torch.empty(n_items, base, device=self.device)
        chunks = [order[i : i + per_pass] for i in range(0, n_items, per_pass)]
        for chunk in progress(chunks) if progress else chunks:
            k = len(chunk)
            repeated = batch.repeat(k)
            interventions = []
            for copy, item in enumerate(chunk):
                offset = copy * base
                for iv in items[item]:
                    rows = range(base) if iv.rows is None else _index_list(iv.rows)
                    copy_rows = list(range(offset, offset + base))
                    mean_over = copy_rows if iv.mean_over is None else [offset + r for r in _index_list(iv.mean_over)]
                    interventions.append(iv.with_rows([offset + r for r in rows], mean_over))
            start = min(first_layer[i] for i in chunk)
            if use_prefix and start > 0:
                resid = clean_resid[start].repeat(k, 1, 1)
                out = self.forward(
                    repeated,
                    interventions=interventions,
                    logits_to_keep=logits_to_keep,
                    start_layer=start,
                    start_resid=resid,
                ).output
            else:
                out = self.forward(repeated, interventions=interventions, logits_to_keep=logits_to_keep).output
            values = metric(out, repeated)
            results[torch.as_tensor(chunk, device=self.device)] = values.reshape(k, base).to(results.dtype)
        return results

    def hooks_left(self) -> int:
        return count_hooks(self.hf_model)


def _index_list(index) -> list[int]:
    return torch.as_tensor(index).flatten().tolist()


def load_model(
    name: str = "smollm2", *, device: str = "cpu", dtype: str | torch.dtype = "float32", seed: int = 0
) -> HookedModel:
    """Load a model by embedded name, hub name or local path, ready for hooks."""
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return HookedModel(load_weights(name, seed=seed, dtype=torch_dtype), device=device)
