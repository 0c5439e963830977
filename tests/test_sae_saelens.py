"""SAELens format interop (plugins/sae/saelens.py).

Part one needs no sae_lens: our SAE -> SAELens folder -> our SAE is bit-identical; the hook
table maps both ways; the SAELens-only settings that we fold (apply_b_dec_to_input False,
rescale_acts_by_decoder_norm, thresholds <= 0) reproduce SAELens's formulas, written out
here; bad folders are one ConfigError line. Part two (sae_lens installed, a test-only extra)
checks both directions against SAELens's own save and load code."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder, load_saelens, save_saelens
from interpsuite_plugins.sae.saelens import (
    HOOK_SITES,
    SAELENS_CFG_FILE,
    SAELENS_WEIGHTS_FILE,
    SAELensFormatWarning,
    from_saelens_hook,
    to_saelens_hook,
)
from safetensors.torch import load_file, save_file

from interpsuite.errors import ConfigError

ARCHS = ("relu", "topk", "jumprelu")
D_IN, WIDTH, K = 16, 32, 4


def _ours(arch: str, seed: int = 0, dtype: str = "float32", hook: str = "blocks.2.resid_post") -> SparseAutoencoder:
    """An SAE with every parameter random (biases and thresholds too, so each one matters)."""
    # jumprelu_bandwidth is stored (as SAELens training metadata) for jumprelu SAEs only
    bandwidth = 0.01 if arch == "jumprelu" else 0.001
    cfg = SAEConfig(d_in=D_IN, width=WIDTH, architecture=arch, k=K if arch == "topk" else 32, hook=hook,
                    model_name="gpt2", dtype=dtype, jumprelu_bandwidth=bandwidth)  # fmt: skip
    sae = SparseAutoencoder(cfg, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            values = _random(name, param.shape, generator)
            if name == "threshold":
                values = values.abs() + 0.01  # ours are positive (MIN_THRESHOLD)
            param.copy_(values.to(param.dtype))
    return sae


def _random(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Random weights at a trained SAE's scale (activations of unit size, outputs of order
    one), so an absolute tolerance of 1e-5 is a float32 rounding bound, not a loose one.
    Thresholds straddle zero (SAELens's may: it gives ReLU(pre) below zero)."""
    values = torch.randn(shape, generator=generator)
    if name in ("W_enc", "W_dec"):
        return values / D_IN**0.5
    if name == "threshold":
        return values * 0.2
    return values * 0.1


def _inputs(seed: int = 7, rows: int = 64) -> torch.Tensor:
    return torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(seed))


def _cfg(folder: Path) -> dict:
    return json.loads((folder / SAELENS_CFG_FILE).read_text())


def _write_cfg(folder: Path, record: dict) -> None:
    (folder / SAELENS_CFG_FILE).write_text(json.dumps(record))


# --- round trip (no sae_lens) --------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_identical(tmp_path, arch):
    sae = _ours(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_saelens(sae, tmp_path)
        back = load_saelens(tmp_path, d_in=D_IN)
    assert back.cfg.to_dict() == sae.cfg.to_dict()
    for name, tensor in sae.tensors().items():
        assert torch.equal(back.tensors()[name], tensor), name
    assert set(back.tensors()) == set(sae.tensors())
    x = _inputs()
    assert torch.equal(back(x), sae(x))
    assert torch.equal(back.encode(x), sae.encode(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_written_folder_uses_saelens_names(tmp_path, arch):
    save_saelens(_ours(arch), tmp_path)
    record = _cfg(tmp_path)
    assert record["architecture"] == {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[arch]
    assert (record["d_in"], record["d_sae"], record["dtype"]) == (D_IN, WIDTH, "float32")
    assert record["apply_b_dec_to_input"] is True
    assert record["normalize_activations"] == "none"
    assert record["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert record["metadata"]["model_name"] == "gpt2"
    assert record["metadata"]["sae_lens_version"].startswith("6.")
    assert ("k" in record) == (arch == "topk")
    if arch == "topk":
        assert record["k"] == K and record["rescale_acts_by_decoder_norm"] is False
    names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    weights = load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))
    assert set(weights) == names
    assert weights["W_enc"].shape == (D_IN, WIDTH) and weights["W_dec"].shape == (WIDTH, D_IN)


def test_half_precision_round_trip_keeps_dtype(tmp_path):
    sae = _ours("topk", dtype="bfloat16")
    save_saelens(sae, tmp_path)
    assert _cfg(tmp_path)["dtype"] == "bfloat16"
    assert load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))["W_enc"].dtype == torch.bfloat16
    back = load_saelens(tmp_path)
    assert back.W_enc.dtype == torch.bfloat16
    assert all(torch.equal(back.tensors()[n], t) for n, t in sae.tensors().items())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """Only JSON and safetensors are read: torch.load (pickle) is never called."""
    save_saelens(_ours("jumprelu"), tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", forbidden)
    load_saelens(tmp_path)
    raw = (tmp_path / SAELENS_WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + header_len])["W_enc"]["dtype"] == "F32"  # a safetensors header


# --- hook names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("blocks.0.resid_pre", "blocks.0.hook_resid_pre"),
        ("blocks.3.resid_mid", "blocks.3.hook_resid_mid"),
        ("blocks.11.resid_post", "blocks.11.hook_resid_post"),
        ("blocks.5.attn.z", "blocks.5.attn.hook_z"),
        ("blocks.5.attn.out", "blocks.5.hook_attn_out"),
        ("blocks.7.mlp.out", "blocks.7.hook_mlp_out"),
        ("blocks.7.mlp.post", "blocks.7.mlp.hook_post"),
        ("blocks.1.mlp.up", "blocks.1.mlp.hook_pre_linear"),
    ],
)
def test_hook_names_map_both_ways(ours, theirs):
    assert to_saelens_hook(ours) == theirs
    assert from_saelens_hook(theirs) == ours


def test_hook_table_is_a_bijection():
    for site in HOOK_SITES:
        name = f"blocks.4.{site}"
        assert from_saelens_hook(to_saelens_hook(name)) == name
    assert len(set(HOOK_SITES.values())) == len(HOOK_SITES)
    for unmapped in ("embed", "blocks.2.attn.pattern", "blocks.x.hook_resid_pre", "hook_embed", ""):
        assert to_saelens_hook(unmapped) is None
        assert from_saelens_hook(unmapped) is None


def test_unmapped_hook_warns_on_save_and_round_trips(tmp_path):
    sae = _ours("relu", hook="blocks.2.attn.pattern")
    with pytest.warns(SAELensFormatWarning, match="attn.pattern"):
        save_saelens(sae, tmp_path)
    assert _cfg(tmp_path)["metadata"]["hook_name"] == "blocks.2.attn.pattern"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_saelens(tmp_path).cfg.hook == "blocks.2.attn.pattern"


def test_foreign_hook_name_is_kept_with_a_warning(tmp_path):
    save_saelens(_ours("relu"), tmp_path)
    record = _cfg(tmp_path)
    record["metadata"] = {"sae_lens_version": "6.0.0", "hook_name": "model.layers.3"}
    _write_cfg(tmp_path, record)
    with pytest.warns(SAELensFormatWarning, match="model.layers.3"):
        assert load_saelens(tmp_path).cfg.hook == "model.layers.3"


# --- settings folded into the weights (SAELens's formulas written out) --------------------


def _saelens_reference(tensors: dict, x: torch.Tensor, arch: str, b_dec_to_input: bool, rescale: bool) -> torch.Tensor:
    """SAELens 6.x inference forward (StandardSAE / TopKSAE / JumpReLUSAE), in float64."""
    t = {name: value.double() for name, value in tensors.items()}
    x = x.double()
    pre = (x - t["b_dec"] * b_dec_to_input) @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    if arch == "topk":
        if rescale:
            pre = pre * norms
        values, indices = pre.topk(K, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        if rescale:
            acts = acts / norms
    elif arch == "jumprelu":
        acts = pre.relu() * (pre > t["threshold"])
    else:
        acts = pre.relu()
    return acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize(
    ("arch", "b_dec_to_input", "rescale"),
    [("relu", False, False), ("topk", True, True), ("topk", False, True), ("jumprelu", False, False)],
)
def test_saelens_only_settings_are_folded_exactly(tmp_path, arch, b_dec_to_input, rescale):
    save_saelens(_ours(arch), tmp_path)
    weights = load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))
    weights["W_dec"] = weights["W_dec"] * torch.linspace(0.5, 2.0, WIDTH)[:, None]  # decoder norms != 1
    if arch == "jumprelu":
        weights["threshold"][:8] = -weights["threshold"][:8]  # thresholds < 0: SAELens gives ReLU(pre)
    save_file(weights, str(tmp_path / SAELENS_WEIGHTS_FILE))
    record = _cfg(tmp_path)
    record["apply_b_dec_to_input"] = b_dec_to_input
    if arch == "topk":
        record["rescale_acts_by_decoder_norm"] = rescale
    _write_cfg(tmp_path, record)
    sae = load_saelens(tmp_path)
    x = _inputs(rows=256)
    expected = _saelens_reference(weights, x, arch, b_dec_to_input, rescale)
    assert (sae(x).double() - expected).abs().max().item() <= 1e-5
    if arch == "jumprelu":
        assert (sae.threshold >= 0).all()


def test_all_ones_scaling_factor_is_dropped_and_log_threshold_read(tmp_path):
    sae = _ours("jumprelu")
    save_saelens(sae, tmp_path)
    weights = load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))
    weights["scaling_factor"] = torch.ones(WIDTH)
    weights["log_threshold"] = weights.pop("threshold").log()
    save_file(weights, str(tmp_path / SAELENS_WEIGHTS_FILE))
    back = load_saelens(tmp_path)
    assert torch.allclose(back.threshold, sae.threshold, rtol=1e-6, atol=0)
    x = _inputs()
    assert (back(x) - sae(x)).abs().max().item() <= 1e-5


def test_pre_6_config_is_read(tmp_path):
    """SAELens 5.x wrote metadata at the top level, topk as activation_fn_kwargs, booleans for
    normalize_activations."""
    sae = _ours("topk")
    save_saelens(sae, tmp_path)
    _write_cfg(tmp_path, {
        "d_in": D_IN, "d_sae": WIDTH, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2",
        "hook_point": "blocks.2.hook_resid_post", "hook_point_layer": 2, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
        "normalize_activations": False, "context_size": 128, "sae_lens_training_version": "3.0.0",
    })  # fmt: skip
    with pytest.warns(SAELensFormatWarning, match="hook_point_layer"):
        back = load_saelens(tmp_path)
    assert back.cfg.to_dict() == sae.cfg.to_dict()
    assert torch.equal(back(_inputs()), sae(_inputs()))


# --- bad input -----------------------------------------------------------------------------


def test_unknown_harmless_field_warns_and_loads(tmp_path):
    sae = _ours("relu")
    save_saelens(sae, tmp_path)
    record = _cfg(tmp_path) | {"wandb_run_id": "abc", "n_tokens_seen": 10}
    _write_cfg(tmp_path, record)
    with pytest.warns(SAELensFormatWarning, match=r"unknown fields \['n_tokens_seen', 'wandb_run_id'\]"):
        back = load_saelens(tmp_path)
    assert torch.equal(back(_inputs()), sae(_inputs()))


def test_layout_settings_warn_and_keep_the_maths(tmp_path):
    """hook_z reshaping and a head index choose which numbers go in, not what the SAE computes."""
    sae = _ours("relu", hook="blocks.1.attn.z")
    save_saelens(sae, tmp_path)
    record = _cfg(tmp_path)
    record["reshape_activations"] = "hook_z"
    record["metadata"]["hook_head_index"] = 2
    _write_cfg(tmp_path, record)
    with pytest.warns(SAELensFormatWarning, match=r"flattened over heads.*hook_head_index=2"):
        back = load_saelens(tmp_path)
    assert back.cfg.hook == "blocks.1.attn.z"
    assert torch.equal(back(_inputs()), sae(_inputs()))


def test_topk_only_fields_on_relu_warn(tmp_path):
    save_saelens(_ours("relu"), tmp_path)
    _write_cfg(tmp_path, _cfg(tmp_path) | {"k": 3})
    with pytest.warns(SAELensFormatWarning, match=r"\['k'\] ignored for architecture 'standard'"):
        load_saelens(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"normalize_activations": "expected_average_only_in"}, "fold_activation_norm_scaling_factor"),
        ({"normalize_activations": "constant_norm_rescale"}, "normalize_activations='constant_norm_rescale'"),
        ({"normalize_activations": "covariance_whitening"}, "fold_activation_whitening"),
        ({"normalize_activations": True}, "normalize_activations='expected_average_only_in'"),
        ({"finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"architecture": ["topk"]}, r"architecture \['topk'\] is not supported"),
        ({"normalize_activations": ["none"]}, r"normalize_activations=\['none'\]"),
        ({"architecture": "standard", "activation_fn": "tanh-relu"}, "activation_fn='tanh-relu'"),
        ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input must be true or false"),
        ({"reshape_activations": "hook_q"}, "reshape_activations='hook_q'"),
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"d_sae": "32"}, "d_sae must be a positive integer"),
    ],
)
def test_math_changing_settings_are_refused(tmp_path, change, message):
    save_saelens(_ours("relu"), tmp_path)
    _write_cfg(tmp_path, _cfg(tmp_path) | change)
    with pytest.raises(ConfigError, match=message) as info:
        load_saelens(tmp_path)
    assert "\n" not in str(info.value)


def test_wrong_d_in_is_refused(tmp_path):
    save_saelens(_ours("topk"), tmp_path)
    with pytest.raises(ConfigError, match=r"trained on 16-dimensional activations \(blocks.2.resid_post\), but these "
                       "are 768-dimensional"):  # fmt: skip
        load_saelens(tmp_path, d_in=768)


def test_config_and_tensors_disagreeing_is_refused(tmp_path):
    save_saelens(_ours("relu"), tmp_path)
    _write_cfg(tmp_path, _cfg(tmp_path) | {"d_in": 20})
    with pytest.raises(ConfigError, match=r"W_enc has shape \[16, 32\], but cfg.json \(d_in=20"):
        load_saelens(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_tensor", "extra_tensor", "nan", "int"])
def test_corrupt_weights_are_refused(tmp_path, damage):
    save_saelens(_ours("jumprelu"), tmp_path)
    path = tmp_path / SAELENS_WEIGHTS_FILE
    weights = load_file(str(path))
    messages = {"missing_tensor": r"missing \['threshold'\]", "extra_tensor": r"unexpected \['b_mag'\]",
                "nan": "W_dec holds NaN", "int": "not a float tensor"}  # fmt: skip
    message = messages.get(damage, "not a readable safetensors")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not safetensors at all" * 10)
    else:
        if damage == "missing_tensor":
            del weights["threshold"]
        elif damage == "extra_tensor":
            weights["b_mag"] = torch.zeros(WIDTH)
        elif damage == "nan":
            weights["W_dec"][3, 4] = float("nan")
        else:
            weights["b_dec"] = torch.zeros(D_IN, dtype=torch.int32)
        save_file(weights, str(path))
    with pytest.raises(ConfigError, match=message) as info:
        load_saelens(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_cfg", "cfg.json is missing"),
        ("no_weights", "sae_weights.safetensors is missing"),
        ("bad_json", "cfg.json is not valid JSON"),
        ("list_json", "cfg.json is not a JSON object"),
        ("not_a_folder", "not a folder"),
    ],
)
def test_malformed_folders_are_one_line(tmp_path, damage, message):
    save_saelens(_ours("relu"), tmp_path)
    target = tmp_path
    if damage == "no_cfg":
        (tmp_path / SAELENS_CFG_FILE).unlink()
    elif damage == "no_weights":
        (tmp_path / SAELENS_WEIGHTS_FILE).unlink()
    elif damage == "bad_json":
        (tmp_path / SAELENS_CFG_FILE).write_text("{not json")
    elif damage == "list_json":
        (tmp_path / SAELENS_CFG_FILE).write_text("[1, 2]")
    else:
        target = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=message) as info:
        load_saelens(target)
    assert "\n" not in str(info.value)


def test_save_refuses_a_non_sae(tmp_path):
    with pytest.raises(ConfigError, match="needs a SparseAutoencoder"):
        save_saelens(torch.nn.Linear(2, 2), tmp_path)


# --- against SAELens itself (test-only extra) -----------------------------------------------


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


def _theirs(sae_lens, arch: str, **options):
    """A SAELens inference SAE with every parameter random."""
    metadata = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.1.hook_mlp_out", model_name="pythia-70m")
    common = {"d_in": D_IN, "d_sae": WIDTH, "metadata": metadata, **options}
    if arch == "relu":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common))
    elif arch == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(k=K, **common))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(_random(name, param.shape, generator))
    return sae


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("relu", {}),
        ("relu", {"apply_b_dec_to_input": False}),
        ("topk", {}),
        ("topk", {"rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
    ],
)
def test_saelens_saved_sae_loads_here(tmp_path, sae_lens, arch, options):
    theirs = _theirs(sae_lens, arch, **options)
    theirs.save_model(tmp_path)
    ours = load_saelens(tmp_path, d_in=D_IN)
    assert ours.cfg.architecture == arch
    assert ours.cfg.hook == "blocks.1.mlp.out" and ours.cfg.model_name == "pythia-70m"
    x = _inputs(rows=256)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5
        if not options:  # nothing folded: the latents agree too
            assert (ours.encode(x) - theirs.encode(x)).abs().max().item() <= 1e-5


def test_saelens_training_sae_loads_with_its_jumprelu_settings(tmp_path, sae_lens):
    cfg = sae_lens.JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=WIDTH, jumprelu_bandwidth=0.02,
                                             jumprelu_init_threshold=0.03)  # fmt: skip
    theirs = sae_lens.JumpReLUTrainingSAE(cfg)
    theirs.save_inference_model(tmp_path)
    ours = load_saelens(tmp_path)
    assert (ours.cfg.jumprelu_bandwidth, ours.cfg.jumprelu_init_threshold) == (0.02, 0.03)
    x = _inputs()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_our_sae_loads_in_saelens(tmp_path, sae_lens, arch):
    ours = _ours(arch, hook="blocks.3.attn.z")
    save_saelens(ours, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    expected = {"relu": sae_lens.StandardSAE, "topk": sae_lens.TopKSAE, "jumprelu": sae_lens.JumpReLUSAE}[arch]
    assert type(theirs) is expected
    assert theirs.cfg.metadata.hook_name == "blocks.3.attn.hook_z"
    assert theirs.cfg.metadata.model_name == "gpt2"
    x = _inputs(rows=256)
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max().item() <= 1e-5
        assert (theirs.encode(x) - ours.encode(x)).abs().max().item() <= 1e-5
