"""`python -m brain_go_brrr synth-tusz` as a user runs it: a separate process, exit codes, what lands on disk;
the synthetic TUAB corpus carries the channels the official EEGPT fine-tune reads."""
import json, os, subprocess, sys
from pathlib import Path
import mne
import numpy as np
import pytest

CLI = [sys.executable, '-m', 'brain_go_brrr', 'synth-tusz']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)


def test_synth_tusz_writes_a_corpus_and_exits_0(tmp_path):
    out = tmp_path / 'tusz'
    r = run(out, '--subjects', 3, '--seed', 7, '--seconds', 40, 60)
    assert r.returncode == 0, r.stderr
    assert 'recordings of 3 subjects (dev 1, eval 1, train 1)' in r.stdout, r.stdout
    edfs = sorted(out.glob('edf/*/*/*/*/*.edf'))
    assert edfs and all(p.with_suffix('.csv_bi').exists() and p.with_suffix('.csv').exists() for p in edfs)
    assert {p.parts[-5] for p in edfs} == {'train', 'dev', 'eval'}
    raw = mne.io.read_raw_edf(edfs[0], verbose='error')
    assert any(c.startswith('EEG FP1-') for c in raw.ch_names) and 40 <= raw.times[-1] < 60
    assert run(out, '--subjects', 3, '--seed', 7, '--seconds', 40, 60).returncode == 0  # same arguments: nothing to redo


def test_synth_tusz_refuses_bad_arguments_with_exit_2(tmp_path):
    r = run(tmp_path / 'few', '--subjects', 2)
    assert r.returncode == 2 and 'at least 3' in r.stderr
    r = run(tmp_path / 'short', '--seconds', 10, 20)
    assert r.returncode == 2 and 'seconds' in r.stderr
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    r = run(tmp_path / 'busy', '--subjects', 3, '--seconds', 40, 40)
    assert r.returncode == 2 and 'not empty' in r.stderr and (tmp_path / 'busy' / 'notes.txt').read_text() == 'mine'


def test_synth_tusz_help():
    r = run('--help')
    assert r.returncode == 0 and '--subjects' in r.stdout and '--seed' in r.stdout


def test_synth_tuab_writes_t1_t2_beside_t3_t4_and_records_its_version(tmp_path):
    from brain_go_brrr.signal import read_eeg
    from brain_go_brrr.synth import SYNTH_VERSION, synth_tuab
    root = synth_tuab(tmp_path / 'tuab', subjects=6, seconds=(30, 30))
    assert json.loads((root / 'synth.json').read_text())['synth_version'] == SYNTH_VERSION['tuab'] == 2
    for edf in sorted(root.rglob('*.edf'))[:3]:
        x, _, names = read_eeg(edf, 'tuab23')  # refuses a recording without T1/T2
        r = np.corrcoef(x)
        at = names.index
        assert r[at('T1'), at('T3')] > r[at('T1'), at('O2')] and r[at('T2'), at('T4')] > r[at('T2'), at('O1')]
        assert 3 < x[at('T1')].std() < 150 and 3 < x[at('T2')].std() < 150  # µV, like the scalp
    old = tmp_path / 'old'  # a corpus of the previous generator, without T1/T2, is not taken for this one
    old.mkdir()
    (old / 'synth.json').write_text(json.dumps(json.loads((root / 'synth.json').read_text()) | {'synth_version': 1}))
    with pytest.raises(FileExistsError, match='made with'): synth_tuab(old, subjects=6, seconds=(30, 30))
