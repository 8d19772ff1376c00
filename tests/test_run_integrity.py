"Run integrity (issue #12): every user mistake is a refusal naming the fix, before any work is lost."
import hashlib, json, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch

import brain_go_brrr.train as T
import brain_go_brrr.detect as D
from brain_go_brrr.checkpoints import CheckpointError
from brain_go_brrr.params import ParamsError, load_params, validate_cli
from conftest import TINY_MODEL, tiny

ROOT = Path(__file__).parent.parent
def cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


# --- 1. an empty path is refused; None still means the embedded corpus --------------------------------------

@pytest.mark.parametrize('field', ['data_dir', 'cache_dir', 'norm_stats', 'output_dir', 'run_name'])
def test_an_empty_path_is_refused_naming_the_field(field):
    with pytest.raises(ParamsError, match=f'^parameters: {field}: is empty'):
        load_params(None, **{field: ''})
    assert load_params(None, data_dir=None).data_dir is None


def test_train_cli_refuses_an_empty_data_dir_before_any_work(tmp_path):
    "`-p data_dir=$UNSET` used to train on the embedded corpus without a word."
    r = cli("train", "-p", "data_dir=", "-p", f"output_dir={tmp_path}")
    assert r.returncode == 1 and 'data_dir: is empty' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


# --- 2. a misspelt papermill parameter stops the run notebook -------------------------------------------------

@pytest.mark.parametrize('notebook,typo,closest', [('train.ipynb', 'mixed_precison', 'mixed_precision'),
                                                   ('build_cache.ipynb', 'worker', 'workers'),
                                                   ('train_eegpt_probe.ipynb', 'weight_decy', 'weight_decay'),
                                                   ('incidents/incident_nan_normalization.ipynb', 'gaurd', 'guard'),
                                                   ('incidents/incident_nan_dynamic_pe.ipynb', 'gap_esp', 'gap_eps'),
                                                   ('incidents/incident_nan_fp16_tiny_batch.ipynb', 'step', 'steps'),
                                                   ('incidents/incident_oom_dynamic_pe.ipynb', 'interval', 'intervals')])
def test_papermill_refuses_a_name_that_is_not_a_parameter(tmp_path, notebook, typo, closest):
    import papermill as pm
    refusal = f"'{typo}' is not a parameter of this notebook; did you mean '{closest}'"
    with pytest.raises(pm.PapermillExecutionError, match=refusal) as stopped:  # execution_timeout: a hang guard only
        pm.execute_notebook(str(ROOT / 'nbs' / notebook), str(tmp_path / 'out.ipynb'), parameters={typo: True},
                            kernel_name='python3', cwd=str(ROOT), execution_timeout=600, progress_bar=False)
    # refused before training or building anything: by the cell that refuses, at most the imports' cell before it
    cells = [c for c in json.loads((ROOT / 'nbs' / notebook).read_text())['cells'] if c['cell_type'] == 'code']
    parameters = next(i for i, c in enumerate(cells) if 'parameters' in c['metadata'].get('tags', []))
    refusing = next(i for i, c in enumerate(cells) if 'refuse_unknown_parameters(' in ''.join(c['source']))
    assert stopped.value.source == ''.join(cells[refusing]['source']) and refusing <= parameters + 2


# --- 3. validate catches what used to fail later, one line per problem ---------------------------------------

@pytest.mark.parametrize('text,needle', [
    ('monitor: dev_auc\n', "monitor: not a metric the evaluation writes"),
    ('device: gpu\n', 'device: not a device'),
    ('model:\n  n_channels: 18\n', 'model.n_channels = 18 but the referential montage has 19 channels'),
    ('model:\n  dropout: 2.5\n', 'model.dropout = 2.5: use 0 <= dropout < 1'),
    ('model:\n  d_node: -4\n', 'model.d_node = -4: must be at least 1'),
    ('lr: .inf\n', 'lr: Input should be a finite number'),
    ('weight_decay: 1e999\n', 'weight_decay: Input should be a finite number'),
    ('epochs: 3\n  lr: [\n', 'not valid YAML (line 2)'),
    ('', 'the file is empty'),
    ('[]\n', 'expected a mapping'),
])
def test_validate_prints_one_line_per_problem_and_exits_1(tmp_path, capsys, text, needle):
    (f := tmp_path / 'p.yaml').write_text(text)
    assert validate_cli([str(f)]) == 1
    err = capsys.readouterr().err
    assert needle in err and err.startswith(f'{f}: ') and 'Traceback' not in err, err


def test_validate_reports_every_problem_without_a_traceback(tmp_path):
    (f := tmp_path / 'p.yaml').write_text('model:\n  n_channels: 18\n  dropout: 2.5\n  d_node: -4\n')
    r = cli('validate', f)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 3 and all(l.startswith(f'{f}: model.') for l in lines), r.stderr


# --- 4. a recording of any length is predicted -------------------------------------------------------------

@pytest.mark.parametrize('seconds', [9.6, 30.0])
def test_a_recording_of_any_length_is_predicted(seconds):
    "A dev recording shorter than a window crashed the first evaluation (`Detector input of 2456 samples`)."
    from brain_go_brrr.model import Detector, DetectorConfig
    model = Detector(DetectorConfig(**TINY_MODEL)).eval()
    signal = np.random.default_rng(0).normal(size=(19, int(seconds * 128))).astype(np.float32)
    probs = D.predict_recording(model, signal, 10 * 128, lambda x: x, 'cpu', batch_size=2)
    assert probs.shape == (-(-signal.shape[1] // D.STEP),) and np.isfinite(probs).all() and (probs > 0).all() and (probs < 1).all()


# --- 5. resume: same parameters, every process's time, verified checkpoints --------------------------------

@pytest.fixture(scope='module')
def stopped_after_epoch_1(corpus, tmp_path_factory):
    "A run killed after its first epoch's checkpoints, each first-process step slowed by 1 s."
    out = tmp_path_factory.mktemp('stopped')
    real_save, real_step, saves = T.save_checkpoint, T.train_step, []
    def crash(path, state):
        real_save(path, state); saves.append(path)
        if len(saves) == 2: raise KeyboardInterrupt('killed after epoch 1')
    def slow(*a, **kw):
        time.sleep(1.0); return real_step(*a, **kw)
    T.save_checkpoint, T.train_step = crash, slow
    try:
        with pytest.raises(KeyboardInterrupt): T.train(tiny(corpus, out))
    finally: T.save_checkpoint, T.train_step = real_save, real_step
    return out / 'train'


def _copy(run, dst):
    import shutil
    shutil.copytree(run, dst / 'train')
    return dst


def test_resume_refuses_a_changed_learning_rate(corpus, stopped_after_epoch_1, tmp_path):
    "`-p lr=0.1 -p resume=true` kept the old learning rate while params.yaml recorded 0.1."
    out = _copy(stopped_after_epoch_1, tmp_path)
    with pytest.raises(ValueError, match=r"lr 0\.001 -> 0\.1.*only resume, epochs"):
        T.train(tiny(corpus, out, resume=True, lr=0.1))
    assert T.load_checkpoint(out / 'train' / 'last.pt')['state']['epoch'] == 1


def test_resume_from_a_bare_state_dict_is_one_line_naming_the_file(corpus, stopped_after_epoch_1, tmp_path):
    "`torch.save(model.state_dict(), 'last.pt')`, the usual way to save a model, gave KeyError: 'params'."
    out = _copy(stopped_after_epoch_1, tmp_path)
    last = out / 'train' / 'last.pt'
    model = T.build_detector(tiny(corpus, out).model)
    model.load_state_dict(T.load_checkpoint(last)['model'])
    torch.save(model.state_dict(), last)
    (out / 'train' / 'last.pt.sha256').unlink()  # as in a folder where train never wrote
    refusal = r"last\.pt: a bare state dict \(weights only.* lacking 'model', 'optimizer', .*'params'; give best\.pt or"
    with pytest.raises(CheckpointError, match=refusal + r" last\.pt as train writes them"):
        T.train(tiny(corpus, out, resume=True))


def test_resume_with_weights_of_another_size_names_the_tensor_before_any_work(corpus, stopped_after_epoch_1,
                                                                              tmp_path, monkeypatch):
    "Parameters that do not build the model the weights belong to gave load_state_dict's RuntimeError."
    out = _copy(stopped_after_epoch_1, tmp_path)
    last = out / 'train' / 'last.pt'
    saved = T.load_checkpoint(last)
    saved['model'] = T.build_detector(tiny(corpus, out).model.model_copy(update=dict(tcn_channels=32))).state_dict()
    T.save_checkpoint(last, saved)
    monkeypatch.setattr(T, 'preflight', lambda *a: pytest.fail('the checks and caches ran before the refusal'))
    refusal = r"last\.pt: its weights do not fit the model its params describe \(.* is \(.*32.*\) in the file, "
    with pytest.raises(CheckpointError, match=refusal + r"\(.*16.*\) in the model its params build"):
        T.train(tiny(corpus, out, resume=True))


def test_resume_records_what_changed_and_counts_every_process_time(corpus, stopped_after_epoch_1, tmp_path):
    out = _copy(stopped_after_epoch_1, tmp_path)
    before = T.load_checkpoint(out / 'train' / 'last.pt')['state']['seconds']  # the first process's time
    t0 = time.time()
    m = T.train(tiny(corpus, out, resume=True, epochs=3))
    this_process = time.time() - t0
    [r] = m['resumes']  # the run folder was moved, too
    assert (r['epoch'], r['step']) == (1, 4) and r['changed'].keys() == {'epochs', 'resume', 'output_dir'}
    assert r['changed']['epochs'] == [2, 3]
    assert json.loads((out / 'train' / 'metrics.json').read_text())['resumes'] == m['resumes']
    # inequalities that hold however loaded the machine: the first process slept 4 s before its checkpoint, and this
    # process's share of the time was measured inside the interval timed here
    assert m['steps'] == 12 and before >= 4.0 and before < m['seconds'] <= before + this_process
    assert m['windows_per_second'] == pytest.approx(12 * 4 / m['seconds'])


def _zero_64_bytes_inside_a_tensor(path):
    ck = torch.load(path, weights_only=True)
    name, t = max(ck['model'].items(), key=lambda kv: kv[1].numel())
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(t.numpy().tobytes())
    assert at > 0
    raw[at + 64:at + 128] = bytes(64)
    path.write_bytes(raw)


def test_a_damaged_checkpoint_is_refused_and_best_pt_offered(corpus, stopped_after_epoch_1, tmp_path):
    out = _copy(stopped_after_epoch_1, tmp_path)
    last = out / 'train' / 'last.pt'
    assert (out / 'train' / 'last.pt.sha256').exists() and (out / 'train' / 'best.pt.sha256').exists()
    _zero_64_bytes_inside_a_tensor(last)
    with pytest.raises(CheckpointError, match=f'damaged.*use {out / "train" / "best.pt"} instead'):
        T.train(tiny(corpus, out, resume=True))
    with pytest.raises(CheckpointError, match='damaged'):
        D.load_detector(last)
    D.load_detector(out / 'train' / 'best.pt')


# --- 6. the command line: one line naming the fix, exit 1, no traceback -------------------------------------

def _one_line_exit_1(r, needle):
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_cli_a_folder_that_is_not_a_cache(tmp_path):
    _one_line_exit_1(cli('scan-cache', '--cache-dir', tmp_path), 'not a cache')


def test_cli_a_missing_data_dir(tmp_path):
    _one_line_exit_1(cli('build-cache', '--data-dir', tmp_path / 'nope', '--cache-dir', tmp_path / 'c'), 'edf/')


def test_cli_a_missing_option_is_one_line():
    _one_line_exit_1(cli('scan-cache'), 'required: --cache-dir')


def test_cli_invalid_train_parameters(tmp_path):
    _one_line_exit_1(cli('train', '-p', 'lr=-1', '-p', f'output_dir={tmp_path}'), 'lr: Input should be greater than 0')


@pytest.mark.parametrize('flag', ['--window-s', '--stride-s'])
def test_cli_a_non_positive_window_or_stride(tmp_path, flag):
    _one_line_exit_1(cli('scan-cache', '--cache-dir', tmp_path, flag, '0'), f'argument {flag}: must be a positive')


def test_load_detector_on_a_checkpoint_that_is_not_a_detectors(tmp_path):
    torch.save({'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not a detector checkpoint'):
        D.load_detector(tmp_path / 'other.pt')
    (tmp_path / 'text.pt').write_text('hello')
    with pytest.raises(CheckpointError, match='not a checkpoint torch can read'):
        D.load_detector(tmp_path / 'text.pt')
