"`python -m brain_go_brrr synth-tusz` as a user runs it: a separate process, exit codes, what lands on disk."
import os, subprocess, sys
from pathlib import Path
import mne

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
