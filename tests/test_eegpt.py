"EEGPT: the published architecture's shapes and function, the released checkpoint layout (round trip, strictness, safety), the audited wrapper."
import json, logging, math
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brain_go_brrr import normalization
from brain_go_brrr.eegpt import (EEGPTConfig, EEGPTEncoder, EEGPT_SIZES, EEGPT_VOCABULARY, PRETRAINED_CHANNELS,
                                 CheckpointError, LinearProbe, NormalizedEEGPT, create_normalized_eegpt, eegpt_channel_ids,
                                 load_eegpt, n_params, random_checkpoint, save_released_layout)
from brain_go_brrr.normalization import NormalizationMismatch, NormStats
from brain_go_brrr.signal import CHANNELS

torch.set_num_threads(1)
SMALL = EEGPT_SIZES['cpu']
REFERENCE_LEGACY = {'mean': 9.385832980114282e-12, 'std': 2.124020075157719e-05}  # the incident's Sleep-EDF file (volts)


def released_shapes(c: EEGPTConfig) -> dict:
    "The `target_encoder.*` tensors of the released checkpoint, written out from the published architecture."
    D, H = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    shapes = {'summary_token': (1, c.embed_num, D), 'patch_embed.proj.weight': (D, 1, 1, c.patch_size),
              'patch_embed.proj.bias': (D,), 'chan_embed.weight': (62, D), 'norm.weight': (D,), 'norm.bias': (D,)}
    for i in range(c.depth):
        b = f'blocks.{i}.'
        shapes |= {b + 'norm1.weight': (D,), b + 'norm1.bias': (D,), b + 'norm2.weight': (D,), b + 'norm2.bias': (D,),
                   b + 'attn.qkv.weight': (3 * D, D), b + 'attn.qkv.bias': (3 * D,), b + 'attn.proj.weight': (D, D),
                   b + 'attn.proj.bias': (D,), b + 'mlp.fc1.weight': (H, D), b + 'mlp.fc1.bias': (H,),
                   b + 'mlp.fc2.weight': (D, H), b + 'mlp.fc2.bias': (D,)}
    return shapes


def reference_forward(model: EEGPTEncoder, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    "The published forward pass written out step by step (explicit softmax attention), to check ours against."
    c, sd = model.config, model.state_dict()
    B, C, T = x.shape
    patches = x.unfold(-1, c.patch_size, c.patch_size).permute(0, 2, 1, 3)            # (B, N, C, P)
    w = sd['patch_embed.proj.weight'].reshape(c.embed_dim, c.patch_size)
    z = patches @ w.T + sd['patch_embed.proj.bias'] + sd['chan_embed.weight'][ids]   # (B, N, C, D)
    N = z.shape[1]
    z = torch.cat([z.reshape(B * N, C, -1), sd['summary_token'].repeat(B * N, 1, 1)], 1)
    ln = lambda t, p: F.layer_norm(t, (c.embed_dim,), sd[p + '.weight'], sd[p + '.bias'], c.norm_eps)
    h = c.embed_dim // c.num_heads
    for i in range(c.depth):
        p = f'blocks.{i}.'
        qkv = ln(z, p + 'norm1') @ sd[p + 'attn.qkv.weight'].T + sd[p + 'attn.qkv.bias']
        q, k, v = (t.reshape(B * N, -1, c.num_heads, h).transpose(1, 2) for t in qkv.chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h), -1) @ v
        z = z + a.transpose(1, 2).reshape(B * N, -1, c.embed_dim) @ sd[p + 'attn.proj.weight'].T + sd[p + 'attn.proj.bias']
        m = F.gelu(ln(z, p + 'norm2') @ sd[p + 'mlp.fc1.weight'].T + sd[p + 'mlp.fc1.bias'])
        z = z + m @ sd[p + 'mlp.fc2.weight'].T + sd[p + 'mlp.fc2.bias']
    return ln(z[:, -c.embed_num:], 'norm').reshape(B, N, c.embed_num, c.embed_dim)


# -- architecture ---------------------------------------------------------------------------------

def test_published_encoder_has_the_released_tensors_and_shapes():
    model = EEGPTEncoder()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == released_shapes(EEGPTConfig())
    assert n_params(model) == 25_287_168
    c = EEGPTConfig()
    assert (c.patch_size, c.embed_dim, c.depth, c.num_heads, c.embed_num, c.sfreq, c.window_s) == (64, 512, 8, 8, 4, 256.0, 4.0)
    assert (c.window, c.n_patches, c.n_features) == (1024, 16, 2048)


def test_published_encoder_output_shape_on_4_s_of_the_19_canonical_channels():
    torch.manual_seed(0)
    with torch.no_grad(): z = EEGPTEncoder().eval()(torch.randn(2, 19, 1024), eegpt_channel_ids(CHANNELS))
    assert z.shape == (2, 16, 4, 512) and torch.isfinite(z).all()


@pytest.mark.parametrize('B,C,T', [(1, 19, 1024), (3, 5, 256), (2, 19, 2560)])
def test_forward_equals_the_published_computation_written_out(B, C, T):
    torch.manual_seed(1)
    model = EEGPTEncoder(SMALL).eval()
    ids = torch.randperm(58)[:C]
    x = torch.randn(B, C, T)
    with torch.no_grad(): ours, ref = model(x, ids), reference_forward(model, x, ids)
    assert ours.shape == (B, T // 64, 4, SMALL.embed_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_each_patch_is_encoded_from_its_own_samples_and_channel_order_does_not_matter():
    torch.manual_seed(2)
    model, ids = EEGPTEncoder(SMALL).eval(), eegpt_channel_ids(CHANNELS)
    x = torch.randn(2, 19, 1024)
    y = x.clone(); y[..., 64 * 5:64 * 6] = 0
    perm = torch.randperm(19)
    with torch.no_grad():
        zx, zy, zp = model(x, ids), model(y, ids), model(x[:, perm], ids[perm])
    changed = (zx - zy).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [5]
    torch.testing.assert_close(zx, zp, rtol=1e-4, atol=1e-5)  # channels are a set, named by their embedding


def test_initialisation_scales_residual_projections_by_depth():
    torch.manual_seed(3)
    m = EEGPTEncoder()
    s0, s7 = m.blocks[0].mlp.fc2.weight.std().item(), m.blocks[7].mlp.fc2.weight.std().item()
    assert s0 / s7 == pytest.approx(math.sqrt(8), rel=0.05) and m.blocks[3].attn.qkv.bias.abs().max() == 0


def test_input_checks():
    m, ids = EEGPTEncoder(SMALL), eegpt_channel_ids(CHANNELS)
    with pytest.raises(ValueError, match='shorter than one 64-sample patch'): m(torch.randn(1, 19, 63), ids)
    with pytest.raises(ValueError, match='channel ids'): m(torch.randn(1, 18, 1024), ids)
    with pytest.raises(ValueError, match='multiple of num_heads'): EEGPTEncoder(EEGPTConfig(embed_dim=60, num_heads=8))


def test_channel_vocabulary_and_the_tusz_mapping():
    assert len(EEGPT_VOCABULARY) == 62 and len(PRETRAINED_CHANNELS) == 58
    ids = eegpt_channel_ids(CHANNELS).tolist()
    names = [EEGPT_VOCABULARY[i] for i in ids]
    assert names == ['FP1', 'FP2', 'F3', 'F4', 'C3', 'C4', 'P3', 'P4', 'O1', 'O2', 'F7', 'F8', 'T7', 'T8', 'P7', 'P8', 'FZ', 'CZ', 'PZ']
    assert eegpt_channel_ids(['EEG T3-REF', 'EEG FP1-LE']).tolist() == [EEGPT_VOCABULARY.index('T7'), 0]
    for bad, match in ((['A1'], 'not in the EEGPT vocabulary'), (['PO5'], 'never trained'), (['T4', 'T8'], 'twice')):
        with pytest.raises(ValueError, match=match): eegpt_channel_ids(bad)


# -- checkpoint -----------------------------------------------------------------------------------

def pretraining_extras(config: EEGPTConfig) -> dict:
    "What else the released state_dict holds: the context encoder, predictor and reconstructor (a few of their tensors)."
    D = config.embed_dim
    return {'encoder.summary_token': torch.zeros(1, config.embed_num, D), 'encoder.chan_embed.weight': torch.zeros(62, D),
            'predictor.mask_token': torch.zeros(1, 1, config.embed_num, D), 'predictor.time_embed.freqs': torch.ones(4),
            'reconstructor.mask_token': torch.zeros(1, 1, D), 'reconstructor.reconstructor_proj.weight': torch.zeros(64, D)}


@pytest.fixture
def small_ckpt(tmp_path):
    torch.manual_seed(4)
    model = EEGPTEncoder(SMALL)
    return model, save_released_layout(model, tmp_path / 'eegpt_small.ckpt', pretraining_extras(SMALL))


def test_round_trip_in_the_released_layout_sets_aside_pretraining_parts_loudly(small_ckpt, caplog):
    model, path = small_ckpt
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {'state_dict'} and all(k.startswith(('target_encoder.', 'encoder.', 'predictor.', 'reconstructor.'))
                                               for k in raw['state_dict'])
    with caplog.at_level(logging.INFO, logger='brain_go_brrr'):
        back = load_eegpt(path, SMALL)
    assert 'set aside 6 pretraining tensors' in caplog.text and 'predictor.* (2)' in caplog.text and 'reconstructor.* (2)' in caplog.text
    assert not back.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x, ids = torch.randn(2, 19, 512), eegpt_channel_ids()
    with torch.no_grad(): assert torch.equal(model.eval()(x, ids), back(x, ids))


def test_full_size_round_trip(tmp_path):
    path = random_checkpoint(tmp_path / 'eegpt_mcae_58chs_4s_large4E.ckpt', EEGPTConfig(), seed=5)
    sd = torch.load(path, weights_only=True)['state_dict']
    assert {k[len('target_encoder.'):]: tuple(v.shape) for k, v in sd.items() if k.startswith('target_encoder.')} == released_shapes(EEGPTConfig())
    assert sum(k.startswith('encoder.') for k in sd) == 102
    model = load_eegpt(path)
    torch.manual_seed(5)
    assert torch.equal(model.summary_token, EEGPTEncoder().summary_token)  # same seed, same initialisation


def _write(tmp_path, obj, name='bad.ckpt') -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize('edit,match', [
    (lambda sd: {k: v for k, v in sd.items() if k != 'target_encoder.blocks.1.attn.qkv.bias'}, r'1 missing \(blocks.1.attn.qkv.bias\)'),
    (lambda sd: sd | {'target_encoder.pos_embed': torch.zeros(1, 3)}, r'1 unexpected \(pos_embed\)'),
    (lambda sd: sd | {'target_encoder.blocks.1.norm1.weight': torch.zeros(65)}, 'of another shape'),
    (lambda sd: sd | {'teacher.head.weight': torch.zeros(2)}, 'unexpected tensors outside the encoder'),
    (lambda sd: {k: v for k, v in sd.items() if not k.startswith('target_encoder.')}, 'no "target_encoder.\\*" tensors'),
])
def test_strict_about_encoder_keys(small_ckpt, tmp_path, edit, match):
    _, path = small_ckpt
    sd = torch.load(path, weights_only=True)['state_dict']
    bad = _write(tmp_path, {'state_dict': edit(dict(sd))})
    with pytest.raises(CheckpointError, match=match) as e: load_eegpt(bad, SMALL)
    assert str(bad) in str(e.value)


def test_another_size_is_named_with_what_the_checkpoint_holds(small_ckpt):
    _, path = small_ckpt
    with pytest.raises(CheckpointError, match='embed_dim=64, embed_num=4, depth=2, patch_size=64, n_vocab=62'):
        load_eegpt(path)  # the published config


def test_a_bare_state_dict_loads_too(small_ckpt, tmp_path):
    model, path = small_ckpt
    p = _write(tmp_path, torch.load(path, weights_only=True)['state_dict'], 'bare.pt')
    assert torch.equal(load_eegpt(p, SMALL).chan_embed.weight, model.chan_embed.weight)


class _Payload:
    "Unpickling this would write a file: a checkpoint that runs code."
    target = None
    def __reduce__(self): return (Path.write_text, (Path(_Payload.target), 'executed'))


def test_unsafe_pickles_are_refused_without_running_them(small_ckpt, tmp_path):
    _, path = small_ckpt
    _Payload.target = str(tmp_path / 'pwned')
    bad = _write(tmp_path, {'state_dict': torch.load(path, weights_only=True)['state_dict'], 'callbacks': _Payload()})
    with pytest.raises(CheckpointError, match='weights_only=True refuses') as e: load_eegpt(bad, SMALL)
    assert 'not loaded unsafely' in str(e.value) and not (tmp_path / 'pwned').exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='eegpt_mcae_58chs_4s_large4E.ckpt'): load_eegpt(tmp_path / 'nope.ckpt')
    (tmp_path / 'junk.ckpt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.ckpt'): load_eegpt(tmp_path / 'junk.ckpt')
    with pytest.raises(CheckpointError, match='expected a state dict'): load_eegpt(_write(tmp_path, [1, 2]))


# -- the wrapper ----------------------------------------------------------------------------------

def zscored_windows(n=16, T=512, seed=0) -> torch.Tensor:
    "What the incident's TUAB windows were: already z-scored (std ~0.998)."
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.998, (n, 19, T)).astype(np.float32))


def uv_windows(n=16, T=512, seed=1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.normal(0, 1, (n, 19, T)) * rng.uniform(10, 40, (1, 19, 1)) + rng.uniform(-5, 5, (1, 19, 1))).astype(np.float32))


def stats_of(x: torch.Tensor) -> NormStats:
    a = x.double().numpy()
    return NormStats(a.mean(axis=(0, 2)), a.std(axis=(0, 2)), 'uV', list(CHANNELS), a.shape[0] * a.shape[2], {'corpus': 'tuab'})


@pytest.fixture
def legacy_file(tmp_path):
    p = tmp_path / 'sleep_edf_norm_stats.json'
    p.write_text(json.dumps(REFERENCE_LEGACY))
    return p


def test_the_reference_bad_statistics_are_refused_on_the_first_batch(small_ckpt, legacy_file):
    _, path = small_ckpt
    with pytest.warns(normalization.NoProvenanceWarning):
        wrapper = create_normalized_eegpt(path, normalize=True, stats=legacy_file, config=SMALL)
    calls = []
    wrapper.encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(NormalizationMismatch) as e: wrapper(zscored_windows())
    r = e.value.report
    assert r.verdict == 'mismatch' and 46_000 < r.amplification < 48_000, r.amplification
    assert r.fp16_overflow_risk and not r.unit_mismatch and r.stats_path == str(legacy_file)
    assert '47,' in str(e.value) and 'already z-scored' in str(e.value) and all(x in str(e.value) for x in r.reasons)
    with pytest.raises(NormalizationMismatch): wrapper(uv_windows())  # refused once, refused always (until audited again)
    assert not calls


def test_the_audit_runs_on_demand_and_an_override_is_recorded(small_ckpt, legacy_file):
    _, path = small_ckpt
    with pytest.warns(normalization.NoProvenanceWarning):
        wrapper = create_normalized_eegpt(path, stats=legacy_file, config=SMALL, precision='fp16')
    with pytest.raises(NormalizationMismatch, match='float16'): wrapper.audit(zscored_windows())
    with pytest.warns(normalization.NoProvenanceWarning):
        forced = create_normalized_eegpt(path, stats=legacy_file, config=SMALL, override=True)
    with torch.no_grad(): forced(zscored_windows(2))
    assert forced.report.overridden and forced.report.verdict == 'mismatch'


def test_a_refusal_sticks_until_an_audit_on_demand_passes(small_ckpt):
    _, path = small_ckpt
    x = uv_windows()
    wrapper = create_normalized_eegpt(path, stats=stats_of(x), config=SMALL)
    with pytest.raises(NormalizationMismatch): wrapper(zscored_windows(4))   # z-scored twice: refused
    with pytest.raises(NormalizationMismatch): wrapper(x[:4])                # good data does not lift the refusal by itself
    assert wrapper.audit(x[4:]).verdict == 'ok'                              # an explicit audit that passes does
    with torch.no_grad(): assert wrapper(x[:4]).shape == (4, 8, 4, 64)


def test_matching_statistics_pass_and_normalise(small_ckpt):
    model, path = small_ckpt
    x = uv_windows()
    stats = stats_of(x)
    wrapper = create_normalized_eegpt(path, stats=stats, config=SMALL, provenance={'corpus': 'tuab', 'unit': 'uV'})
    with torch.no_grad(): z = wrapper(x[:4])
    assert wrapper.report.verdict == 'ok' and 0.8 < wrapper.report.amplification < 1.2
    xn = stats.apply(x[:4])
    with torch.no_grad(): torch.testing.assert_close(z, model.eval()(xn - xn.mean(1, keepdim=True), eegpt_channel_ids()))
    other = create_normalized_eegpt(path, stats=stats, config=SMALL, provenance={'corpus': 'sleep-edf'})
    with pytest.raises(NormalizationMismatch, match='corpus'): other(x[:4])


def test_the_wrapper_never_reads_a_statistics_file_it_was_not_given(small_ckpt, legacy_file, tmp_path, monkeypatch):
    model, path = small_ckpt
    for folder in (tmp_path, path.parent):  # statistics files where a wrapper might go looking
        for name in ('norm_stats.json', 'stats.json', 'normalization.json', 'eegpt_norm_stats.json'):
            (folder / name).write_text(json.dumps(REFERENCE_LEGACY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('EEGPT_NORM_STATS', str(legacy_file))
    def no_reading(*a, **k): raise AssertionError(f'a statistics file was read: {a}')
    monkeypatch.setattr(NormStats, 'load', classmethod(no_reading))
    with pytest.raises(ValueError, match='never looks for a statistics file'): create_normalized_eegpt(path, normalize=True, config=SMALL)
    with pytest.raises(ValueError, match='normalize=False'): create_normalized_eegpt(path, normalize=False, stats=stats_of(uv_windows()), config=SMALL)
    raw = create_normalized_eegpt(path, normalize=False, config=SMALL)
    x = zscored_windows(3)
    with torch.no_grad(): torch.testing.assert_close(raw(x), model.eval()(x - x.mean(1, keepdim=True), eegpt_channel_ids()))
    assert raw.stats is None and raw.report is None
    with pytest.raises(ValueError, match='no statistics to audit'): raw.audit(x)
    given = create_normalized_eegpt(path, stats=stats_of(uv_windows()), config=SMALL)  # an object: no file either
    with torch.no_grad(): given(uv_windows(2))


def test_the_backbone_stays_frozen_and_in_eval_mode(small_ckpt):
    _, path = small_ckpt
    w = create_normalized_eegpt(path, normalize=False, config=SMALL)
    w.train()
    assert not w.encoder.training and not any(p.requires_grad for p in w.parameters())
    with pytest.raises(ValueError, match='19 channels'): w(torch.randn(1, 18, 256))


def test_linear_probe_shapes_and_max_norm():
    probe = LinearProbe.for_encoder(EEGPTConfig())
    assert probe(torch.randn(3, 16, 4, 512)).shape == (3,)
    assert (probe.linear_probe1.in_features, probe.linear_probe2.in_features) == (2048, 256)
    assert LinearProbe.for_encoder(SMALL, 10.0, n_outputs=2)(torch.randn(2, 40, 4, 64)).shape == (2, 2)
    with torch.no_grad(): probe.linear_probe1.weight.mul_(1e3)
    probe.constrain()
    assert probe.linear_probe1.weight.norm(dim=1).max() <= 1.0 + 1e-6
