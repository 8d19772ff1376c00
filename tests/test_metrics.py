"""Every recording of a split counted (a refused one with an empty hypothesis), seizure types from the per-channel
.csv of a synthetic corpus, bootstrap intervals that a seed fixes (SzCORE's both ways), false alarms on seizure-free
recordings, onset-latency intervals, and the paired bootstrap of two models on the same subjects."""
import numpy as np
import pytest

from brain_go_brrr.cache import build_cache, open_cache
from brain_go_brrr.metrics import (CI_SCORERS, LATENCY_FIGURES, SEIZURE_FREE_FA, TYPES, UNTYPED, both_ways,
                                   bootstrap_ci, latency_ci, paired_bootstrap, recording_counts, reference_types,
                                   split_recordings, type_sensitivity)
from brain_go_brrr.scoring import SEIZ, latency_summary, onset_latencies, score_pairs
from brain_go_brrr.synth import synth_tusz
from brain_go_brrr.tusz import discover, read_annotation


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "Seven subjects of 60-90 s recordings: the eval split holds two recordings, the first with a seizure."
    return synth_tusz(tmp_path_factory.mktemp('metrics') / 'tusz', subjects=7, seed=3, seconds=(60, 90))


def seizures_of(split, token):
    return [e for e in split.refs[token].events if e[2] == SEIZ]


def test_a_refused_eval_recording_is_scored_with_every_seizure_missed(corpus, tmp_path):
    files = discover(corpus, 'eval')
    damaged = next(f for f in files if read_annotation(f.csv_bi).seizures())
    damaged.path.write_bytes(b'not an EDF header' + damaged.path.read_bytes()[17:])
    build_cache(corpus, tmp_path / 'cache', 'eval', progress=False)
    cache = open_cache(tmp_path / 'cache')
    split = split_recordings(files, cache.failures)
    assert len(split.refs) == len(files) == len(cache.recordings) + 1
    assert list(split.refused) == [damaged.bname] and split.processed == [r.token for r in cache.recordings]
    report = split.report()
    assert report.startswith(f'scored {len(files)} recordings; 1 could not be processed '
                             '(all their seizures count as missed)') and damaged.bname in report
    perfect = {t: seizures_of(split, t) for t in split.processed}  # every processed seizure detected
    every = score_pairs(split.pairs(perfect), ['ovlp', 'szcore_event'])
    processed = score_pairs(split.pairs(perfect, processed_only=True), ['ovlp'])
    missed = len(seizures_of(split, damaged.bname))
    assert every['ovlp']['targets'] == processed['ovlp']['targets'] + missed and every['ovlp']['misses'] == missed
    szcore = every['szcore_event']['cumulated']
    assert szcore['hits'] == szcore['targets'] - missed
    assert every['ovlp']['total_duration_s'] == pytest.approx(sum(r.duration for r in split.refs.values()))


def test_a_cache_of_another_split_is_refused(corpus):
    with pytest.raises(ValueError, match='not in this split'):
        split_recordings(discover(corpus, 'eval'), [dict(token='zzzzzzzz_s001_t000', reason='x', source='/elsewhere')])


def test_seizure_types_come_from_the_per_channel_csv(corpus):
    split = split_recordings(discover(corpus))
    types = reference_types(split)
    expected = {}  # the types the generator wrote on the channels of each seizure
    for token, ref in split.refs.items():
        channel = read_annotation(split.channel_files[token]).seizures()
        for a, b, _ in seizures_of(split, token):
            kinds = {e.label for e in channel if e.start < b and e.stop > a}
            assert len(kinds) == 1, (token, a, b, kinds)  # one seizure, one type
            expected.setdefault(token, []).append(kinds.pop())
    assert {t: k for t, k in types.items() if k} == expected
    n_by_type = {k: sum(ks.count(k) for ks in expected.values()) for k in TYPES}
    assert sum(n_by_type.values()) >= 5 and sum(v > 0 for v in n_by_type.values()) >= 2

    # detect exactly the seizures of the most common type: it alone is hit
    common = max(n_by_type, key=n_by_type.get)
    hyps = {t: [(a, b, SEIZ) for (a, b, _), k in zip(seizures_of(split, t), types[t]) if k == common]
            for t in split.refs}
    per_type = type_sensitivity(split, hyps, types)
    assert UNTYPED not in per_type and set(per_type) == set(TYPES)
    for kind in TYPES:
        assert per_type[kind]['n'] == n_by_type[kind]
        assert per_type[kind]['hits'] == (n_by_type[kind] if kind == common else 0)
    ovlp = score_pairs(split.pairs(hyps), ['ovlp'])['ovlp']
    assert sum(v['n'] for v in per_type.values()) == ovlp['targets']
    assert sum(v['hits'] for v in per_type.values()) == ovlp['hits']


def test_bootstrap_is_fixed_by_its_seed(corpus):
    split = split_recordings(discover(corpus))
    rng = np.random.default_rng(0)
    hyps = {t: [e for e in seizures_of(split, t) if rng.uniform() < 0.6] for t in split.refs}
    hyps = {t: ([(1.0, 5.0, SEIZ)] if rng.uniform() < 0.3 else []) + events for t, events in hyps.items()}
    counts = recording_counts(split.pairs(hyps))
    subjects = [split.subjects[t] for t in split.refs]
    a = bootstrap_ci(subjects, counts, n_resamples=300, seed=7)
    assert a == bootstrap_ci(subjects, counts, n_resamples=300, seed=7)
    assert a != bootstrap_ci(subjects, counts, n_resamples=300, seed=8)
    assert (a['n_resamples'], a['seed'], a['subjects']) == (300, 7, len(set(subjects)))
    scored = both_ways(score_pairs(split.pairs(hyps), CI_SCORERS))  # SzCORE's cumulated and per-subject figures
    assert set(scored) == set(both_ways(a)) - {'auroc', 'seizure_free', 'n_resamples', 'seed', 'level', 'subjects'}
    for name, figures in scored.items():
        for figure in ('sensitivity', 'precision', 'f1', 'seiz_fa_per_24h'):
            ci = both_ways(a)[name][figure]
            assert ci['value'] == pytest.approx(figures[figure]) and ci['low'] <= ci['value'] <= ci['high'], name
    assert a['ovlp']['sensitivity']['low'] < a['ovlp']['sensitivity']['high']  # subjects differ: the interval is wide


def some_detected(split, p_hit: float, p_false: float, seed: int) -> dict:
    "Hypotheses that find each seizure with probability `p_hit` and add a 4-s false alarm with probability `p_false`."
    rng = np.random.default_rng(seed)
    hyps = {t: [e for e in seizures_of(split, t) if rng.uniform() < p_hit] for t in split.refs}
    return {t: ([(1.0, 5.0, SEIZ)] if rng.uniform() < p_false else []) + events for t, events in hyps.items()}


def test_false_alarms_per_hour_on_seizure_free_recordings(corpus):
    split = split_recordings(discover(corpus))
    hyps = some_detected(split, 0.6, 0.5, 0)
    free = [t for t in split.refs if not seizures_of(split, t)]
    assert 0 < len(free) < len(split.refs)
    ci = bootstrap_ci([split.subjects[t] for t in split.refs], recording_counts(split.pairs(hyps)), n_resamples=200)
    hours = sum(split.refs[t].duration for t in free) / 3600
    assert ci['seizure_free'] == dict(recordings=len(free), hours=pytest.approx(hours))
    false_alarms = sum(len(hyps[t]) for t in free)  # on a recording without seizure every event is a false alarm
    assert false_alarms > 0
    assert ci['ovlp'][SEIZURE_FREE_FA]['value'] == pytest.approx(false_alarms / hours)
    assert ci['ovlp'][SEIZURE_FREE_FA]['low'] < ci['ovlp'][SEIZURE_FREE_FA]['high']


def test_paired_bootstrap_of_a_model_against_itself_is_exactly_zero(corpus):
    split = split_recordings(discover(corpus))
    counts = recording_counts(split.pairs(some_detected(split, 0.6, 0.3, 1)))
    subjects = [split.subjects[t] for t in split.refs]
    diff = both_ways(paired_bootstrap(subjects, counts, counts, n_resamples=300, seed=2))
    scorers = [n for n in diff if n not in ('n_resamples', 'seed', 'level', 'subjects')]
    assert len(scorers) == len(CI_SCORERS) + 2  # SzCORE's two both ways
    for name in scorers:
        for figure, d in diff[name].items():
            assert (d['value'], d['low'], d['high']) == (0.0, 0.0, 0.0), (name, figure, d)


def test_paired_bootstrap_finds_a_clearly_better_model(corpus):
    split = split_recordings(discover(corpus))
    subjects = [split.subjects[t] for t in split.refs]
    perfect = recording_counts(split.pairs({t: seizures_of(split, t) for t in split.refs}))
    weaker = recording_counts(split.pairs(some_detected(split, 0.3, 0.5, 3)))
    diff = paired_bootstrap(subjects, perfect, weaker, n_resamples=500, seed=4)
    alone = [bootstrap_ci(subjects, c, n_resamples=500, seed=4)['ovlp']['sensitivity'] for c in (perfect, weaker)]
    sens, fa = diff['ovlp']['sensitivity'], diff['ovlp']['seiz_fa_per_24h']
    assert diff['szcore_event']['per_subject']['f1']['low'] > 0  # the leaderboard's figure too
    assert sens['value'] == pytest.approx(alone[0]['value'] - alone[1]['value'])
    assert 0 < sens['low'] <= sens['value'] <= sens['high']  # the interval of the difference excludes 0
    assert fa['high'] < 0  # the perfect model has no false alarm
    # the same draws for both: the perfect model's sensitivity is 1 in every resample, so the difference's interval is
    # the weaker model's interval mirrored
    assert (sens['low'], sens['high']) == pytest.approx((1 - alone[1]['high'], 1 - alone[1]['low']))
    with pytest.raises(ValueError, match='same'):
        paired_bootstrap(subjects, perfect, {n: c[:-1] for n, c in weaker.items()})


def test_latency_intervals_hold_the_split_s_summary_and_resample_whole_subjects(corpus):
    split = split_recordings(discover(corpus))
    rng = np.random.default_rng(5)  # each seizure found with a delay of -5 to 40 s, or missed
    hyps = {t: [(min(a + rng.uniform(-5, 40), b - 0.5), b, SEIZ) for a, b, _ in seizures_of(split, t)
                if rng.uniform() < 0.8] for t in split.refs}
    rows = onset_latencies(split.pairs(hyps))
    ci = latency_ci(rows, split.subjects, n_resamples=300, seed=1)
    summary = latency_summary(rows)
    assert (ci['seizures'], ci['detected']) == (summary['seizures'], summary['detected']) and 0 < ci['detected']
    for figure in LATENCY_FIGURES:
        assert ci[figure]['value'] == pytest.approx(summary[figure])
        assert ci[figure]['low'] <= ci[figure]['value'] <= ci[figure]['high'], figure
    # one subject's seizures alone: every resample holds only them, so the interval collapses onto the value
    one = next(s for s in split.subjects.values() if any(r['subject'] == s and r['latency_s'] for r in rows))
    mine = [r for r in rows if r['subject'] == one]
    alone = latency_ci(mine, {t: s for t, s in split.subjects.items() if s == one}, n_resamples=50)
    assert alone['median_s']['low'] == alone['median_s']['value'] == alone['median_s']['high']
