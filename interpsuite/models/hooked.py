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

    def last_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(`logits_to_keep` positions covering every row's last real token, each row's column in them)."""
        keep, column = torch.unique(self.last_index, sorted=True, return_inverse=True)
        return keep, column

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


@dataclass
class PrefixCache:
    """Clean keys and values of the first `length` positions of a batch of `rows` rows.

    In a causal model an intervention at position p cannot change anything at positions
    before p, at any layer; a pass that starts at p attends to these instead of recomputing.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows: int

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def cache(self, copies: int):
        from transformers import DynamicCache

        pairs = zip(self.keys, self.values, strict=True)
        return DynamicCache(ddp_cache_data=[(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)) for k, v in pairs])

    def truncated(self, length: int) -> PrefixCache:
        return PrefixCache([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values], self.rows)


class HookedModel:
    """A transformers model seen through the hook-point vocabulary (see DESIGN.md).

    Every method that installs hooks removes them before returning, also after an error:
    `count_hooks(model.hf_model)` is 0 between calls.
    """

    def __init__(self, hf_model, tokenizer, info: ModelInfo):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.info: ModelInfo = info
        self.device = hf_model.get_input_embeddings().weight.device
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
        prefix: PrefixCache | None = None,
    ) -> ForwardResult:
        """One forward pass with captures and interventions.

        With `start_layer`/`start_resid` (= the clean `blocks.{L}.resid_pre`), the blocks
        below L are skipped: interventions at L or later cannot change them. With `prefix`
        (causal LMs), positions before `prefix.length` are not recomputed either: their keys
        and values come from the clean run, `start_resid` holds only the later positions, and
        captures, interventions and `logits_to_keep` address positions from `prefix.length` on.
        """
        capture = tuple(capture)
        interventions = tuple(interventions)
        kwargs: dict = {"attention_mask": batch.attention_mask, "use_cache": False}
        if self.info.is_causal:
            kwargs["logits_to_keep"] = logits_to_keep
        skip = (start_layer is not None and start_layer > 0) or prefix is not None
        if skip:
            if start_resid is None:
                raise HookError("start_layer needs start_resid (the clean resid_pre at that layer)")
            start_layer = start_layer or 0
            early = [n for n in (*capture, *(iv.hook for iv in interventions)) if hook_layer(n) < start_layer]
            if early:
                raise HookError(f"hook points {early} lie before start_layer={start_layer}")
            kwargs["inputs_embeds"] = start_resid
            if prefix is not None:
                kwargs["past_key_values"] = prefix.cache(batch.size // prefix.rows)
        else:
            kwargs["input_ids"] = batch.input_ids
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            cache = stack.enter_context(self.hooks(capture, interventions, detach=not grad))
            if skip and start_layer > 0:
                stack.enter_context(self.adapter.starting_at(start_layer))
            elif skip:
                stack.enter_context(self.adapter.embeddings_pass_through())
            out = self.hf_model(**kwargs)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, cache)

    def reference_run(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        keep_prefix: bool = True,
    ) -> tuple[ForwardResult, PrefixCache | None]:
        """A no-grad pass that later passes start from: its captures and, in causal LMs with
        `keep_prefix`, every layer's keys and values (the last logit only is computed)."""
        with_cache = keep_prefix and self.info.is_causal
        with torch.no_grad(), self.hooks(capture=capture, interventions=interventions) as cache:
            out = self.hf_model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                use_cache=with_cache,
                **({"logits_to_keep": 1} if self.info.is_causal else {}),
            )
        prefix = None
        if with_cache:
            kv = out.past_key_values
            prefix = PrefixCache([layer.keys for layer in kv.layers], [layer.values for layer in kv.layers], batch.size)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, cache), prefix

    def run_with_cache(self, batch: TokenBatch, names: Iterable[str]) -> ForwardResult:
        return self.forward(batch, capture=names)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.adapter.unembed(resid)

    # --- batched sweeps ----------------------------------------------------------------
    def sweep(self, batch: TokenBatch, items, metric, **options) -> torch.Tensor:
        """N intervention sets as batched passes: see `interpsuite.models.sweep.sweep`."""
        from .sweep import sweep

        return sweep(self, batch, items, metric, **options)

    def hooks_left(self) -> int:
        return count_hooks(self.hf_model)
