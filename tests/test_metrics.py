"""Every recording of a split counted (a refused one with an empty hypothesis), seizure types from the per-channel
.csv of a synthetic corpus, and bootstrap intervals that a seed fixes."""
import numpy as np
import pytest

from brain_go_brrr.cache import build_cache, open_cache
from brain_go_brrr.metrics import (CI_SCORERS, TYPES, UNTYPED, bootstrap_ci, recording_counts, reference_types,
                                   split_recordings, type_sensitivity)
from brain_go_brrr.scoring import SEIZ, score_pairs, szcore_as
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
    scored = szcore_as(score_pairs(split.pairs(hyps), CI_SCORERS), 'cumulated')
    for name in CI_SCORERS:
        for figure in ('sensitivity', 'seiz_fa_per_24h'):
            ci = a[name][figure]
            assert ci['value'] == pytest.approx(scored[name][figure]) and ci['low'] <= ci['value'] <= ci['high']
    assert a['ovlp']['sensitivity']['low'] < a['ovlp']['sensitivity']['high']  # subjects differ: the interval is wide
