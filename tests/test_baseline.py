"The SeizureTransformer baseline in the harness: parameters, training, detect and evaluate, trained and released."
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

import brain_go_brrr.train as T
from brain_go_brrr.detect import PUBLISHED_POINT, STEP, load_detector, operating_point, profile_probabilities
from brain_go_brrr.params import ParamsError, load_params
from brain_go_brrr.scoring import read_csv_bi
from brain_go_brrr.seizure_transformer import (RELEASED_POST, RELEASED_PROFILE, RELEASED_SWEEP_POST, SIZES,
                                               SeizureTransformer, SeizureTransformerConfig, released_events,
                                               save_released_layout)
from brain_go_brrr.signal import EegReader
from conftest import tiny

ROOT = Path(__file__).parent.parent
TINY_BASELINE = dict(name='seizure_transformer', filters=[4, 8, 8], encoder_kernels=[3, 3, 3],
                     decoder_kernels=[3, 3, 3], res_kernels=[3], n_heads=2, n_layers=1, dim_feedforward=16)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@pytest.fixture(scope='module')
def trained(corpus, tmp_path_factory):
    "best.pt of a tiny SeizureTransformer trained by the harness on the shared synthetic corpus."
    p = tiny(corpus, tmp_path_factory.mktemp('run'), model=TINY_BASELINE)
    T.train(p)
    return p.run_dir / 'best.pt'


@pytest.fixture(scope='module')
def released(tmp_path_factory):
    "A CPU-size SeizureTransformer written in the authors' released layout (a state dict, no harness keys)."
    torch.manual_seed(0)
    return save_released_layout(SeizureTransformer(SIZES['cpu']), tmp_path_factory.mktemp('released') / 'model.pth')


def test_the_model_is_chosen_by_name_and_old_files_are_v3():
    assert load_params(ROOT / 'params/cpu_smoke.yaml').model.name == 'v3'
    assert load_params(ROOT / 'params/seizure_transformer.yaml').model == SeizureTransformerConfig()
    assert load_params(ROOT / 'params/seizure_transformer_cpu.yaml').model == SIZES['cpu']
    with pytest.raises(ParamsError, match="model.n_layer: not a parameter; did you mean 'n_layers'"):
        load_params(None, model={'name': 'seizure_transformer', 'n_layer': 2})
    with pytest.raises(ParamsError, match='more than the 320 the SeizureTransformer takes'):
        load_params(None, window_s=20, model={'name': 'seizure_transformer', 'pe_max_len': 10})


def test_model_summary_counts_the_published_baseline():
    r = cli('model-summary', '-f', 'params/seizure_transformer.yaml')
    assert r.returncode == 0, r.stderr
    assert '37,848,897' in r.stdout and 'transformer_encoder' in r.stdout and '(1, 15360)' in r.stdout


def test_a_trained_baseline_round_trips_and_detects(trained, tmp_path, write_edf):
    det = load_detector(trained)
    assert isinstance(det.model, SeizureTransformer) and det.profile is None and det.stats is not None
    edf = write_edf(tmp_path / 'in', 'dev', 'aaaaaaaa', seconds=90)
    r = cli('detect', '--checkpoint', trained, edf, '--out', tmp_path / 'out', '--threshold', 0.5, '--no-figures')
    assert r.returncode == 0, r.stderr
    probs = np.load(tmp_path / 'out' / f'{edf.stem}.probs.npy')
    assert probs.shape == (90 * 256 // 16,) and np.isfinite(probs).all()


def test_released_weights_detect_with_the_authors_profile_and_operating_point(released, tmp_path, write_edf):
    det = load_detector(released)
    assert det.profile == RELEASED_PROFILE and det.stats is None and det.model.cfg == SIZES['cpu']
    assert operating_point(det)['post'] == RELEASED_POST
    edf = write_edf(tmp_path / 'in', 'dev', 'aaaaaaaa', sfreq=250.0, seconds=90)
    r = cli('detect', '--checkpoint', released, edf, '--out', tmp_path / 'out', '--no-figures')
    assert r.returncode == 0, r.stderr
    point = json.loads((tmp_path / 'out' / 'operating_point.json').read_text())
    assert point['threshold'] == 0.8 and point['source'] == PUBLISHED_POINT and point['post'] == RELEASED_POST
    probs = np.load(tmp_path / 'out' / f'{edf.stem}.probs.npy')
    assert probs.shape == (-(-90 * 256 // 16),) and ((0 <= probs) & (probs <= 1)).all()


def test_released_events_are_made_from_every_sample_before_decimation(released, tmp_path, write_edf):
    "Below every probability the event is the authors' whole recording but 2 samples at each end (their closing)."
    det = load_detector(released)
    edf = write_edf(tmp_path / 'in', 'dev', 'aaaaaaaa', sfreq=250.0, seconds=90)
    every = profile_probabilities(det, EegReader(edf, det.params.montage), step=1)
    threshold = 0.99 * float(every.min())  # every sample above it
    r = cli('detect', '--checkpoint', released, edf, '--out', tmp_path / 'out', '--no-figures', '--threshold', threshold)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / 'out' / f'{edf.stem}.probs.npy'), every[::STEP])
    expected = released_events(every, 256.0, **{**RELEASED_POST, 'threshold': threshold})
    assert [(round(a, 4), round(b, 4)) for a, b, _ in expected] == [(round(2 / 256, 4), round((90 * 256 - 2) / 256, 4))]
    written = read_csv_bi(tmp_path / 'out' / f'{edf.stem}.csv_bi').events
    assert [(a, b) for a, b, label in written if label == 'seiz'] == [(round(a, 4), round(b, 4)) for a, b, _ in expected]


def test_evaluate_scores_released_weights_from_the_edf(released, corpus, tmp_path):
    import papermill as pm
    pm.execute_notebook(str(ROOT / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(ROOT),
                        parameters=dict(checkpoint=str(released), data_dir=corpus['data_dir'], output_dir=str(tmp_path),
                                        split='dev', n_resamples=10, run_name='evaluate_released'),
                        progress_bar=False)
    result = json.loads((tmp_path / 'evaluate_released' / 'eval_metrics.json').read_text())
    assert result['recordings']['processed'] == result['recordings']['scored'] > 0
    assert 0 <= result['sample_auroc'] <= 1 and result['post']['smooth_s'] == RELEASED_SWEEP_POST['smooth_s']
    # the published point, made as detect makes released weights' events (the authors' steps at 256 Hz), beside dev's
    published = result['published_point']
    assert published['source'] == PUBLISHED_POINT
    for scorer in ('ovlp', 'taes'):
        assert published['figures'][scorer]['threshold'] == RELEASED_POST['threshold']
        assert 0 <= published['figures'][scorer]['sensitivity'] <= 1
