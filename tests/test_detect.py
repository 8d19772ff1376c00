"detect: any recording without annotations, one unusable file never stops the others, memory independent of length."
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

import brain_go_brrr.train as T
from brain_go_brrr.signal import CHANNELS, TCP_PAIRS
from brain_go_brrr.synth import write_edf
from conftest import tiny
from test_machine_integrity import read_only, run_limited, run_without_override  # noqa: F401 (a fixture)

THIRD_PARTY = Path(__file__).parent / 'data' / 'third_party'


@pytest.fixture(scope='module')
def checkpoint(corpus, tmp_path_factory):
    "best.pt of the tiny detector trained on the shared synthetic corpus."
    p = tiny(corpus, tmp_path_factory.mktemp('run'))
    T.train(p)
    return p.run_dir / 'best.pt'


def detect(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'detect', *map(str, args)],
                          capture_output=True, text=True, timeout=900)


def eeg(path, sfreq, seconds, labels=None, seed=0):
    "A recording without annotations: noise with a 3-Hz rhythm in its middle third."
    labels = labels or [f'EEG {c}-REF' for c in CHANNELS]
    rng = np.random.default_rng(seed)
    n = int(sfreq * seconds)
    x = rng.normal(0, 20, (len(labels), n))
    a, b = n // 3, 2 * n // 3
    x[:, a:b] += 120 * np.sin(2 * np.pi * 3 * np.arange(b - a) / sfreq)
    return write_edf(path, dict(zip(labels, x)), sfreq)


def test_recordings_without_annotations_at_any_rate_and_length(checkpoint, tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for sfreq in (250, 256, 512):
        eeg(inputs / f'r{sfreq}_20s.edf', sfreq, 20)
    eeg(inputs / 'sub' / 'r256_10min.edf', 256, 600)
    r = detect('--checkpoint', checkpoint, inputs, '--out', tmp_path / 'out', '--operating-point', 10)
    assert r.returncode == 0, r.stderr
    assert '4 of 4 recordings' in r.stdout and str(tmp_path / 'out') in r.stdout
    point = json.loads((tmp_path / 'out' / 'operating_point.json').read_text())
    assert point['source'].startswith('chosen on dev for 10 FA/24h') and 0 < point['threshold'] < 1
    for stem, seconds in [('r250_20s', 20), ('r256_20s', 20), ('r512_20s', 20), ('sub/r256_10min', 600)]:
        out = tmp_path / 'out' / stem
        probs = np.load(out.with_name(out.name + '.probs.npy'))
        assert probs.shape == (-(-seconds * 256 // 16),) and np.isfinite(probs).all()
        for ext in ('.csv_bi', '.tsv', '.png', '.review.pdf'):
            assert out.with_name(out.name + ext).stat().st_size > 0, ext


def test_the_tsv_is_what_szcore_reads_and_holds_the_csv_bi_events(checkpoint, tmp_path):
    from epilepsy2bids.annotations import Annotations
    from timescoring.annotations import Annotation
    from brain_go_brrr.scoring import read_csv_bi
    eeg(tmp_path / 'a.edf', 256, 600)
    r = detect('--checkpoint', checkpoint, tmp_path / 'a.edf', '--out', tmp_path / 'out', '--threshold', 0.3,
               '--no-figures')
    assert r.returncode == 0, r.stderr
    tsv = Annotations.loadTsv(str(tmp_path / 'out' / 'a.tsv'))
    assert all(e['recordingDuration'] == 600 for e in tsv.events)
    csv_events = [(a, b) for a, b, label in read_csv_bi(tmp_path / 'out' / 'a.csv_bi').events if label == 'seiz']
    assert csv_events, 'a threshold of 0.3 on a 3-Hz rhythm of 200 s finds something'
    assert np.allclose(tsv.getEvents(), csv_events, atol=0.01)
    mask = Annotation(tsv.getEvents(), 256, 600 * 256)  # what SzCORE's scorer builds from the file
    assert mask.mask.sum() == pytest.approx(sum(b - a for a, b in csv_events) * 256, abs=2 * 256 * len(csv_events))


def test_unusable_files_are_named_and_the_others_go_on(checkpoint, tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    eeg(inputs / 'good.edf', 256, 20)
    eeg(inputs / 'bipolar.edf', 256, 20, labels=[f'EEG {a}-{b}' for a, b in TCP_PAIRS])
    (inputs / 'empty.edf').write_bytes(b'')
    (inputs / 'edf').mkdir()
    for f in THIRD_PARTY.glob('*.*df'):  # mne_test.edf beside mne_test.bdf would write the same files
        shutil.copy(f, inputs / 'edf' if f.suffix == '.edf' else inputs)
    r = detect('--checkpoint', checkpoint, inputs, '--out', tmp_path / 'out', '--no-figures')
    assert r.returncode == 1
    rows = {row['recording']: row['status'] for row in json.loads((tmp_path / 'out' / 'detections.json').read_text())}
    assert rows['good'] == 'ok'
    assert rows['mne_test'] == 'ok'  # MNE's BDF of the 19 10-20 channels, 1 s long: padded to a window
    assert 'bipolar pairs' in rows['bipolar'] and str(inputs / 'bipolar.edf') in rows['bipolar']
    assert 'empty.edf' in rows['empty'] and 'not an EDF file' in rows['empty']
    assert 'missing channel' in rows['edf/pyedflib_test_utf8'] and 'missing channel' in rows['edf/mne_test']
    assert len(rows) == 3 + len(list(THIRD_PARTY.glob('*.*df')))
    assert 'FAILED' in r.stdout and 'recording(s) failed' in r.stderr


def test_two_recordings_that_would_write_the_same_files_are_refused_before_any_work(checkpoint, tmp_path):
    for d in ('a', 'b'):
        (tmp_path / d).mkdir()
        eeg(tmp_path / d / 'x.edf', 256, 20)
    r = detect('--checkpoint', checkpoint, tmp_path / 'a' / 'x.edf', tmp_path / 'b' / 'x.edf', '--out', tmp_path / 'o')
    assert r.returncode == 1 and 'would write x.*' in r.stderr and not (tmp_path / 'o').exists()


# --- issue 26: the machine fails, not the recording -----------------------------------------------------------

def test_a_read_only_output_folder_is_refused_before_any_recording_is_read(checkpoint, tmp_path, read_only):
    eeg(tmp_path / 'x.edf', 256, 20)
    read_only.chmod(0o555)
    r = run_without_override('detect', '--checkpoint', checkpoint, tmp_path / 'x.edf', '--out', read_only / 'out')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f'detect: {read_only / "out"}: cannot write (Permission denied); you '
                                                 'may not write there: choose a folder you can write to, or change its '
                                                 'permissions'), r.stderr
    assert 'recordings' not in r.stdout  # no summary: nothing was detected


def test_a_full_disk_while_writing_detect_outputs_names_the_file_and_leaves_nothing_half_written(checkpoint,
                                                                                                  tmp_path):
    "The PNG of a recording does not fit: the run stops naming it; every file left is whole, none is temporary."
    for name in ('a', 'b'): eeg(tmp_path / 'in' / f'{name}.edf', 256, 20)
    r = run_limited(5_000, 'detect', '--checkpoint', checkpoint, tmp_path / 'in', '--out', tmp_path / 'out')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f'detect: {tmp_path / "out" / "a.png"}: cannot write') and 'free space' in line, r.stderr
    left = sorted(f.name for f in (tmp_path / 'out').iterdir())
    assert left == ['a.csv_bi', 'a.probs.npy', 'a.tsv', 'operating_point.json'], left  # stopped at a.png: b not begun
    assert np.load(tmp_path / 'out' / 'a.probs.npy').shape == (20 * 256 // 16,)


def test_a_bare_state_dict_or_weights_of_another_size_are_one_line_naming_the_file(checkpoint, tmp_path):
    import torch
    from brain_go_brrr.checkpoints import load_checkpoint, save_checkpoint
    from brain_go_brrr.detect import load_detector
    from brain_go_brrr.model import build_detector
    eeg(tmp_path / 'x.edf', 256, 20)
    torch.save(load_detector(checkpoint).model.state_dict(), tmp_path / 'bare.pt')  # the usual way to save a model
    r = detect('--checkpoint', tmp_path / 'bare.pt', tmp_path / 'x.edf', '--out', tmp_path / 'o')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert f'detect: {tmp_path / "bare.pt"}: not a detector checkpoint' in r.stderr and 'best.pt' in r.stderr
    ck = load_checkpoint(checkpoint)  # what train wrote, its weights swapped for a wider model's
    ck['model'] = build_detector(load_detector(checkpoint).params.model.model_copy(update=dict(tcn_channels=32))
                                 ).state_dict()
    save_checkpoint(tmp_path / 'wider.pt', ck)
    r = detect('--checkpoint', tmp_path / 'wider.pt', tmp_path / 'x.edf', '--out', tmp_path / 'o')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f'detect: {tmp_path / "wider.pt"}: its weights do not fit the model its params describe ('
                           ) and ' in the file, ' in line and 'train again' in line, line


def test_evaluate_refuses_an_output_folder_it_cannot_write_before_any_cache(checkpoint, tmp_path):
    import papermill as pm
    root = Path(__file__).parent.parent
    (tmp_path / 'taken').write_text('')  # a file where the output folder should be
    with pytest.raises(pm.PapermillExecutionError, match=r'taken/evaluate: cannot write .*a folder in the path is a '
                                                         'file') as stopped:
        pm.execute_notebook(str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(root),
                            parameters=dict(checkpoint=str(checkpoint), output_dir=str(tmp_path / 'taken')),
                            progress_bar=False)
    assert 'build_cache(' not in stopped.value.source


# glibc's moving mmap threshold keeps freed blocks resident at random; a fixed one makes peak memory repeatable
STEADY_MALLOC = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(1 << 16)}
MEASURE = ("import resource, sys\nfrom brain_go_brrr.cli import main\nrc = main(sys.argv[1:])\n"
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def write_long_edf(path, hours: float, sfreq: int = 256):
    "An EDF of `hours` written record by record, so the test itself never holds the recording."
    labels, n_records = [f'EEG {c}-REF' for c in CHANNELS], int(hours * 3600)
    head = (f'{"0":<8}{"x":<80}{"x":<80}{"01.01.20":<8}{"00.00.00":<8}{256 * (len(labels) + 1):<8}{"":<44}'
            f'{n_records:<8}{"1":<8}{len(labels):<4}')
    fields = [(f'{l:<16}' for l in labels), ('' .ljust(80) for _ in labels), ('uV'.ljust(8) for _ in labels),
              ('-3276.8'.ljust(8) for _ in labels), ('3276.7'.ljust(8) for _ in labels),
              ('-32768'.ljust(8) for _ in labels), ('32767'.ljust(8) for _ in labels), (''.ljust(80) for _ in labels),
              (str(sfreq).ljust(8) for _ in labels), (''.ljust(32) for _ in labels)]
    rng = np.random.default_rng(0)
    with open(path, 'wb') as f:
        f.write((head + ''.join(''.join(g) for g in fields)).encode('ascii'))
        block = rng.normal(0, 200, (600, len(labels), sfreq)).astype('<i2')  # 20 µV in units of 0.1 µV
        for start in range(0, n_records, 600):
            f.write(block[:min(600, n_records - start)].tobytes())
    return path


def test_peak_memory_does_not_grow_with_the_recordings_length(checkpoint, tmp_path):
    peaks = {}
    for hours in (0.25, 2):  # 2 h of float32 samples held whole would be 140 MB, twice the 10% allowed
        edf = write_long_edf(tmp_path / f'h{hours}.edf', hours)
        r = subprocess.run([sys.executable, '-c', MEASURE, 'detect', '--checkpoint', str(checkpoint), str(edf),
                            '--out', str(tmp_path / 'out'), '--no-figures', '--batch-size', '16'],
                           capture_output=True, text=True, timeout=1800, env=STEADY_MALLOC)
        assert r.returncode == 0, r.stderr
        assert f'({hours:.2f} h of EEG)' in r.stdout
        peaks[hours] = int(r.stdout.split('MAXRSS_KB')[1].split()[0])
        edf.unlink()
    print(f'peak RSS of detect: {peaks[0.25] / 1024:.0f} MiB for 0.25 h, {peaks[2] / 1024:.0f} MiB for 2 h')  # pytest -s
    assert peaks[2] < 1.10 * peaks[0.25], peaks


def test_detect_gives_the_events_evaluate_gives(checkpoint, corpus, tmp_path):
    "The same recordings through detect (EDF, read in blocks) and evaluate (the cache): the same hypothesis files."
    import papermill as pm
    from brain_go_brrr.scoring import read_csv_bi
    root = Path(__file__).parent.parent
    pm.execute_notebook(str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(root),
                        parameters=dict(checkpoint=str(checkpoint), split='dev', thresholds=[0.5], n_resamples=10,
                                        run_name='evaluate_dev'), progress_bar=False)
    hyp = checkpoint.parent.parent / 'evaluate_dev' / 'dev' / 'hyp'
    evaluated = {f.stem: read_csv_bi(f).events for f in hyp.glob('*.csv_bi')}
    r = detect('--checkpoint', checkpoint, Path(corpus['data_dir']) / 'edf' / 'dev', '--out', tmp_path / 'out',
               '--threshold', 0.5, '--no-figures')
    assert r.returncode == 0, r.stderr
    detected = {f.stem: read_csv_bi(f).events for f in (tmp_path / 'out').rglob('*.csv_bi')}
    assert evaluated and detected == evaluated
    assert any(detected.values()), 'some dev recording has an event at threshold 0.5'
    # a reference beside each EDF (TUSZ's layout): detections.json holds each seizure's onset latency
    from brain_go_brrr.scoring import Annotation, onset_latencies
    rows = {Path(r['recording']).name: r for r in json.loads((tmp_path / 'out' / 'detections.json').read_text())}
    for ref_path in (Path(corpus['data_dir']) / 'edf' / 'dev').rglob('*.csv_bi'):
        ref = read_csv_bi(ref_path)
        expected = onset_latencies([(ref, Annotation(evaluated[ref.bname], ref.duration, ref.bname))])
        assert rows[ref.bname]['onset_latency_s'] == [r['latency_s'] for r in expected], ref.bname
    assert any(r['onset_latency_s'] for r in rows.values()), 'some dev recording has a seizure'


def test_evaluate_compared_with_itself_differs_by_exactly_zero(checkpoint, tmp_path):
    "`evaluate -p compare_with` on the same checkpoint: every paired difference and its interval are 0."
    import papermill as pm
    root = Path(__file__).parent.parent
    pm.execute_notebook(str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(root),
                        parameters=dict(checkpoint=str(checkpoint), compare_with=str(checkpoint), split='dev',
                                        n_resamples=20, run_name='evaluate_self'), progress_bar=False)
    result = json.loads((checkpoint.parent.parent / 'evaluate_self' / 'eval_metrics.json').read_text())
    difference = result['compare_with']['difference']
    figures = [difference['auroc']] + [f for name in ('ovlp', 'taes') for f in difference[name].values()] + [
        f for name in ('szcore_event', 'szcore_sample') for way in difference[name].values() for f in way.values()]
    assert len(figures) == 1 + 2 * 5 + 2 * (5 + 4)
    assert all(f['value'] in (0.0, None) and f['low'] in (0.0, None) and f['high'] in (0.0, None) for f in figures)
    assert difference['ovlp']['sensitivity'] == dict(value=0.0, low=0.0, high=0.0)
