"""EEGPT as the paper ran it: the released Lightning checkpoint read as it is (payloads still refused),
the remainder after the last patch dropped, the official TUAB fine-tune's 23 inputs, layers, optimiser and schedule."""
import collections, copy, copyreg, logging, math, os, pickle, pickletools, types, zipfile
from pathlib import Path
import mne
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from brain_go_brrr.eegpt import (ANNEALING_FUNCTIONS, EEGPT_SIZES, EEGPT_VOCABULARY, FINETUNE_CHANNELS,
                                 FINETUNE_PROTOCOLS, LIGHTNING_STAND_INS, OFFICIAL_TUAB_INPUTS, ONE_CYCLE_LR,
                                 WEIGHTS_ONLY_READER, CheckpointError, EEGPTConfig, EEGPTEncoder, EEGPTFinetune,
                                 FinetuneRecipe, InertRecord, accuracy, eegpt_channel_ids, finetune_optimizer,
                                 layer_decay_groups, load_eegpt, only_safe_globals, save_lightning_layout, train_step,
                                 warmup_cosine)
from brain_go_brrr.signal import channel_names
from brain_go_brrr.tuab import TuabWindows, build_tuab_cache

torch.set_num_threads(1)
SMALL = EEGPT_SIZES['cpu']


@pytest.fixture
def released_like(tmp_path):
    torch.manual_seed(0)
    enc = EEGPTEncoder(SMALL)
    return enc, save_lightning_layout(enc, tmp_path / 'eegpt_mcae_58chs_4s_large4E.ckpt')


def test_the_file_holds_the_scheduler_and_its_optimizer_as_torch_before_2_2_pickled_them(released_like):
    _, path = released_like
    with pytest.raises(pickle.UnpicklingError, match='getattr'): torch.load(path, weights_only=True)
    with zipfile.ZipFile(path) as z:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(z.read(next(n for n in z.namelist()
                                                                              if n.endswith('data.pkl'))))
               if 'PUT' not in op.name]  # memo writes left out
    at = ops.index(('GLOBAL', '__builtin__ getattr'))  # anneal_func: getattr(<a OneCycleLR object>, ...)
    assert ops[at + 1:at + 4] == [('GLOBAL', 'torch.optim.lr_scheduler OneCycleLR'), ('EMPTY_TUPLE', None),
                                  ('NEWOBJ', None)]
    assert [arg for name, arg in ops if name == 'GLOBAL' and 'optim' in arg] == [
        'torch.optim.lr_scheduler OneCycleLR', 'torch.optim.adamw AdamW']  # its optimizer rebuilt inside it
    assert [name for name, _ in ops].count('POP') == 1  # the recursive reduction
    raw = torch.load(path, weights_only=False)  # our own test file: safe to open fully here
    assert raw['lr_schedulers'][0]['anneal_func'] is OneCycleLR._annealing_cos
    assert {'exp_avg', 'exp_avg_sq', 'step'} <= set(raw['optimizer_states'][0]['state'][0])


def test_the_released_lightning_checkpoint_loads_as_it_is_with_nothing_of_the_training_classes_run(released_like,
                                                                                                   monkeypatch):
    enc, path = released_like
    def never(*a, **k): raise AssertionError('a training class was constructed or restored')
    for cls in (OneCycleLR, torch.optim.AdamW, torch.optim.Optimizer):
        for name in ('__init__', '__setstate__'): monkeypatch.setattr(cls, name, never, raising=False)
    for name in ANNEALING_FUNCTIONS: monkeypatch.setattr(OneCycleLR, name, never)
    stand_ins = {name: obj for obj, name in LIGHTNING_STAND_INS}  # NEWOBJ gets records, never the classes
    assert all(issubclass(stand_ins[n], InertRecord) for n in (ONE_CYCLE_LR, 'torch.optim.adamw.AdamW'))
    back = load_eegpt(path, SMALL)
    for (k, a), (_, b) in zip(enc.state_dict().items(), back.state_dict().items()): assert torch.equal(a, b), k


@pytest.mark.parametrize('order', ['registered before', 'registered after'])
def test_a_library_s_safe_globals_do_not_change_what_the_file_reads_as(released_like, order):
    """torch_geometric registers the real `collections.defaultdict` as a safe global on import; with it beside the
    stand-in, torch took whichever a set's order gave (nbdev_test failed when torch_geometric came first in a worker).
    Both orders of registration load, and the user allowlist is restored after."""
    import collections
    import torch_geometric  # noqa: F401
    enc, path = released_like
    before = torch.serialization.get_safe_globals()
    try:
        torch.serialization.clear_safe_globals()
        real = [collections.defaultdict, *before]
        torch.serialization.add_safe_globals(real if order == 'registered before' else real[::-1])
        back = load_eegpt(path, SMALL)
        assert collections.defaultdict in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    for (k, a), (_, b) in zip(enc.state_dict().items(), back.state_dict().items()): assert torch.equal(a, b), k


def test_the_training_objects_are_records_and_anneal_func_its_name(released_like):
    _, path = released_like
    with only_safe_globals(LIGHTNING_STAND_INS):
        raw = torch.load(path, map_location='cpu', weights_only=False, pickle_module=WEIGHTS_ONLY_READER)
    assert raw['lr_schedulers'][0]['anneal_func'] == 'torch.optim.lr_scheduler.OneCycleLR._annealing_cos'
    assert raw['lr_schedulers'][0]['total_steps'] == 10 and raw['epoch'] == 199
    assert issubclass(WEIGHTS_ONLY_READER.Unpickler, torch._weights_only_unpickler.Unpickler)


def test_torch_2_2_s_form_on_the_class_loads_too(tmp_path):
    "torch 2.2 and 2.3 pickled anneal_func, a staticmethod then, as getattr(OneCycleLR, '_annealing_cos')."
    torch.manual_seed(0)
    enc = EEGPTEncoder(SMALL)
    path = save_lightning_layout(enc, tmp_path / 'x.ckpt', lr_schedulers=[{'anneal_func': OneCycleLR._annealing_linear,
                                                                            'total_steps': 10}])
    assert torch.equal(load_eegpt(path, SMALL).summary_token, enc.summary_token)


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


@pytest.mark.parametrize('payload', [WritesAFile, RunsAShell])
@pytest.mark.parametrize('where', ['callbacks', 'hparams', 'lr_schedulers'])
def test_a_malicious_payload_is_refused_unrun(tmp_path, payload, where):
    marker = tmp_path / 'marker'
    torch.manual_seed(0)
    path = save_lightning_layout(EEGPTEncoder(SMALL), tmp_path / 'bad.ckpt', **{where: payload(marker)})
    with pytest.raises(CheckpointError, match='weights_only=True refuses') as e: load_eegpt(path, SMALL)
    assert str(path) in str(e.value) and 'not loaded unsafely' in str(e.value)
    assert not marker.exists()


def a_scheduler():
    "A real OneCycleLR over a real AdamW, for payloads that reach into it."
    return OneCycleLR(torch.optim.AdamW(torch.nn.Linear(2, 1).parameters()), max_lr=1e-3, total_steps=4)


class CallsAMethodOfTheScheduler:
    "Unpickling this calls `step` of the rebuilt scheduler: getattr(<OneCycleLR>, 'step')()."
    def __reduce__(self): return (a_scheduler().step, ())


class CallsTheAnnealingFunction:
    "Unpickling this calls what getattr(<OneCycleLR>, '_annealing_cos') returned."
    def __reduce__(self):
        s = a_scheduler()
        return (types.MethodType(OneCycleLR._annealing_cos, s), (1.0, 0.0, 0.5))


def rebuilt_with_state(state) -> OneCycleLR:
    "A real scheduler that pickles as NEWOBJ then BUILD with `state`."
    s = a_scheduler()
    s.__reduce_ex__ = lambda protocol: (copyreg.__newobj__, (OneCycleLR,), state)
    return s


class CallsTheRecordClass:
    "Unpickling this calls OneCycleLR(...) instead of rebuilding it from its state."
    def __reduce__(self): return (OneCycleLR, ())


class GetattrOnSomethingElse:
    "Unpickling this would fetch a tensor method through getattr, the global the loader stands in for."
    def __reduce__(self): return (getattr, (torch.Tensor, 'add_'))


@pytest.mark.parametrize('obj,match', [
    (GetattrOnSomethingElse(), 'only getattr allowed'),
    (CallsAMethodOfTheScheduler(), r"getattr\(InertRecord\(torch.optim.lr_scheduler.OneCycleLR\), 'step'\)"),
    (CallsTheAnnealingFunction(), 'call reduce for unrecognized function'),
    (rebuilt_with_state((None, {'__setstate__': getattr})), 'BUILD with a tuple'),  # slot state: setattr
    (rebuilt_with_state({'anneal_func': os.system}), 'posix.system'),
    (CallsTheRecordClass(), 'OneCycleLR called'),
    (collections.defaultdict(collections.OrderedDict), 'only defaultdict allowed'),
    (torch.nn.Linear, 'torch.nn.modules.linear.Linear'),
])
def test_no_other_global_or_call_gets_through(tmp_path, obj, match):
    torch.manual_seed(0)
    path = save_lightning_layout(EEGPTEncoder(SMALL), tmp_path / 'bad.ckpt', hparams={'x': obj})
    with pytest.raises(CheckpointError, match=match): load_eegpt(path, SMALL)


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
    "Each value as the authors' run had it (downstream_tueg/ of BINE022/EEGPT@a0e0a8f; 11_eegpt cites file and line)."
    r = FinetuneRecipe()
    assert (r.sfreq, r.l_freq, r.h_freq, r.notch, r.filters, r.window_s, r.input_scale) == (200.0, 0.1, 75.0, 50.0,
                                                                                           'mne_fir', 10.0, 0.01)
    assert (r.lr, r.weight_decay, r.epochs, r.warmup_epochs, r.min_lr) == (5e-4, 0.05, 50, 5, 1e-6)
    assert r.layer_decay == 1.0  # the flag said 0.65; the authors' assigner matched no parameter name
    assert (r.batch_size, r.devices, r.step_windows) == (100, 2, 200) and r.amp
    assert (r.val_fraction, r.select_on) == (0.2, 'accuracy')
    assert r.preprocessing == dict(montage='tuab23', sfreq=200.0, l_freq=0.1, h_freq=75.0, notch=50.0,
                                   filters='mne_fir')
    assert r.window == 2000
    assert len(OFFICIAL_TUAB_INPUTS) == 23 and len(FINETUNE_CHANNELS) == 20 and 'FPZ' in FINETUNE_CHANNELS
    assert OFFICIAL_TUAB_INPUTS == ('FP1', 'FP2', 'F3', 'F4', 'C3', 'C4', 'P3', 'P4', 'O1', 'O2', 'F7', 'F8', 'T3',
                                    'T4', 'T5', 'T6', 'A1', 'A2', 'FZ', 'CZ', 'PZ', 'T1', 'T2')  # the authors' list
    assert channel_names(r.montage) == list(OFFICIAL_TUAB_INPUTS)  # what the recipe's cache reads
    assert FINETUNE_PROTOCOLS['official_finetune'] == r


def test_the_project_variant_differs_from_the_official_run_in_the_named_choices_only():
    official, project = FINETUNE_PROTOCOLS['official_finetune'], FINETUNE_PROTOCOLS['project_finetune']
    changed = {k for k in official.__dataclass_fields__ if getattr(official, k) != getattr(project, k)}
    assert changed == {'layer_decay', 'devices', 'select_on', 'val_fraction', 'amp', 'filters'}
    assert (project.layer_decay, project.step_windows, project.select_on, project.val_fraction, project.amp,
            project.filters) == (0.65, 100, 'auroc', 0.25, False, 'butterworth')


def test_two_devices_are_two_micro_batches_whose_gradients_are_averaged():
    "What DistributedDataParallel computes on 2 GPUs: each replica's mean loss on its half (BatchNorm per half)."
    torch.manual_seed(5)
    recipe = FinetuneRecipe(window_s=1.0, mix_dropout=0.0, dropout=0.0)
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, recipe).train()
    x, y = torch.randn(8, 19, 200) * 30, torch.tensor([0., 1., 1., 0., 1., 0., 0., 1.])
    replicas = [copy.deepcopy(m) for _ in range(2)]
    for r, xs, ys in zip(replicas, x.chunk(2), y.chunk(2)): F.binary_cross_entropy_with_logits(r(xs), ys).backward()
    ddp = {n: (a.grad + b.grad) / 2 for (n, a), (_, b) in zip(*(r.named_parameters() for r in replicas))}
    loss, logits = train_step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y, m.constrain, devices=2)
    for n, p in m.named_parameters(): torch.testing.assert_close(p.grad, ddp[n], rtol=1e-4, atol=1e-6)
    one = copy.deepcopy(m)
    train_step(one, torch.optim.SGD(one.parameters(), lr=0.0), x, y, one.constrain, devices=1)
    assert not torch.allclose(one.mix[0].weight.grad, m.mix[0].weight.grad)  # BatchNorm over all 8 is another step
    assert logits.shape == (8,)
    with pytest.raises(ValueError, match='drop_last'): train_step(m, torch.optim.SGD(m.parameters(), lr=0.0), x[:7],
                                                                  y[:7], m.constrain, devices=2)


def test_amp_steps_in_fp16_with_loss_scaling_to_the_fp32_gradients():
    "The official AMP step (autocast fp16, GradScaler): run on the CPU's fp16 autocast here; CUDA's is the same path."
    torch.manual_seed(5)
    m = EEGPTFinetune(EEGPTEncoder(SMALL), 19, FinetuneRecipe(window_s=1.0, mix_dropout=0.0, dropout=0.0)).train()
    amp = copy.deepcopy(m)
    x, y = torch.randn(8, 19, 200) * 30, torch.tensor([0., 1., 1., 0., 1., 0., 0., 1.])
    seen = []
    amp.head.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    fp32, _ = train_step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y, m.constrain, devices=2)
    scaler = torch.amp.GradScaler('cpu')
    fp16, _ = train_step(amp, torch.optim.SGD(amp.parameters(), lr=0.0), x, y, amp.constrain, devices=2, scaler=scaler)
    assert seen == [torch.float16] * 2 and scaler.get_scale() > 1  # autocast ran, the loss was scaled
    assert fp16 == pytest.approx(fp32, rel=1e-3)
    scale = m.head.weight.grad.abs().max()
    torch.testing.assert_close(amp.head.weight.grad, m.head.weight.grad, rtol=0, atol=5e-3 * scale)


def test_accuracy_is_the_official_selection_figure():
    assert accuracy([0, 1, 1, 0], [0.5, 0.5, 0.49, 0.1]) == 0.5  # p >= 0.5 is abnormal, as pyhealth thresholds
    assert math.isnan(accuracy([], []))


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
