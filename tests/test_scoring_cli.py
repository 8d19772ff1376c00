"""`python -m brain_go_brrr score`: JSON and table output, and bad input refused with the file and line."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from brain_go_brrr.scoring import score_cli

DEMO = Path(__file__).parent / 'data' / 'nedc_parity' / 'demo'
KEYS = {'targets', 'hits', 'misses', 'false_alarms', 'sensitivity', 'precision', 'f1', 'seiz_fa_per_24h',
        'total_false_alarms', 'total_fa_per_24h'}


def run_score(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'score', *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_json_output_has_every_scorer_and_figure(tmp_path):
    out = tmp_path / 'deep' / 'scores.json'
    proc = run_score(DEMO / 'ref.list', DEMO / 'hyp.list', '--json', out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert set(results) == {'dpalign', 'epoch', 'ovlp', 'taes'}
    assert all(KEYS <= set(r) for r in results.values())
    expected = json.loads((DEMO / 'expected.json').read_text())
    assert round(results['ovlp']['sensitivity'], 6) == round(expected['ovlp']['sensitivity'], 6)
    assert 0 <= results['taes']['precision'] <= 1  # fractions, not percent
    assert 'fa_per_24h' not in results['taes']  # named for what it is: seiz_ or total_


def test_table_on_stdout_without_json():
    proc = run_score(DEMO / 'ref.list', DEMO / 'hyp.list')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ['scorer', 'targets']
    assert [l.split()[0] for l in lines[1:5]] == ['dpalign', 'epoch', 'ovlp', 'taes']
    assert lines[3].split()[1:5] == ['701', '604.00', '97.00', '2.00']


def write(path, rows, duration=60.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(['# version = csv_v1.0.0', f'# bname = {path.stem}', f'# duration = {duration:.4f} secs',
                               '#', 'channel,start_time,stop_time,label,confidence', *rows]) + '\n')


@pytest.mark.parametrize('hyp_rows, hyp_name, message', [
    (['TERM,1,2,sz,1'], 'x', 'h/x.csv_bi:6: unknown label'),
    (['TERM,1,20,seiz,1', 'TERM,10,30,seiz,1'], 'x', 'h/x.csv_bi:7: event 10.0-30.0 s overlaps the event at'),
    (['TERM,20,10,seiz,1'], 'x', 'h/x.csv_bi:6: stop_time 10.0 is not after start_time 20.0'),
    (['TERM,1,2,seiz,1'], 'other', 'hyp.list:1: '),  # a hypothesis for a file that is not in the reference list
])
def test_bad_input_exits_1_naming_file_and_line(tmp_path, hyp_rows, hyp_name, message):
    write(tmp_path / 'r' / 'x.csv_bi', ['TERM,1,2,seiz,1'])
    write(tmp_path / 'h' / f'{hyp_name}.csv_bi', hyp_rows)
    (tmp_path / 'ref.list').write_text('r/x.csv_bi\n')
    (tmp_path / 'hyp.list').write_text(f'h/{hyp_name}.csv_bi\n')
    proc = run_score(tmp_path / 'ref.list', tmp_path / 'hyp.list')
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.startswith('error: ') and message in proc.stderr, proc.stderr
    if hyp_name == 'other': assert 'not in the reference list' in proc.stderr


def test_missing_list_is_an_error_not_a_traceback(tmp_path, capsys):
    assert score_cli([str(tmp_path / 'no.list'), str(tmp_path / 'no.list')]) == 1
    assert 'no.list' in capsys.readouterr().err
