"""SzCORE's BIDS datasets end to end: build-cache, the cross-dataset evaluation of a TUSZ-trained model, detect; and
the refusals: a model given another reference, a bipolar-only dataset, a damaged `_events.tsv` (file and line)."""
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

import brain_go_brrr.train as T
from brain_go_brrr.signal import DOUBLE_BANANA
from brain_go_brrr.synth import synth_bids, write_edf
from conftest import tiny

ROOT = Path(__file__).parent.parent


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', *map(str, args)], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    "A Siena-like SzCORE dataset: three subjects, no split column, `-Avg` channels, events by epilepsy2bids."
    return synth_bids(tmp_path_factory.mktemp('bids') / 'siena', subjects=3, seconds=(60, 90))


def seizing(dataset) -> Path:
    "The EDF of a recording whose events file holds a seizure."
    tsv = next(p for p in sorted(dataset.rglob('*_events.tsv')) if '\tsz\t' in p.read_text())
    return tsv.with_name(tsv.name.replace('_events.tsv', '_eeg.edf'))


def test_build_cache_reads_the_bids_layout_and_keeps_the_reference(dataset, tmp_path):
    r = run('build-cache', '--data-dir', dataset, '--cache-dir', tmp_path / 'c', '--split', 'eval')
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / 'c' / 'cache.json').read_text())
    entries = [json.loads(p.read_text()) for p in (tmp_path / 'c' / 'recordings').glob('*.json')]
    assert config['corpus'] == 'bids' and 'reference' not in config  # as recorded: already averaged
    assert len(entries) == len(list(dataset.rglob('*_eeg.edf'))) and not list((tmp_path / 'c').glob('failed/*.json'))
    assert {e['recorded_reference'] for e in entries} == {'AVG'}
    assert {e['subject'] for e in entries} == {'sub-01', 'sub-02', 'sub-03'}
    assert sum(e['seizure_samples'] for e in entries) > 0
    r = run('build-cache', '--data-dir', dataset, '--cache-dir', tmp_path / 'c', '--split', 'train')
    assert r.returncode != 0 and 'no recordings of split train' in r.stderr  # no split column: all eval


def test_a_tusz_trained_model_is_evaluated_on_a_bids_dataset(averaged, dataset, tmp_path):
    "evaluate.ipynb -p checkpoint best.pt -p data_dir BIDS: every recording, SzCORE per subject from the .tsv."
    import papermill as pm
    pm.execute_notebook(str(ROOT / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(ROOT),
                        parameters=dict(checkpoint=str(averaged), data_dir=str(dataset), n_resamples=10,
                                        run_name='evaluate_bids'), progress_bar=False)
    out = averaged.parent.parent / 'evaluate_bids'
    result = json.loads((out / 'eval_metrics.json').read_text())
    recordings = len(list(dataset.rglob('*_eeg.edf')))
    assert result['data_format'] == 'bids' and result['split'] == 'eval'
    assert result['recordings'] == dict(scored=recordings, processed=recordings, refused={})
    tsv = result['szcore_from_tsv']
    assert tsv['szcore_event']['per_subject']['subjects'] == 3
    # the .tsv references and their .csv_bi conversion (which NEDC's scorers read) give SzCORE the same counts
    for name in ('szcore_event', 'szcore_sample'):
        assert tsv[name]['cumulated'] == result['scores'][name]['cumulated'], name
    assert len(list((out / 'references').glob('*.csv_bi'))) == recordings
    assert set(result['nedc_at_10fa']) == {'dpalign', 'epoch', 'ovlp', 'taes'}
    notebook = (tmp_path / 'evaluate.ipynb').read_text()
    assert 'per subject (the leaderboard' in notebook and 'bids layout' in notebook


def test_detect_on_a_bids_recording(averaged, dataset, tmp_path):
    edf = seizing(dataset)
    r = run('detect', '--checkpoint', averaged, edf, '--out', tmp_path / 'out', '--threshold', 0.5, '--no-figures')
    assert r.returncode == 0, r.stderr + r.stdout
    row = json.loads((tmp_path / 'out' / 'detections.json').read_text())[0]
    assert row['status'] == 'ok' and len(row['onset_latency_s']) >= 1  # its _events.tsv, read beside it
    assert (tmp_path / 'out' / f'{edf.stem}.tsv').read_text().startswith('onset\tduration\teventType')


def test_a_model_trained_on_another_reference_is_refused(as_recorded, dataset, tmp_path):
    r = run('detect', '--checkpoint', as_recorded, seizing(dataset), '--out', tmp_path / 'out', '--threshold', 0.5,
            '--no-figures')
    assert r.returncode == 1
    status = json.loads((tmp_path / 'out' / 'detections.json').read_text())[0]['status']
    assert 'AVG-referenced' in status and 'LE/REF-referenced' in status and 'reference common_average' in status
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match='ReferenceMismatch'):
        pm.execute_notebook(str(ROOT / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(ROOT),
                            parameters=dict(checkpoint=str(as_recorded), data_dir=str(dataset), n_resamples=10,
                                            output_dir=str(tmp_path), run_name='evaluate_refused'), progress_bar=False)


def test_a_bipolar_only_dataset_is_refused_with_its_montage_named(averaged, tmp_path):
    "CHB-MIT as SzCORE stores it: the 18 pairs of the double banana, 10-10 names; no electrode can be recovered."
    ten_ten = {'T3': 'T7', 'T4': 'T8', 'T5': 'P7', 'T6': 'P8', 'FP1': 'Fp1', 'FP2': 'Fp2', 'FZ': 'Fz', 'CZ': 'Cz',
               'PZ': 'Pz'}
    chbmit = tmp_path / 'chbmit'
    edf = chbmit / 'sub-01' / 'ses-01' / 'eeg' / 'sub-01_ses-01_task-szMonitoring_run-01_eeg.edf'
    rng = np.random.default_rng(0)
    write_edf(edf, {'-'.join(ten_ten.get(e, e) for e in pair.split('-')): rng.normal(0, 20, 256 * 60)
                    for pair in DOUBLE_BANANA}, 256)
    from brain_go_brrr.synth import write_bids_events
    write_bids_events(edf.with_name(edf.name.replace('_eeg.edf', '_events.tsv')), [(20.0, 35.0)], 60, None)
    (chbmit / 'participants.tsv').write_text('participant_id\nsub-01\n')
    r = run('detect', '--checkpoint', averaged, edf, '--out', tmp_path / 'out', '--no-figures', '--threshold', 0.5)
    assert r.returncode == 1
    status = json.loads((tmp_path / 'out' / 'detections.json').read_text())[0]['status']
    assert 'double banana' in status and 'Fp1-F3' in status and str(edf) in status
    r = run('build-cache', '--data-dir', chbmit, '--cache-dir', tmp_path / 'c', '--split', 'eval')
    assert r.returncode == 1 and 'every recording failed' in r.stderr
    assert 'double banana' in next((tmp_path / 'c' / 'failed').glob('*.json')).read_text()
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match='not one recording of eval could be read.*double banana'):
        pm.execute_notebook(str(ROOT / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(ROOT),
                            parameters=dict(checkpoint=str(averaged), data_dir=str(chbmit), n_resamples=10,
                                            run_name='evaluate_chbmit'), progress_bar=False)


def test_a_damaged_events_file_is_named_with_its_line(dataset, tmp_path):
    damaged = shutil.copytree(dataset, tmp_path / 'damaged')
    tsv = next(p for p in sorted(damaged.rglob('*_events.tsv')))
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].replace('\t', '  ', 1)  # a row cut into 6 fields (spaces where a tab was)
    tsv.write_text('\n'.join(lines) + '\n')
    r = run('build-cache', '--data-dir', damaged, '--cache-dir', tmp_path / 'c', '--split', 'eval')
    assert r.returncode == 0, r.stderr  # the others are cached
    reason = json.loads((tmp_path / 'c' / 'failed' / f'{tsv.name.replace("_events.tsv", "_eeg")}.json').read_text())
    assert reason['reason'].startswith(f'{tsv}:2: 6 tab-separated fields where the header has 7')
    tsv.with_name(tsv.name.replace('_events.tsv', '_eeg.edf')).unlink()  # the events of a recording that is gone
    r = run('build-cache', '--data-dir', damaged, '--cache-dir', tmp_path / 'c', '--split', 'eval')
    assert r.returncode == 1 and f'{tsv}: its recording' in r.stderr and 'put the EDF back' in r.stderr


def test_training_takes_tusz_converted_by_szcore(tmp_path):
    "SzCORE's TUSZ (participants.tsv with a split column): preflight caches its train and dev splits, subject-disjoint."
    data = synth_bids(tmp_path / 'tuh', subjects=6, seconds=(60, 90), splits=True)
    checks = T.preflight(tiny(dict(data_dir=str(data), cache_dir=str(tmp_path / 'cache')), tmp_path))
    assert checks.scans['train']['recordings'] and checks.scans['dev']['recordings']
    assert checks.references == ['AVG'] and checks.scans['train']['full'] + checks.scans['train']['partial'] > 0
