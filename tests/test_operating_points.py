"""Operating points that cannot be degenerate: the incident of a model that flags whole seizure recordings (picked as
sensitivity 1.00 at 0 FA/24h with a dev AUROC of 0.47) replayed, and "not reached" said as such."""
import numpy as np
import pytest

from brain_go_brrr.scoring import (FA_TARGETS, THRESHOLDS, pick_operating_points, sample_auc, sens_at_fa,
                                   threshold_sweep)

SFREQ = 1.0
POST = dict(smooth_s=4.0, threshold_on=0.5, threshold_off=0.4, min_duration_s=5.0, merge_gap_s=10.0)
HOUR = 3600


def split(n_seizure=4, n_free=4):
    "One-hour recordings: the first `n_seizure` with two one-minute seizures, the others without."
    refs = {f'aaaaaaa{k}_s001_t000': ([(600.0, 660.0, 'seiz'), (2400.0, 2460.0, 'seiz')] if k < n_seizure else [])
            for k in range(n_seizure + n_free)}
    return refs, {t: float(HOUR) for t in refs}


def inside(events):
    "A sample mask of the seizures of one recording."
    mask = np.zeros(int(HOUR * SFREQ), bool)
    for a, b, _ in events: mask[int(a * SFREQ):int(b * SFREQ)] = True
    return mask


def degenerate_pick(sweep, target, scorer='ovlp'):
    "The picker before the flag limit: the highest sensitivity within the target, whatever the threshold flags."
    within = [row for row in sweep if row[scorer]['seiz_fa_per_24h'] <= target]
    return max(within, key=lambda row: (row[scorer]['sensitivity'], row['threshold']))[scorer]


def test_flagging_every_seizure_recording_whole_reaches_no_budget():
    refs, durations = split()
    probs = {t: np.full(HOUR, 1.0 if events else 0.0) for t, events in refs.items()}
    sweep = threshold_sweep(probs, refs, durations, SFREQ, POST)
    assert {(row['ovlp']['sensitivity'], row['ovlp']['seiz_fa_per_24h']) for row in sweep} == {(1.0, 0.0)}
    points = pick_operating_points(sweep)
    for target in FA_TARGETS:
        for p in points[f'{target:g}'].values():
            assert p['reached'] is False and p['threshold'] is None and p['sensitivity'] is None
        ovlp = points[f'{target:g}']['ovlp']  # every threshold within the budget (TAES counts false alarms here)
        assert ovlp['refused'] == len(THRESHOLDS) and ovlp['flag_limit_s'] < 4 * HOUR


def test_a_model_worse_than_chance_no_longer_buys_sensitivity_one_at_zero_false_alarms():
    "Whole seizure recordings high (seizures a little lower than their background), seizure-free ones low."
    refs, durations = split(n_seizure=8, n_free=7)
    probs = {t: np.where(inside(events), 0.85, 0.9) if events else np.full(HOUR, 0.1) for t, events in refs.items()}
    auroc = sample_auc(probs, refs, SFREQ)['auroc']
    assert 0.45 < auroc < 0.5, auroc
    sweep = threshold_sweep(probs, refs, durations, SFREQ, POST)
    before = degenerate_pick(sweep, 10)
    assert (before['sensitivity'], before['seiz_fa_per_24h']) == (1.0, 0.0)  # the incident, as it was picked
    for per in pick_operating_points(sweep).values():
        p = per['ovlp']
        assert p['sensitivity'] != 1.0
        assert not p['reached'] or p['flagged_s'] <= p['flag_limit_s']


def test_a_detector_that_follows_the_seizures_reaches_every_budget():
    refs, durations = split()
    probs = {t: np.where(inside(events), 0.95, 0.05) for t, events in refs.items()}
    points = sens_at_fa(probs, refs, durations, SFREQ, POST)
    for per in points.values():
        assert per['ovlp']['reached'] and per['ovlp']['sensitivity'] == 1.0 and per['ovlp']['seiz_fa_per_24h'] == 0
        assert per['ovlp']['flagged_s'] <= per['ovlp']['flag_limit_s']


def test_the_grid_near_one_finds_a_detector_confident_everywhere():
    "Seizures at 0.9997, background at 0.9992: only thresholds above 0.9992 separate them."
    refs, durations = split()
    probs = {t: np.where(inside(events), 0.9997, 0.9992) for t, events in refs.items()}
    point = sens_at_fa(probs, refs, durations, SFREQ, dict(POST, threshold_off=POST['threshold_on']))['1']['ovlp']
    assert point['reached'] and point['threshold'] == pytest.approx(0.9995) and point['sensitivity'] == 1.0
