"""The SAE engine: config checks, the three activation functions, exact save/load, the
geometric median, the shuffle buffer, exact resume, and ground-truth dictionary recovery on
synthetic data for every architecture (all on CPU, seeded)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from interpsuite_plugins.sae import (
    SAEConfig,
    SparseAutoencoder,
    SyntheticDictionary,
    TrainSettings,
    dictionary_recovery,
    geometric_median,
    sae_loss,
    shuffle_buffer,
    store_batches,
    synthetic_recovery,
    train_sae,
)
from interpsuite_plugins.sae.model import step

from interpsuite.artifacts import ModelFingerprint
from interpsuite.errors import ConfigError

ARCHS = ("relu", "topk", "jumprelu")


class SimulatedCrashError(Exception):
    pass


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the same float sums in the same order on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"d_in": 0, "width": 8, "k": 4}, "d_in must be >= 1"),
        ({"d_in": 4, "width": 0}, "width must be >= 1"),
        ({"d_in": 4, "width": 8, "architecture": "gated"}, "architecture 'gated' is unknown"),
        ({"d_in": 4, "width": 8, "k": 0}, r"k must be between 1 and width \(8\)"),
        ({"d_in": 4, "width": 8, "k": 9}, r"k must be between 1 and width \(8\)"),
        ({"d_in": 4, "width": 8, "k": 4, "dtype": "int8"}, "dtype 'int8' is unknown"),
        ({"d_in": 4.5, "width": 8, "k": 4}, "d_in must be an integer"),
        ({"d_in": 4, "width": 8, "architecture": "jumprelu", "jumprelu_bandwidth": 0}, "bandwidth must be > 0"),
    ],
)
def test_bad_configs_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        SAEConfig(**options)
    assert "\n" not in str(info.value)


def test_k_is_only_checked_for_topk():
    assert SAEConfig(d_in=4, width=8, architecture="relu", k=100).k == 100


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 10, "total_tokens": 100}, "steps or total_tokens, not both"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr_decay": 1.5}, r"lr_decay is a fraction"),
        ({"init_b_dec": "zero"}, "init_b_dec 'zero' is unknown"),
    ],
)
def test_bad_train_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings(**options)


def test_learning_rate_schedule():
    settings = TrainSettings(lr=1.0, steps=100, lr_warmup_steps=10, lr_decay=0.2)
    lrs = [settings.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:80])
    assert lrs[80] == pytest.approx(1.0) and lrs[99] == pytest.approx(1 / 20)
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:], strict=False))
    assert TrainSettings(total_tokens=1000, batch_size=100).total_steps == 10


# --- forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode_shapes_and_signs(arch):
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=20, architecture=arch, k=4), seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
    x = torch.randn(3, 5, 6)
    acts = sae.encode(x)
    assert acts.shape == (3, 5, 20) and (acts >= 0).all()
    assert sae.decode(acts).shape == (3, 5, 6)
    assert torch.allclose(sae(x), acts @ sae.W_dec + sae.b_dec)
    rows = sae.W_dec.norm(dim=1)
    assert torch.allclose(rows, torch.ones_like(rows)) and torch.equal(sae.W_enc, sae.W_dec.T)
    with pytest.raises(ConfigError, match="expects 6"):
        sae.encode(torch.randn(2, 7))


def test_topk_keeps_exactly_the_k_largest():
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=64, architecture="topk", k=5), seed=2)
    x = torch.randn(200, 8) * 3
    with torch.no_grad():
        pre = sae.pre_acts(x)
        acts = sae.encode(x)
    nonzero = (acts > 0).sum(-1)
    assert torch.equal(nonzero, (pre > 0).sum(-1).clamp(max=5))
    assert (nonzero == 5).float().mean() > 0.9  # the case the count check is about
    kth = pre.topk(5, dim=-1).values[:, -1:]
    assert torch.equal(acts, torch.where((pre >= kth) & (pre > 0), pre, torch.zeros_like(pre)))


def test_jumprelu_zeroes_below_threshold_and_learns_the_threshold_through_the_ste():
    cfg = SAEConfig(d_in=4, width=3, architecture="jumprelu", jumprelu_bandwidth=0.5)
    sae = SparseAutoencoder(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4, 3))
        sae.threshold.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.tensor([[0.4, 1.1, 2.0, 9.0], [0.6, 0.9, 2.1, 9.0], [0.8, -3.0, 1.9, 9.0]])
    acts = sae.encode(x)
    expected = torch.tensor([[0.0, 1.1, 0.0], [0.6, 0.0, 2.1], [0.8, 0.0, 0.0]])
    assert torch.equal(acts.detach(), expected)
    # d L0 / d threshold = -(1/bandwidth) * #{tokens with |pre - threshold| < bandwidth / 2}
    pre = sae.pre_acts(x)
    step(pre, sae.threshold, cfg.jumprelu_bandwidth).sum().backward()
    near = ((pre.detach() - sae.threshold.detach()).abs() < 0.25).sum(0).float()
    assert torch.equal(near, torch.tensor([2.0, 2.0, 3.0]))
    assert torch.allclose(sae.threshold.grad, -near / 0.5)


# --- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_exact(arch, tmp_path):
    cfg = SAEConfig(d_in=5, width=12, architecture=arch, k=3, hook="blocks.1.resid_post", model_name="tiny")
    sae = SparseAutoencoder(cfg, seed=3)
    with torch.no_grad():
        for param in sae.parameters():
            param.add_(torch.rand_like(param))
    sae.save(tmp_path / "sae")
    loaded = SparseAutoencoder.load(tmp_path / "sae", d_in=5)
    assert loaded.cfg == cfg and loaded.fingerprint is None
    original, restored = sae.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    x = torch.randn(7, 5)
    assert torch.equal(sae(x), loaded(x))


def test_a_given_fingerprint_is_kept(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=5, width=12, k=3))
    fingerprint = ModelFingerprint("m", "llama", 2, 5, 100, "ab" * 32)
    sae.save(tmp_path / "sae", fingerprint=fingerprint)
    assert SparseAutoencoder.load(tmp_path / "sae").fingerprint == fingerprint


def test_loading_the_wrong_or_a_corrupt_sae_is_a_config_error(tmp_path):
    folder = tmp_path / "sae"
    SparseAutoencoder(SAEConfig(d_in=5, width=12, k=3, hook="blocks.0.mlp.post")).save(folder)
    with pytest.raises(ConfigError, match="trained on 5-dimensional activations.*these are 8-dimensional"):
        SparseAutoencoder.load(folder, d_in=8)
    with pytest.raises(ConfigError, match="is not a folder"):
        SparseAutoencoder.load(tmp_path / "missing")
    # a config that does not fit the tensors
    meta = json.loads((folder / "artifact.json").read_text())
    meta["spec"]["width"] = 13
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="do not fit its config"):
        SparseAutoencoder.load(folder)
    meta["spec"]["width"] = 12
    meta["spec"]["colour"] = "red"
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"unknown config keys \['colour'\]"):
        SparseAutoencoder.load(folder)
    # flipped bytes in the tensors
    data = bytearray((folder / "tensors.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        SparseAutoencoder.load(folder)


# --- helpers --------------------------------------------------------------------------------


def test_geometric_median_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(30, 2, generator=generator), torch.tensor([[40.0, 40.0], [45.0, 38.0]])])

    def cost(y: torch.Tensor) -> torch.Tensor:  # summed distance, y [..., 2]
        return (points.double()[:, None, :] - y.reshape(-1, 2)[None]).norm(dim=-1).sum(0)

    median = geometric_median(points, max_iter=500, tol=1e-12).double()
    # brute force: a coarse grid, then a fine grid around its best point
    best = torch.zeros(2, dtype=torch.float64)
    for span in (50.0, 1.0, 0.02):
        axis = torch.linspace(-span, span, 201, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) + best
        best = grid[cost(grid).argmin()]
    assert torch.allclose(median, best, atol=1e-3)
    assert cost(median) <= cost(best) + 1e-9
    assert (points.double().mean(0) - median).norm() > 1.0  # the outliers move the mean, not the median


def test_shuffle_buffer_emits_every_row_once_and_mixes_chunks():
    chunks = [torch.full((50, 2), float(i)) for i in range(20)]
    for i, chunk in enumerate(chunks):
        chunk[:, 1] = torch.arange(50) + 1000 * i  # unique row ids
    pulled = []

    def source():
        for i, chunk in enumerate(chunks):
            pulled.append(i)
            yield chunk

    out = []
    pulled_at_first = None
    for batch in shuffle_buffer(source(), buffer_tokens=200, batch_size=32, seed=0):
        if pulled_at_first is None:
            pulled_at_first = len(pulled)
        out.append(batch)
    rows = torch.cat(out)
    assert sorted(rows[:, 1].tolist()) == sorted(torch.cat(chunks)[:, 1].tolist())
    assert all(len(b) == 32 for b in out[:-1])
    assert pulled_at_first == 4  # bounded memory: it starts emitting once the buffer is full
    assert len(torch.unique(out[0][:, 0])) >= 3  # one batch holds rows of several chunks
    assert not torch.equal(rows, torch.cat(chunks))
    with pytest.raises(ConfigError, match="at least 2 x batch_size"):
        next(shuffle_buffer(iter(chunks), buffer_tokens=40, batch_size=32))


def test_dictionary_recovery_scores():
    data = SyntheticDictionary(d=16, n_features=24, k=2, seed=0)
    assert dictionary_recovery(data.features, data.features) == pytest.approx(1.0)
    # signed: a row pointing against a feature does not count (the codes are non-negative)
    assert dictionary_recovery(-data.features[:1], data.features[:1]) == pytest.approx(-1.0)
    scaled = torch.cat([3 * data.features[:12], torch.randn(50, 16)])
    assert 0.5 < dictionary_recovery(scaled, data.features) < 0.9  # half found exactly, half not
    x, codes = data.sample(100, return_codes=True)
    assert ((codes > 0).sum(1) == 2).all() and torch.allclose(x, codes @ data.features)
    with pytest.raises(ConfigError, match="same d"):
        dictionary_recovery(torch.randn(5, 15), data.features)


# --- training -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_synthetic_dictionary_is_recovered(arch):
    """The shared recipe (`synthetic_recovery`, also the sae_train analyzer's check)."""
    result = synthetic_recovery(arch)
    print(f"{arch}: recovery {result.recovery:.4f}, EV {result.explained_variance:.4f}, L0 {result.l0:.2f}")
    assert result.recovery > 0.9 and result.explained_variance > 0.95
    assert result.l0 < 12  # sparse: a dense code could reach the EV without finding the features
    assert result.steps == 1000 and result.tokens == 256_000
    assert result.mse_end < result.mse_start / 4


def _stream(seed: int, rows: int, fail_after: int | None = None):
    """A deterministic stream of 48-row chunks (not a multiple of the batch size); it raises
    after `fail_after` rows to simulate a crash."""
    data = SyntheticDictionary(16, 32, 2, noise=0.01, seed=seed)
    sent = 0
    while sent < rows:
        if fail_after is not None and sent >= fail_after:
            raise SimulatedCrashError
        chunk = data.sample(48)
        sent += 48
        yield chunk


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_equals_an_uninterrupted_run(arch, tmp_path):
    cfg = SAEConfig(d_in=16, width=96, architecture=arch, k=4, jumprelu_init_threshold=0.05)
    # a tiny dead threshold so AuxK (topk) is active and its state matters for the resume
    settings = {"steps": 40, "batch_size": 64, "lr": 3e-3, "dead_tokens_threshold": 128, "lr_warmup_steps": 5}
    straight = SparseAutoencoder(cfg, seed=0)
    history = train_sae(straight, _stream(1, 40 * 64 + 48), TrainSettings(**settings))

    interrupted = SparseAutoencoder(cfg, seed=0)
    resumable = TrainSettings(**settings, checkpoint_dir=tmp_path, checkpoint_every=20)
    with pytest.raises(SimulatedCrashError):
        train_sae(interrupted, _stream(1, 40 * 64 + 48, fail_after=20 * 64), resumable)
    resumed = SparseAutoencoder(cfg, seed=99)  # fresh weights: everything comes from the checkpoint
    history_resumed = train_sae(resumed, _stream(1, 40 * 64 + 48), resumable)

    assert history_resumed.steps_done == 40 and history_resumed.step == list(range(1, 41))
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert history_resumed.to_dict() == history.to_dict()
    if arch == "topk":
        assert max(history.dead_fraction) > 0  # the AuxK branch ran
    # a checkpoint of another SAE is refused
    other = SparseAutoencoder(dataclasses.replace(cfg, width=97))
    with pytest.raises(ConfigError, match=r"another SAE \(saved vs now: \{'width': \(96, 97\)\}\)"):
        train_sae(other, _stream(1, 64), resumable)


@pytest.mark.parametrize("aux_coefficient", [0.0, 1 / 32])
def test_auxk_gives_dead_latents_a_gradient(aux_coefficient):
    """Latent 5 is latent 0 at half strength, so top-1 never picks it: only AuxK can train it."""
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=6, k=1), seed=4)
    with torch.no_grad():
        sae.W_enc[:, 5] = 0.5 * sae.W_enc[:, 0]
    encoder_before, decoder_before = sae.W_enc[:, 5].detach().clone(), sae.W_dec[5].detach().clone()
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    settings = TrainSettings(steps=2, batch_size=64, lr=1e-4, dead_tokens_threshold=1, aux_coefficient=aux_coefficient)
    history = train_sae(sae, iter(x), settings)
    assert history.dead_fraction[0] == 0 and history.dead_fraction[1] > 0  # dead after one step without firing
    # the decoder row is renormalised every step (rounding-level changes); the encoder never is
    decoder_change = float((sae.W_dec[5].detach() - decoder_before).abs().max())
    if aux_coefficient:
        assert not torch.equal(sae.W_enc[:, 5], encoder_before) and decoder_change > 1e-5
    else:
        assert torch.equal(sae.W_enc[:, 5], encoder_before) and decoder_change < 1e-6


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_the_sparsity_penalty_ignores_how_scale_is_split_between_encoder_and_decoder(arch):
    """relu's L1 is weighted by decoder norms (Anthropic 2024): moving a factor from a latent's
    decoder row into its encoder leaves the loss unchanged (a plain L1 would drop by that factor)."""
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=16, architecture=arch, jumprelu_init_threshold=0.05), seed=5)
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    settings = TrainSettings()
    with torch.no_grad():
        before = sae_loss(sae, x, settings, sparsity=0.5)[0]
        sae.W_enc[:, :8] *= 4
        sae.b_enc[:8] *= 4
        sae.W_dec[:8] /= 4
        if arch == "jumprelu":
            sae.threshold[:8] *= 4
        after, _, acts, _ = sae_loss(sae, x, settings, sparsity=0.5)
    assert (acts[:, :8] > 0).any()
    assert torch.allclose(after, before, rtol=1e-5)


def test_batches_of_the_wrong_width_are_refused():
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=16, k=2))
    with pytest.raises(ConfigError, match=r"batches must be \[n, 8\]"):
        train_sae(sae, [torch.randn(10, 9)], TrainSettings(steps=1, batch_size=4))
    with pytest.raises(ConfigError, match=r"fewer than batch_size \(16\) rows"):
        train_sae(sae, [torch.randn(10, 8)], TrainSettings(steps=1, batch_size=16))


def test_training_from_an_activation_store(tmp_path):
    from interpsuite_plugins.activation.store import write_store

    from interpsuite.models import load_model

    model = load_model("tiny_llama")
    texts = [f"Sentence number {i} talks about {'cats' if i % 2 else 'the weather'} today." for i in range(12)]
    hook = "blocks.1.resid_post"
    store = write_store(tmp_path / "store", model, texts, [hook], shard_tokens=37, batch_size=4, max_length=32)
    full = store.load(hook)
    batches = list(store_batches(tmp_path / "store", hook, batch_size=16, buffer_tokens=64, seed=3))
    rows = torch.cat(batches)
    assert rows.shape == full.shape and not torch.equal(rows, full)
    # every row once, as a multiset of rows (identical rows, e.g. a text's first token, counted)
    unique_rows, unique_full = (
        torch.unique(rows, dim=0, return_counts=True),
        torch.unique(full, dim=0, return_counts=True),
    )
    for got, want in zip(unique_rows, unique_full, strict=True):
        assert torch.equal(got, want)
    assert all(len(b) == 16 for b in batches[:-1])
    again = torch.cat(list(store_batches(store, hook, batch_size=16, buffer_tokens=64, seed=3)))
    assert torch.equal(rows, again)  # deterministic: what resuming relies on

    sae = SparseAutoencoder(SAEConfig(d_in=full.shape[1], width=32, k=4, hook=hook, model_name="tiny_llama"))
    steps = len(full) // 16
    stream = store_batches(store, hook, 16, buffer_tokens=64)
    history = train_sae(sae, stream, TrainSettings(steps=steps, batch_size=16, progress=True))
    assert history.steps_done == steps and all(math.isfinite(v) for v in history.loss)


def test_folding_the_activation_scale_keeps_the_latents_and_undoes_the_scale():
    from interpsuite_plugins.sae.training import fold_activation_scale, norm_scaling_factor

    torch.manual_seed(0)
    x = 40 * torch.randn(256, 16)
    scale = norm_scaling_factor(x)
    assert float((scale * x).norm(dim=-1).mean()) == pytest.approx(4.0, rel=1e-6)  # sqrt(16)
    for architecture, extra in (("relu", {}), ("topk", {"k": 4}), ("jumprelu", {})):
        sae = SparseAutoencoder(SAEConfig(d_in=16, width=32, architecture=architecture, **extra), seed=1)
        with torch.no_grad():
            sae.b_dec.copy_(torch.randn(16))
            sae.b_enc.copy_(0.1 * torch.randn(32))
            latents, out = sae.encode(scale * x), sae(scale * x) / scale
        fold_activation_scale(sae, scale)
        with torch.no_grad():
            assert torch.allclose(sae.encode(x), latents, atol=1e-4)
            assert torch.allclose(sae(x), out, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="positive"):
        fold_activation_scale(sae, 0.0)
    with pytest.raises(ConfigError, match="all zero"):
        norm_scaling_factor(torch.zeros(3, 4))
