"""Post-processing end to end: written hypotheses score as the in-memory threshold sweep says."""
import numpy as np
import pytest

from brain_go_brrr.post import POST_DEFAULTS, post_params_with_defaults, write_csv_bi, write_hypotheses
from brain_go_brrr.scoring import read_csv_bi, score_lists, threshold_sweep

SFREQ = 16.0


def recordings(seed=0, n=4, minutes=10):
    "Probabilities that rise inside reference seizures, plus false-alarm bursts; durations end mid-sample."
    rng = np.random.default_rng(seed)
    probs, refs, durations = {}, {}, {}
    for r in range(n):
        n_samples = int(minutes * 60 * SFREQ)
        p = rng.uniform(0, 0.3, n_samples)
        start = round(float(rng.uniform(30, minutes * 60 - 120)), 4)
        stop = round(start + float(rng.uniform(20, 90)), 4)
        p[int(start * SFREQ):int(stop * SFREQ)] = rng.uniform(0.6, 1.0)
        for burst in rng.uniform(0, minutes * 60 - 20, 3):
            p[int(burst * SFREQ):int((burst + 10) * SFREQ)] = rng.uniform(0.3, 0.9)
        p[-40:] = 0.95  # an event that runs to the very end of the probabilities
        token = f'rec{r}_s001_t000'
        probs[token], refs[token], durations[token] = p, [(start, stop, 'seiz')], n_samples / SFREQ - 0.03
    return probs, refs, durations


def without_totals(figures): return {k: v for k, v in figures.items() if k not in ('total_false_alarms', 'total_fa_per_24h')}


def test_sweep_scores_what_the_written_files_score(tmp_path):
    probs, refs, durations = recordings()
    post = dict(smooth_s=1.0, threshold_on=0.5, threshold_off=0.25, min_duration_s=2.0, merge_gap_s=3.0)
    ref_paths = {t: write_csv_bi(tmp_path / 'ref' / f'{t}.csv_bi', [(a, b, 1.0) for a, b, _ in ev], durations[t])
                 for t, ev in refs.items()}
    sweep = threshold_sweep(probs, refs, durations, SFREQ, post, thresholds=[0.5, 0.75], scorers=('ovlp', 'taes', 'epoch'))
    for row in sweep:
        on = row['threshold']
        ref_list, hyp_list = write_hypotheses(tmp_path / f'run{on}', probs, SFREQ,
                                              {**post, 'threshold_on': on, 'threshold_off': on - 0.25},
                                              durations=durations, ref_paths=ref_paths)
        files = score_lists(ref_list, hyp_list, ('ovlp', 'taes', 'epoch'))
        assert {k: without_totals(files[k]) for k in files} == {k: without_totals(row[k]) for k in files}
        assert {row[k]['total_false_alarms'] for k in files} == {None}  # the sweep does not count bckg false alarms
    assert sweep[0]['ovlp']['hits'] > 0 and sweep[0]['ovlp']['false_alarms'] > 0


def test_events_are_cut_at_the_recording_duration(tmp_path):
    probs, refs, durations = recordings(n=1)
    (token, duration), = durations.items()
    _, hyp_list = write_hypotheses(tmp_path, probs, SFREQ, POST_DEFAULTS, durations=durations)
    hyp = read_csv_bi(tmp_path / 'hyp' / f'{token}.csv_bi')
    assert hyp.duration == round(duration, 4) and hyp.events[-1][1] == round(duration, 4)
    assert hyp.events[-1][2] == 'seiz'  # the event at the end survived, cut at the duration


def test_without_durations_the_probabilities_set_the_duration(tmp_path):
    ref_list, hyp_list = write_hypotheses(tmp_path, {'a': np.zeros(160)}, SFREQ, {})
    assert ref_list is None and hyp_list.read_text() == 'hyp/a.csv_bi\n'
    assert read_csv_bi(tmp_path / 'hyp' / 'a.csv_bi').events == [(0.0, 10.0, 'bckg')]


def test_unknown_or_missing_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown post-processing parameters \\['threshold'\\]"):
        post_params_with_defaults({'threshold': 0.5})
    with pytest.raises(ValueError, match='no reference file'):
        write_hypotheses(tmp_path, {'a': np.zeros(16)}, SFREQ, {}, ref_paths={})
