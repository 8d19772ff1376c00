"Training: pre-flight refusals, guards under injected faults, exact resume, and a 2-process DDP run on CPU."
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
import yaml

import brain_go_brrr.train as T
from brain_go_brrr.datasets import WindowDataset
from brain_go_brrr.detect import EVAL_METRICS, load_detector
from brain_go_brrr.model import Detector
from brain_go_brrr.normalization import NormalizationMismatch
from brain_go_brrr.params import load_params
from conftest import TINY_MODEL, building, tiny
from brain_go_brrr.synth import synth_tusz

def test_a_tiny_run_writes_its_outputs(corpus, tmp_path):
    m = T.train(tiny(corpus, tmp_path))
    run = tmp_path / 'train'
    for f in ('last.pt', 'best.pt', 'metrics.json', 'env.json', 'params.yaml'):
        assert (run / f).exists(), f
    saved = json.loads((run / 'metrics.json').read_text())
    for key in ('dev_auroc', 'dev_sens_at_fa', 'epochs', 'steps', 'nonfinite_steps', 'sanitized_grad_entries',
                'mixed_precision', 'precision_dtype', 'normalization_audit', 'seconds', 'windows_per_second',
                'edge_clamped_weights'):
        assert key in saved, key
    assert saved['steps'] == 2 * 4 and saved['epochs'] == 2 and saved['normalization_audit'] == 'ok'
    assert set(saved['dev_sens_at_fa']) == {'10', '5', '1'}
    det = load_detector(run / 'best.pt')
    assert det.params.model.tcn_channels == 16 and det.stats.n_channels == 19
    assert set(det.operating_points) == {'10', '5', '1'}  # stored with the checkpoint, for detect


def test_the_monitored_metric_is_one_the_evaluation_writes(corpus, tmp_path):
    "The reference watched `sensitivity_at_10fa` while writing `sensitivity_at_10.0fa`: it always read 0."
    m = T.train(tiny(corpus, tmp_path, epochs=1, monitor='dev_sens_at_fa.10'))
    evaluation = [h for h in m['history'] if 'dev_auroc' in h][-1]
    assert set(EVAL_METRICS) <= set(evaluation)
    assert T.monitored(evaluation, 'dev_sens_at_fa.10') == evaluation['dev_sens_at_fa']['10']
    with pytest.raises(KeyError, match='sensitivity_at_10fa'):
        T.monitored(evaluation, 'sensitivity_at_10fa')


# --- pre-flight: each refusal comes before step one ---------------------------------------------------

def _refused_before_step_one(p, exc, match):
    with pytest.raises(exc, match=match):
        T.train(p)
    assert not (p.run_dir / 'last.pt').exists()


def test_preflight_refuses_invalid_parameters(tmp_path):
    (tmp_path / 'p.yaml').write_text('batch_sise: 4\n')
    with pytest.raises(ValueError, match='batch_sise'):
        load_params(tmp_path / 'p.yaml')


def test_preflight_refuses_a_subject_in_two_splits(corpus, tmp_path):
    leaky = Path(corpus['data_dir'])
    subject_dir = next((leaky / 'edf' / 'train').iterdir())
    dst = leaky / 'edf' / 'eval' / subject_dir.name
    shutil.copytree(subject_dir, dst)
    try:
        _refused_before_step_one(tiny(corpus, tmp_path), ValueError, f'{subject_dir.name} in eval\\+train')
    finally:
        shutil.rmtree(dst)


def test_preflight_refuses_a_training_cache_without_seizures(corpus, tmp_path):
    data = tmp_path / 'noseiz'
    shutil.copytree(corpus['data_dir'], data)
    for f in data.rglob('*.csv_bi'):
        f.write_text('\n'.join(l for l in f.read_text().splitlines() if ',seiz,' not in l) + '\n')
    _refused_before_step_one(tiny(dict(data_dir=str(data), cache_dir=str(tmp_path / 'c')), tmp_path), ValueError, 'no seizure windows')


def test_preflight_refuses_the_reference_statistics_unless_overridden(corpus, tmp_path):
    stats = tmp_path / 'sleep_edf_normalization.json'
    stats.write_text(json.dumps({'mean': 9.385832980114282e-12, 'std': 2.124020075157719e-05}))
    _refused_before_step_one(tiny(corpus, tmp_path, norm_stats=str(stats)), NormalizationMismatch, 'mismatch')
    m = T.train(tiny(corpus, tmp_path, norm_stats=str(stats), norm_override=True, epochs=1, epoch_size=4,
                     sanitize_grads=True, max_nonfinite_in_row=100))
    assert m['normalization_audit'] == 'mismatch' and m['normalization_override'] is True


# --- guards under injected faults ----------------------------------------------------------------------

class FaultyDetector(Detector):
    "A real detector whose 2nd forward returns NaN logits and whose 4th backward leaves a NaN gradient entry."
    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0
        first = next(self.parameters())
        first.register_hook(lambda g: g.index_put((torch.tensor([0]),) * g.ndim, torch.tensor(float('nan'))) if self.calls == 4 else g)

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * float('nan') if self.calls == 2 else out


def test_guards_survive_a_nan_loss_and_a_nan_gradient(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(T, 'build_detector', building(FaultyDetector))
    p = tiny(corpus, tmp_path, epochs=1, epoch_size=24, sanitize_grads=True, nan_debug=True)
    m = T.train(p)
    assert m['nonfinite_steps'] == 1 and m['sanitized_grad_entries'] == 1 and m['steps'] == 6
    model = load_detector(tmp_path / 'train' / 'last.pt').model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the batch of the NaN step (the 2nd, step index 1) is kept, and its windows are the ones it names
    saved = torch.load(tmp_path / 'train' / 'nonfinite_batch_step1.pt')
    assert saved['step'] == 1 and saved['x'].shape[0] == saved['y'].shape[0] == len(saved['recordings']) == 4
    assert sorted(f.name for f in (tmp_path / 'train').glob('nonfinite_batch_*')) == ['nonfinite_batch_step1.pt']
    stats = T.stats_of_training_cache(p)
    windows = WindowDataset(T.cache_dir_of(p, 'train'), p.window_s, p.stride_s, transform=stats.apply)
    tokens = [r.token for r in windows.cache.recordings]
    for k, (token, start) in enumerate(zip(saved['recordings'], saved['starts'])):
        i = np.flatnonzero((windows.rec_idx == tokens.index(token)) & (windows.starts == start))[0]
        x, y = windows[i]
        assert torch.equal(T.clip_input(x, p.input_clip_sigma)[0], saved['x'][k]) and torch.equal(y, saved['y'][k])


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_diagnosis(corpus, tmp_path, monkeypatch):
    class AlwaysNaN(Detector):
        def forward(self, x): return super().forward(x) * float('nan')
    monkeypatch.setattr(T, 'build_detector', building(AlwaysNaN))
    with pytest.raises(T.TrainingDiverged, match='3 steps in a row.*first non-finite output came from'):
        T.train(tiny(corpus, tmp_path, max_nonfinite_in_row=3, nan_debug=True))


def test_a_run_stops_early_when_the_monitored_metric_stops_improving(corpus, tmp_path, monkeypatch):
    "A dev AUROC that never rises again: with patience 1 the run ends after its second evaluation, of four epochs."
    flat = dict(dev_auroc=0.7, dev_sens_at_fa={'10': 0.5, '5': 0.5, '1': 0.5}, dev_operating_points=None)
    monkeypatch.setattr(T, 'dev_metrics', lambda cache, probs: dict(flat))
    m = T.train(tiny(corpus, tmp_path, epochs=4, patience=1))
    assert m['epochs'] == 2
    state = T.load_checkpoint(tmp_path / 'train' / 'last.pt')['state']
    assert (state['best'], state['bad_epochs']) == (0.7, 1)
    assert T.load_checkpoint(tmp_path / 'train' / 'best.pt')['state']['epoch'] == 1  # the first evaluation's model


def test_env_overrides_switch_the_guards(monkeypatch):
    monkeypatch.setenv('BGB_SANITIZE_GRADS', '1'); monkeypatch.setenv('BGB_NAN_DEBUG', '1'); monkeypatch.setenv('BGB_EDGE_CLAMP', '0')
    p = load_params(None)
    assert p.sanitize_grads and p.nan_debug and not p.edge_clamp


# --- exact resume ---------------------------------------------------------------------------------------

def test_a_resumed_run_reaches_the_same_weights(corpus, tmp_path, monkeypatch):
    kw = dict(epochs=3, epoch_size=8)
    T.train(tiny(corpus, tmp_path / 'a', **kw))
    straight = T.load_checkpoint(tmp_path / 'a' / 'train' / 'last.pt')

    real_save, saves = T.save_checkpoint, []
    def crash_after_first_epoch(path, state):
        real_save(path, state); saves.append(path)
        if len(saves) == 2: raise KeyboardInterrupt('killed after epoch 1')  # last.pt and best.pt of epoch 1
    monkeypatch.setattr(T, 'save_checkpoint', crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(corpus, tmp_path / 'b', **kw))
    monkeypatch.setattr(T, 'save_checkpoint', real_save)
    assert T.load_checkpoint(tmp_path / 'b' / 'train' / 'last.pt')['state']['epoch'] == 1
    T.train(tiny(corpus, tmp_path / 'b', resume=True, **kw))
    resumed = T.load_checkpoint(tmp_path / 'b' / 'train' / 'last.pt')
    assert resumed['state']['step'] == straight['state']['step']
    for k, v in straight['model'].items():
        assert torch.equal(v, resumed['model'][k]), k
    assert resumed['optimizer']['state'].keys() == straight['optimizer']['state'].keys()


# --- DDP ------------------------------------------------------------------------------------------------

def test_two_process_ddp_on_cpu(corpus, tmp_path):
    params = tmp_path / 'ddp.yaml'
    p = tiny(corpus, tmp_path, epochs=1, epoch_size=16)
    params.write_text(yaml.safe_dump(p.model_dump(mode='json')))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    # --standalone: torchrun binds a free port itself and holds it (a fixed port collided with other processes)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'brain_go_brrr', 'train', '-f', str(params)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / 'train' / 'metrics.json').read_text())
    assert m['world_size'] == 2 and m['steps'] == 16 // (2 * 4)  # each rank takes half of each epoch


def test_a_non_finite_input_reaching_the_eigendecomposition_is_a_skipped_step(corpus, tmp_path, monkeypatch):
    "On CPU, LAPACK refuses a NaN graph (LinAlgError); the step is skipped and counted like any non-finite loss."
    class NaNInput(Detector):
        calls = 0
        def forward(self, x):
            NaNInput.calls += 1
            return super().forward(x * float('nan') if NaNInput.calls == 2 else x)
    monkeypatch.setattr(T, 'build_detector', building(NaNInput))
    m = T.train(tiny(corpus, tmp_path, epochs=1, epoch_size=16))
    assert m['nonfinite_steps'] == 1 and m['steps'] == 4


def test_parameter_groups_of_the_detector():
    "No weight decay on norms, biases, the state-space A_log and D; decay on every weight matrix and kernel."
    from brain_go_brrr.model import DetectorConfig
    decay, no_decay = T.param_groups(Detector(DetectorConfig(**TINY_MODEL)), 0.1)
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert any(n.endswith('.A_log') for n in no_decay['names']) and any(n.endswith('.D') for n in no_decay['names'])
    assert not any(n.endswith(('.A_log', '.D', '.bias')) for n in decay['names'])
    assert all(p.ndim >= 2 for p in decay['params']) and all(p.ndim <= 1 or n.endswith('A_log') for n, p in zip(no_decay['names'], no_decay['params']))
