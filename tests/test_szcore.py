"""SzCORE scoring (`--scorer szcore`) equals timescoring run the way SzCORE's own evaluation runs it."""
import json, os, subprocess, sys

import pandas as pd
import pytest
from epilepsy2bids.annotations import Annotations
from timescoring import scoring as ts_scoring
from timescoring.annotations import Annotation as TsAnnotation

from brain_go_brrr.post import write_csv_bi
from brain_go_brrr.scoring import SZCORE_EVENT, SZCORE_SCORERS, szcore_score

# (reference events, hypothesis events, duration): seizures hit, missed, merged and split; false alarms inside and
# outside the tolerances; a recording with no seizure and one with no hypothesis
RECORDINGS = {
    'aaaaaaaa_s001_t000': ([(100.5, 130.25), (1000.0, 1040.0), (1100.0, 1700.0)],
                           [(75.0, 85.0), (1010.0, 1020.0), (2000.0, 2010.0), (2070.0, 2080.5)], 3600.0),
    'aaaaaaaa_s001_t001': ([], [(10.0, 20.5), (500.0, 620.0)], 1800.75),
    'aaaaaaab_s001_t000': ([(60.0, 90.0), (400.0, 430.0)], [], 900.0),
    'aaaaaaab_s002_t000': ([(30.0, 45.0)], [(44.0, 50.0), (3000.0, 3400.0)], 7200.5),
}


def szcore_mask(path, events, duration):
    "An SzCORE .tsv written with pandas, read back into a 1 Hz mask by epilepsy2bids as SzCORE's evaluation does."
    rows = [(a, b - a, 'sz') for a, b in events] or [(0.0, duration, 'bckg')]  # seizure-free: one bckg row
    pd.DataFrame(dict(onset=[r[0] for r in rows], duration=[r[1] for r in rows], eventType=[r[2] for r in rows],
                      confidence='n/a', channels='n/a', dateTime='n/a', recordingDuration=duration)
                 ).to_csv(path, sep='\t', index=False)
    return Annotations.loadTsv(path).getMask(1)


def szcore_direct(tmp_path):
    "SzCORE's cumulated result: timescoring per recording, then tp, fp, reference events and durations summed."
    totals = {name: dict(tp=0, fp=0, ref=0, seconds=0.0) for name in SZCORE_SCORERS}
    for token, (ref_rows, hyp_rows, duration) in RECORDINGS.items():
        ref = TsAnnotation(szcore_mask(tmp_path / f'{token}_ref.tsv', ref_rows, duration), 1)
        hyp = TsAnnotation(szcore_mask(tmp_path / f'{token}_hyp.tsv', hyp_rows, duration), 1)
        for name, s in zip(SZCORE_SCORERS, (ts_scoring.EventScoring(ref, hyp), ts_scoring.SampleScoring(ref, hyp))):
            t = totals[name]
            t['tp'], t['fp'], t['ref'] = t['tp'] + s.tp, t['fp'] + s.fp, t['ref'] + s.refTrue
            t['seconds'] += len(s.ref.mask) / s.ref.fs
    return {name: dict(sensitivity=t['tp'] / t['ref'], precision=t['tp'] / (t['tp'] + t['fp']),
                       f1=2 * t['tp'] / (2 * t['tp'] + t['fp'] + t['ref'] - t['tp']),
                       fa_per_24h=t['fp'] / (t['seconds'] / 86400), targets=t['ref'], hits=t['tp'],
                       false_alarms=t['fp'], total_duration_s=t['seconds']) for name, t in totals.items()}


def seiz(rows): return [(a, b, 'seiz') for a, b in rows]


def assert_same_figures(got, expected):
    for name in SZCORE_SCORERS:
        for key, value in expected[name].items(): assert got[name][key] == pytest.approx(value, rel=1e-12), (name, key)


def test_szcore_settings_are_timescorings_defaults():
    defaults = ts_scoring.EventScoring.Parameters()
    assert {k: getattr(defaults, k) for k in SZCORE_EVENT} == SZCORE_EVENT
    assert SZCORE_EVENT == dict(toleranceStart=30, toleranceEnd=60, minOverlap=0, maxEventDuration=300,
                                minDurationBetweenEvents=90)


def test_figures_equal_timescoring_called_directly(tmp_path):
    expected = szcore_direct(tmp_path)
    got = szcore_score((seiz(r), seiz(h), d) for r, h, d in RECORDINGS.values())
    assert_same_figures(got, expected)
    assert 0 < got['szcore_event']['sensitivity'] < 1 and got['szcore_event']['false_alarms'] >= 3


def run_score(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'score', *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_scores_csv_bi_lists_as_szcore(tmp_path):
    for side, k in (('ref', 0), ('hyp', 1)):
        paths = [write_csv_bi(tmp_path / side / f'{token}.csv_bi', rec[k], rec[2]) for token, rec in RECORDINGS.items()]
        (tmp_path / f'{side}.list').write_text('\n'.join(str(p) for p in paths) + '\n')
    out = tmp_path / 'szcore.json'
    proc = run_score(tmp_path / 'ref.list', tmp_path / 'hyp.list', '--scorer', 'szcore', '--json', out)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert set(got) == set(SZCORE_SCORERS)
    assert_same_figures(got, szcore_direct(tmp_path))
    table = run_score(tmp_path / 'ref.list', tmp_path / 'hyp.list', '--scorer', 'all')
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:7]] == ['dpalign', 'epoch', 'ovlp', 'taes',
                                                                            *SZCORE_SCORERS]
