"""EEGPT as the paper ran it: the released Lightning checkpoint read as it is (payloads still refused),
the remainder after the last patch dropped, the official TUAB fine-tune's 23 inputs, layers, optimiser and schedule."""
import logging, math, os, pickle
from pathlib import Path
import mne
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brain_go_brrr.eegpt import (EEGPT_SIZES, ENCODER_PREFIX, FINETUNE_CHANNELS, OFFICIAL_TUAB_INPUTS, CheckpointError,
                                 EEGPTConfig, EEGPTEncoder, EEGPTFinetune, FinetuneRecipe, eegpt_channel_ids,
                                 finetune_optimizer, layer_decay_groups, load_eegpt, warmup_cosine, EEGPT_VOCABULARY)
from brain_go_brrr.signal import channel_names
from brain_go_brrr.tuab import TuabWindows, build_tuab_cache

torch.set_num_threads(1)
SMALL = EEGPT_SIZES['cpu']


def lightning_checkpoint(encoder: EEGPTEncoder, path: Path, **extra) -> Path:
    "A checkpoint laid out as Lightning 2.1 wrote the released one under torch 2.0: training state and all, protocol 2."
    opt = torch.optim.AdamW(encoder.parameters(), lr=6e-5, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=20)
    encoder(torch.randn(2, 3, 128), torch.arange(3)).sum().backward()
    opt.step()
    sched.step()
    sched_state = {k: v for k, v in sched.state_dict().items() if k != '_anneal_func_type'}
    sched_state['anneal_func'] = torch.optim.lr_scheduler.OneCycleLR._annealing_cos  # torch 2.0 kept the function
    sd = {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
    sd |= {'encoder.' + k: v.clone() for k, v in encoder.state_dict().items()}
    sd |= {'predictor.mask_token': torch.zeros(1, 1, 4, encoder.config.embed_dim)}
    ckpt = {'epoch': 199, 'global_step': 4000, 'pytorch-lightning_version': '2.1.0', 'state_dict': sd,
            'loops': {'fit_loop': {'state_dict': {}, 'epoch_loop.state_dict': {'_batches_that_stepped': 4000},
                                   'epoch_progress': {'total': {'ready': 200, 'completed': 199}}}},
            'callbacks': {"LearningRateMonitor{'logging_interval': 'epoch'}": {},
                          "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}": {
                              'monitor': None, 'best_model_score': None, 'dirpath': '/logs/checkpoints',
                              'best_k_models': {}, 'kth_value': torch.tensor(float('inf')), 'last_model_path': ''}},
            'optimizer_states': [opt.state_dict()], 'lr_schedulers': [sched_state], 'hparams': {}} | extra
    torch.save(ckpt, path, pickle_protocol=2)
    return path


@pytest.fixture
def released_like(tmp_path):
    torch.manual_seed(0)
    enc = EEGPTEncoder(SMALL)
    return enc, lightning_checkpoint(enc, tmp_path / 'eegpt_mcae_58chs_4s_large4E.ckpt')


def test_the_file_holds_what_weights_only_refuses(released_like):
    _, path = released_like
    with pytest.raises(pickle.UnpicklingError, match='getattr'): torch.load(path, weights_only=True)
    raw = torch.load(path, weights_only=False)  # our own test file: safe to open fully here
    assert raw['lr_schedulers'][0]['anneal_func'] is torch.optim.lr_scheduler.OneCycleLR._annealing_cos
    assert {'exp_avg', 'exp_avg_sq', 'step'} <= set(raw['optimizer_states'][0]['state'][0])


def test_the_released_lightning_checkpoint_loads_as_it_is(released_like):
    enc, path = released_like
    back = load_eegpt(path, SMALL)
    for (k, a), (_, b) in zip(enc.state_dict().items(), back.state_dict().items()): assert torch.equal(a, b), k


def test_the_stand_ins_are_scoped_to_the_loader(released_like):
    load_eegpt(released_like[1], SMALL)
    with pytest.raises(pickle.UnpicklingError, match='getattr'): torch.load(released_like[1], weights_only=True)


class WritesAFile:
    "Unpickling this writes a file."
    def __init__(self, target): self.target = target
    def __reduce__(self): return (Path.write_text, (Path(self.target), 'the payload ran'))


class RunsAShell:
    "Unpickling this runs a shell command that creates a file."
    def __init__(self, target): self.target = target
    def __reduce__(self): return (os.system, (f'touch {self.target}',))


class GetattrOnSomethingElse:
    "Unpickling this would fetch a tensor method through getattr, the global the loader stands in for."
    def __reduce__(self): return (getattr, (torch.Tensor, 'add_'))


@pytest.mark.parametrize('payload', [WritesAFile, RunsAShell])
@pytest.mark.parametrize('where', ['callbacks', 'hparams', 'lr_schedulers'])
def test_a_malicious_payload_is_refused_unrun(tmp_path, payload, where):
    marker = tmp_path / 'marker'
    torch.manual_seed(0)
    path = lightning_checkpoint(EEGPTEncoder(SMALL), tmp_path / 'bad.ckpt', **{where: payload(marker)})
    with pytest.raises(CheckpointError, match='weights_only=True refuses') as e: load_eegpt(path, SMALL)
    assert str(path) in str(e.value) and 'not loaded unsafely' in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize('obj,match', [
    (GetattrOnSomethingElse(), 'only getattr allowed'),
    (torch.nn.Linear, 'torch.nn.modules.linear.Linear'),
])
def test_no_other_global_gets_through(tmp_path, obj, match):
    torch.manual_seed(0)
    path = lightning_checkpoint(EEGPTEncoder(SMALL), tmp_path / 'bad.ckpt', hparams={'x': obj})
    with pytest.raises(CheckpointError, match=match): load_eegpt(path, SMALL)


def test_getattr_stand_in_accepts_only_the_annealing_functions():
    # the stand-in sees the class as its name; any attribute but the two annealing functions is refused
    from brain_go_brrr.eegpt import _annealing_name
    assert _annealing_name('torch.optim.lr_scheduler.OneCycleLR', '_annealing_linear').endswith('_annealing_linear')
    for args in (('torch.optim.lr_scheduler.OneCycleLR', 'step'), (os, 'system'), ('os', 'system')):
        with pytest.raises(pickle.UnpicklingError, match='only getattr allowed'): _annealing_name(*args)


# -- a length that is not a whole number of patches ------------------------------------------------

def test_the_remainder_after_the_last_patch_is_dropped_and_said(caplog):
    torch.manual_seed(1)
    m, ids = EEGPTEncoder(SMALL).eval(), eegpt_channel_ids()
    x = torch.randn(2, 19, 1000)
    with caplog.at_level(logging.WARNING, logger='brain_go_brrr'):
        with torch.no_grad(): z, ref = m(x, ids), m(x[..., :960], ids)
    assert z.shape == (2, 15, 4, 64) and torch.equal(z, ref)
    assert 'last 40 samples are dropped (15 patches)' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='brain_go_brrr'):
        with torch.no_grad(): m(torch.randn(1, 19, 1000), ids)
    assert 'dropped' not in caplog.text  # once per input length
    with pytest.raises(ValueError, match='shorter than one 64-sample patch'): m(torch.randn(1, 19, 50), ids)


# -- the official fine-tune -------------------------------------------------------------------------

def test_official_recipe_values():
    r = FinetuneRecipe()
    assert (r.sfreq, r.l_freq, r.h_freq, r.notch, r.window_s, r.input_scale) == (200.0, 0.1, 75.0, 50.0, 10.0, 0.01)
    assert (r.lr, r.weight_decay, r.layer_decay, r.epochs, r.warmup_epochs, r.min_lr) == (5e-4, 0.05, 0.65, 50, 5, 1e-6)
    assert r.preprocessing == dict(montage='tuab23', sfreq=200.0, l_freq=0.1, h_freq=75.0, notch=50.0)
    assert r.window == 2000
    assert len(OFFICIAL_TUAB_INPUTS) == 23 and len(FINETUNE_CHANNELS) == 20 and 'FPZ' in FINETUNE_CHANNELS
    assert OFFICIAL_TUAB_INPUTS == ('FP1', 'FP2', 'F3', 'F4', 'C3', 'C4', 'P3', 'P4', 'O1', 'O2', 'F7', 'F8', 'T3',
                                    'T4', 'T5', 'T6', 'A1', 'A2', 'FZ', 'CZ', 'PZ', 'T1', 'T2')  # the authors' list
    assert channel_names(r.montage) == list(OFFICIAL_TUAB_INPUTS)  # what the recipe's cache reads


def test_official_classifier_shapes_match_the_authors():
    m = EEGPTFinetune(EEGPTEncoder(), len(OFFICIAL_TUAB_INPUTS))
    assert m.n_patches == 31 and m.head.in_features == 63_488 and m.head.out_features == 1
    assert tuple(m.mix[0].weight.shape) == (20, 23, 1) and tuple(m.mix[3].weight.shape) == (20, 1, 15)
    assert m.mix[3].groups == 20 and m.mix[6].p == 0.25 and m.drop.p == 0.5
    assert [EEGPT_VOCABULARY[i] for i in m.chan_ids] == list(FINETUNE_CHANNELS)


def test_input_is_scaled_from_microvolts_by_one_hundredth():
    torch.manual_seed(2)
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, FinetuneRecipe(window_s=1.0)).eval()
    x = torch.randn(2, 19, 200) * 50
    seen = []
    m.mix.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad(): m(x)
    torch.testing.assert_close(seen[0], x / 100)


def test_max_norm_constraints():
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, FinetuneRecipe(window_s=1.0))
    with torch.no_grad():
        m.head.weight.mul_(1e3)
        m.mix[0].weight.mul_(1e3)
    m.constrain()
    assert m.head.weight.norm(dim=1).max() <= 1 + 1e-5
    assert m.mix[0].weight.flatten(1).norm(dim=1).max() <= 1 + 1e-5


def test_layer_decay_and_no_decay_groups():
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, FinetuneRecipe(window_s=1.0))  # depth 2
    groups = layer_decay_groups(m, 0.05, 0.5)
    by_param = {id(p): g for g in groups for p in g['params']}
    named = dict(m.named_parameters())
    scale = lambda n: by_param[id(named[n])]['lr_scale']
    decay = lambda n: by_param[id(named[n])]['weight_decay']
    assert scale('encoder.patch_embed.proj.weight') == 0.5 ** 3 and scale('encoder.blocks.0.mlp.fc1.weight') == 0.5 ** 2
    assert scale('encoder.blocks.1.mlp.fc1.weight') == 0.5 and scale('encoder.norm.weight') == 1.0
    assert scale('mix.0.weight') == 1.0 and scale('head.weight') == 1.0
    assert decay('encoder.summary_token') == 0 and decay('head.bias') == 0 and decay('encoder.norm.weight') == 0
    assert decay('head.weight') == 0.05 and decay('encoder.chan_embed.weight') == 0.05
    assert sum(len(g['params']) for g in groups) == len(named)
    assert all(g['lr_scale'] == 1.0 for g in layer_decay_groups(m, 0.05, 1.0))  # what the authors' code applied


def test_warmup_cosine_is_the_official_schedule():
    lrs = warmup_cosine(5e-4, 1e-6, 500, 50)
    assert len(lrs) == 500 and lrs[0] == 0 and math.isclose(lrs[49], 5e-4) and math.isclose(lrs[50], 5e-4)
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:])) and math.isclose(lrs[-1], 1e-6, rel_tol=0.1)
    official = [1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * i / 450)) for i in range(450)]
    assert all(math.isclose(a, b) for a, b in zip(lrs[50:], official))


def test_finetune_optimizer_follows_the_schedule_in_every_group():
    torch.manual_seed(3)
    r = FinetuneRecipe(window_s=1.0, epochs=2, warmup_epochs=1, layer_decay=0.5)
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, r)
    opt, sched = finetune_optimizer(m, steps_per_epoch=4)
    lrs = warmup_cosine(r.lr, r.min_lr, 8, 4)
    x, y = torch.randn(4, 19, 200) * 30, torch.tensor([0., 1., 0., 1.])
    before = m.encoder.blocks[0].attn.qkv.weight.detach().clone()
    for step in range(8):
        for g in opt.param_groups: assert math.isclose(g['lr'], lrs[step] * g['lr_scale'], abs_tol=1e-12)
        loss = F.binary_cross_entropy_with_logits(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        m.constrain()
    assert not torch.equal(before, m.encoder.blocks[0].attn.qkv.weight)


def test_a_23_channel_cache_feeds_the_official_classifier(tmp_path):
    "The recipe's preprocessing caches the 23 inputs in the authors' order; its windows go through the 23 -> 20 mix."
    d = tmp_path / 'edf' / 'eval' / 'normal' / '01_tcp_ar'
    d.mkdir(parents=True)
    labels = [f'EEG {c}-LE' for c in reversed(OFFICIAL_TUAB_INPUTS)] + ['EEG EKG1-LE']  # any order, any reference
    data = np.random.default_rng(0).normal(0, 20e-6, (len(labels), 250 * 12))
    mne.export.export_raw(d / 'aaaaaaaa_s001_t000.edf', mne.io.RawArray(data, mne.create_info(labels, 250.0, 'eeg'),
                          verbose='error'), fmt='edf', verbose='error')
    recipe = FinetuneRecipe()
    cache = build_tuab_cache(tmp_path, tmp_path / 'cache', 'eval', progress=False, **recipe.preprocessing)
    assert not cache.failures and cache.config['channels'] == list(OFFICIAL_TUAB_INPUTS)
    x, y = TuabWindows(cache, recipe.window_s)[0]
    assert x.shape == (23, recipe.window)
    torch.manual_seed(0)
    m = EEGPTFinetune(EEGPTEncoder(SMALL), len(cache.config['channels']), recipe).eval()
    assert tuple(m.mix[0].weight.shape) == (20, 23, 1)
    with torch.no_grad(): assert m(x[None]).shape == (1,)
