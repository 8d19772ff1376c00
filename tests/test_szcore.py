"""SzCORE scoring (`--scorer szcore`) equals timescoring run the way SzCORE's own evaluation runs it, and
`szcore_evaluation.evaluate_dataset` itself, per subject and cumulated."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from epilepsy2bids.annotations import Annotations
from szcore_evaluation.evaluate import evaluate_dataset
from timescoring import scoring as ts_scoring
from timescoring.annotations import Annotation as TsAnnotation

from brain_go_brrr.post import write_csv_bi
from brain_go_brrr.scoring import (SZCORE_AVERAGED, SZCORE_EVENT, SZCORE_SCORERS, pair_by_bname, read_list, subject_of,
                                   szcore_score)

PARITY = Path(__file__).parent / 'data' / 'nedc_parity'

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
                       seiz_fa_per_24h=t['fp'] / (t['seconds'] / 86400), targets=t['ref'], hits=t['tp'],
                       false_alarms=t['fp'], total_duration_s=t['seconds']) for name, t in totals.items()}


def seiz(rows): return [(a, b, 'seiz') for a, b in rows]


def assert_same_figures(got, expected):
    for name in SZCORE_SCORERS:
        for key, value in expected[name].items():
            assert got[name]['cumulated'][key] == pytest.approx(value, rel=1e-12), (name, key)


def test_szcore_settings_are_timescorings_defaults():
    defaults = ts_scoring.EventScoring.Parameters()
    assert {k: getattr(defaults, k) for k in SZCORE_EVENT} == SZCORE_EVENT
    assert SZCORE_EVENT == dict(toleranceStart=30, toleranceEnd=60, minOverlap=0, maxEventDuration=300,
                                minDurationBetweenEvents=90)


def test_figures_equal_timescoring_called_directly(tmp_path):
    expected = szcore_direct(tmp_path)
    got = szcore_score([(seiz(r), seiz(h), d) for r, h, d in RECORDINGS.values()], list(map(subject_of, RECORDINGS)))
    assert_same_figures(got, expected)
    assert 0 < got['szcore_event']['cumulated']['sensitivity'] < 1
    assert got['szcore_event']['cumulated']['false_alarms'] >= 3


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
    assert set(got) == set(SZCORE_SCORERS) and all(set(got[n]) == {'per_subject', 'cumulated'} for n in got)
    assert_same_figures(got, szcore_direct(tmp_path))
    table = run_score(tmp_path / 'ref.list', tmp_path / 'hyp.list', '--scorer', 'all')
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:7]] == ['dpalign', 'epoch', 'ovlp', 'taes',
                                                                            *SZCORE_SCORERS]


# evaluate_dataset's own code on BIDS-like folders: the figures of `szcore_score` both ways

def bids_tsv(root, token) -> Path:
    "Where SzCORE's layout puts a recording's events: sub-<subject>/ses-<session>/eeg/..._events.tsv."
    subject, session, run = token.split('_')
    return (root / f'sub-{subject}' / f'ses-{session}' / 'eeg' /
            f'sub-{subject}_ses-{session}_task-szMonitoring_run-{run}_events.tsv')


def written_by_epilepsy2bids(path, events, duration):
    "The seizure events `(start, stop)` of one recording written by epilepsy2bids' writer, then read back."
    path.parent.mkdir(parents=True, exist_ok=True)
    Annotations.loadEvents(events, duration).saveTsv(str(path))
    back = Annotations.loadTsv(str(path))
    return [(a, b, 'seiz') for a, b in back.getEvents()], back.events[0]['recordingDuration']


def evaluate_both_ways(tmp_path, recordings):
    """`evaluate_dataset` (avg_per_subject True and False) on `{token: (ref events, hyp events, duration)}` written as
    .tsv folders, and `szcore_score` on the same events as the files hold them (the writer keeps 2 decimals)."""
    ours = []
    for token, (ref, hyp, duration) in recordings.items():
        ref_back, seconds = written_by_epilepsy2bids(bids_tsv(tmp_path / 'ref', token), ref, duration)
        hyp_back, _ = written_by_epilepsy2bids(bids_tsv(tmp_path / 'hyp', token), hyp, duration)
        ours.append((ref_back, hyp_back, seconds))
    got = szcore_score(ours, [subject_of(t) for t in recordings])
    theirs = {way: evaluate_dataset(tmp_path / 'ref', tmp_path / 'hyp', tmp_path / f'{way}.json', avg_per_subject=avg)
              for way, avg in (('per_subject', True), ('cumulated', False))}
    return got, theirs


def assert_equal_to_szcore_evaluation(got, theirs):
    for name, key in zip(SZCORE_SCORERS, ('event_results', 'sample_results')):
        for fig, their_fig in zip(SZCORE_AVERAGED, ('sensitivity', 'precision', 'f1', 'fpRate')):
            pairs = [(got[name]['cumulated'][fig], theirs['cumulated'][key][their_fig]),
                     (got[name]['per_subject'][fig], theirs['per_subject'][key][their_fig]),
                     (got[name]['per_subject'][f'{fig}_std'], theirs['per_subject'][key][f'{their_fig}_std'])]
            for ours, ref in pairs: np.testing.assert_allclose(ours, ref, rtol=1e-12, err_msg=f'{name} {fig}')


def toy_subjects():
    "The issue's toy: subject a, 1 h, 4 of 4 seizures found; subject b, 23 h in two recordings, 1 missed, 10 FA."
    found = [(k * 600.0 + 100, k * 600.0 + 160) for k in range(4)]
    alarms = [(k * 3600.0 + 1000, k * 3600.0 + 1010) for k in range(10)]
    return {'aaaaaaaa_s001_t000': (found, found, 3600.0),
            'aaaaaaab_s001_t000': ([(500.0, 560.0)], alarms[:6], 12 * 3600.0),
            'aaaaaaab_s002_t000': ([], [(a - 6 * 3600, b - 6 * 3600) for a, b in alarms[6:]], 11 * 3600.0)}


def test_toy_two_subjects_equals_evaluate_dataset(tmp_path):
    got, theirs = evaluate_both_ways(tmp_path, toy_subjects())
    assert_equal_to_szcore_evaluation(got, theirs)
    event = got['szcore_event']
    assert (round(event['cumulated']['f1'], 2), round(event['per_subject']['f1'], 2)) == (0.42, 0.50)
    fa = event['cumulated']['seiz_fa_per_24h'], event['per_subject']['seiz_fa_per_24h']
    assert (round(fa[0], 1), round(fa[1], 1)) == (10.0, 5.2)
    assert event['per_subject']['subjects'] == 2


@pytest.mark.parametrize('folder', ['demo', 'random'])
def test_parity_pairs_equal_evaluate_dataset(tmp_path, folder):
    """The 90 NEDC parity pairs. Demo's real TUSZ names give 30 recordings of fewer subjects; random's 60 names are
    60 subjects, so they are renamed into 6 subjects of 10 recordings (`<subject>_s<k>_t000`)."""
    pairs = pair_by_bname(read_list(PARITY / folder / 'ref.list'), read_list(PARITY / folder / 'hyp.list'))
    seizures = lambda ann: [(a, b) for a, b, label in ann.events if label == 'seiz']
    token = (lambda k, bname: bname) if folder == 'demo' else (lambda k, bname: f'{"abcdef"[k % 6] * 8}_s{k:03d}_t000')
    recordings = {token(k, ref.bname): (seizures(ref), seizures(hyp), ref.duration)
                  for k, (ref, hyp) in enumerate(pairs)}
    got, theirs = evaluate_both_ways(tmp_path, recordings)
    assert_equal_to_szcore_evaluation(got, theirs)
    subjects = {subject_of(t) for t in recordings}
    assert 1 < len(subjects) < len(recordings)  # subjects of several recordings
    assert got['szcore_event']['per_subject']['subjects'] == len(subjects)
    # the two ways differ on these data: what is compared above is not one figure twice
    assert got['szcore_event']['per_subject']['f1'] != pytest.approx(got['szcore_event']['cumulated']['f1'])


def test_seizure_free_subjects_are_averaged_as_evaluate_dataset_averages_them(tmp_path):
    "No seizure: no sensitivity; a false alarm makes F1 0, none leaves F1 undefined; both count in FP/day."
    recordings = {**toy_subjects(), 'aaaaaaac_s001_t000': ([], [(100.0, 110.0)], 7200.0),
                  'aaaaaaad_s001_t000': ([], [], 3600.0)}
    got, theirs = evaluate_both_ways(tmp_path, recordings)
    assert_equal_to_szcore_evaluation(got, theirs)
    event = got['szcore_event']['per_subject']
    assert event['sensitivity'] == 0.5 and event['f1'] == pytest.approx((1 + 0 + 0) / 3)
    assert event['seiz_fa_per_24h'] == pytest.approx((0 + 10 / (23 / 24) + 12 + 0) / 4)
