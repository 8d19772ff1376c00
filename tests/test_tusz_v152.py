"""Issue #25, TUSZ v1.5.2: a synthetic corpus in v1.5.2's tree and files (`.tse_bi`, `.tse`, `.lbl_bi`) goes
through build-cache, train, evaluate.ipynb and detect; damaged `.tse_bi` files are refused with file and line."""
import json, subprocess, sys
from pathlib import Path

import pytest

import brain_go_brrr.train as T
from brain_go_brrr.cache import ARRAYS, build_cache, open_cache
from brain_go_brrr.cli import main
from brain_go_brrr.synth import synth_tusz
from brain_go_brrr.tusz import AnnotationError, check_splits, check_splits_cli, discover, read_annotation
from conftest import tiny

ROOT = Path(__file__).parent.parent
CORPUS = dict(subjects=6, seed=5, seconds=(60, 120))  # one seizing subject per split, short recordings


@pytest.fixture(scope='module')
def v152(tmp_path_factory):
    "A six-subject synthetic TUSZ v1.5.2 corpus and a cache folder."
    root = tmp_path_factory.mktemp('v152')
    return dict(data_dir=str(synth_tusz(root / 'tusz', layout='v1.5.2', **CORPUS)), cache_dir=str(root / 'cache'))


@pytest.fixture
def damaged(tmp_path):
    "A fresh copy of a small v1.5.2 corpus to damage, and the train recording whose `.tse_bi` holds a seizure."
    root = synth_tusz(tmp_path / 'tusz', layout='v1.5.2', subjects=3, seed=0, seconds=(40, 50))
    f = next(f for f in discover(root, 'train') if 'seiz' in f.annotation.read_text())
    return root, f


def test_discovered_as_v152_with_tse_bi_references(v152):
    files = discover(v152['data_dir'])
    assert files and {f.layout for f in files} == {'v1.5.2'}
    assert all(f.subject.isdigit() and len(f.subject) == 8 and f.path.parent.parent.parent.name == f.subject[:3]
               for f in files)
    for f in files:
        assert f.annotation.suffix == '.tse_bi' and f.type_annotation.suffix == '.tse'
        assert f.path.with_suffix('.lbl_bi').read_text().startswith('version = lbl_v1.0.0\n')
        assert read_annotation(f.annotation).duration == read_annotation(f.type_annotation).duration


def test_the_cache_says_v152_and_holds_the_arrays_of_the_same_corpus_in_v2(v152, tmp_path):
    old = build_cache(v152['data_dir'], tmp_path / 'old', 'train', progress=False)
    v2 = synth_tusz(tmp_path / 'v2', **CORPUS)
    new = build_cache(v2, tmp_path / 'new', 'train', progress=False)
    assert old == new and old['failed'] == 0 and old['full'] + old['partial'] > 0
    configs = {k: open_cache(tmp_path / k).config for k in ('old', 'new')}
    assert (configs['old']['layout'], configs['new']['layout']) == ('v1.5.2', 'v2.0')
    digests = lambda c: sorted(r.arrays[k]['blake2b'] for r in open_cache(tmp_path / c).recordings for k in ARRAYS)
    assert digests('old') == digests('new')


def test_the_seizure_types_come_from_the_tse(v152):
    from brain_go_brrr.metrics import UNTYPED, reference_types, split_recordings
    split = split_recordings(discover(v152['data_dir'], 'dev'))
    assert {Path(p).suffix for p in split.channel_files.values()} == {'.tse'}
    types = [t for ts in reference_types(split).values() for t in ts]
    assert types and UNTYPED not in types, types


def test_train_evaluate_and_detect_on_v152(v152, tmp_path):
    import papermill as pm
    p = tiny(v152, tmp_path / 'run', epochs=1, epoch_size=8)
    T.train(p)
    checkpoint = p.run_dir / 'best.pt'
    assert open_cache(Path(v152['cache_dir']) / 'train').config['layout'] == 'v1.5.2'
    pm.execute_notebook(str(ROOT / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'evaluate.ipynb'), cwd=str(ROOT),
                        parameters=dict(checkpoint=str(checkpoint), data_dir=v152['data_dir'], split='dev',
                                        thresholds=[0.5], n_resamples=10, run_name='evaluate_v152'),
                        progress_bar=False)
    run = checkpoint.parent.parent / 'evaluate_v152'
    metrics = json.loads((run / 'eval_metrics.json').read_text())
    assert metrics, 'evaluate wrote its metrics'
    refs = (run / 'dev' / 'ref.list').read_text().split()
    dev = discover(v152['data_dir'], 'dev')
    assert sorted(Path(r).name for r in refs) == sorted(f.annotation.name for f in dev)  # scored against .tse_bi
    # detect on one v1.5.2 recording: the .tse_bi beside it gives each seizure's onset latency
    f = next(f for f in dev if 'seiz' in f.annotation.read_text())
    r = subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'detect', '--checkpoint', str(checkpoint), str(f.path),
                        '--out', str(tmp_path / 'out'), '--threshold', '0.5', '--no-figures'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    row, = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    n_seizures = sum(e.label == 'seiz' for e in read_annotation(f.annotation).events)
    assert row['onset_latency_s'] is not None and len(row['onset_latency_s']) == n_seizures


# damaged .tse_bi files: refused with file and line, as the .csv_bi of issue 12

def failure(root, cache, f) -> str:
    "The reason the cache build records for `f`."
    build_cache(root, cache, 'train', progress=False)
    return next(e['reason'] for e in open_cache(cache).failures if e['token'] == f.bname)


def test_a_malformed_row_names_file_and_line(damaged, tmp_path):
    root, f = damaged
    lines = f.annotation.read_text().splitlines(keepends=True)
    f.annotation.write_text(''.join(lines[:3]) + lines[3].replace(' ', ',') + ''.join(lines[4:]))
    assert f'{f.annotation}:4: expected 4 fields start stop label confidence' in failure(root, tmp_path / 'c', f)
    f.annotation.write_text(''.join(lines[:3]) + '12.0 x seiz 1.0000\n' + ''.join(lines[4:]))
    with pytest.raises(AnnotationError, match=rf'{f.annotation.name}:4: stop_time must be a finite number'):
        read_annotation(f.annotation)


def test_an_annotation_past_the_end_of_its_recording_is_refused(damaged, tmp_path):
    root, f = damaged
    text = f.annotation.read_text()
    f.annotation.write_text(text + f'{read_annotation(f.annotation).duration:.4f} 900.0000 bckg 1.0000\n')
    n = len(text.splitlines()) + 1
    why = failure(root, tmp_path / 'c', f)
    assert f'{f.annotation}:{n}: annotation ends at 900.00 s, past the end of {f.path.name}' in why, why


def test_an_annotation_cut_short_of_its_recording_is_refused(damaged, tmp_path):
    root, f = damaged
    text = f.annotation.read_text()
    f.annotation.write_text(text.rsplit('\n', 2)[0] + '\n')  # the last row gone, at a row boundary
    why = failure(root, tmp_path / 'c', f)
    assert str(f.annotation) in why and "the last row's stop" in why and 'disagrees' in why, why


@pytest.mark.parametrize('text', ['', '\n \n'])
def test_an_empty_tse_bi_is_refused(damaged, tmp_path, text):
    root, f = damaged
    f.annotation.write_text(text)
    assert f'{f.annotation}: empty file' in failure(root, tmp_path / 'c', f)


def test_a_tse_bi_without_its_version_line_is_refused(damaged, tmp_path):
    root, f = damaged
    f.annotation.write_text(f.annotation.read_text().split('\n', 2)[2])
    assert f"{f.annotation}:1: expected 'version = tse_v1.0.0'" in failure(root, tmp_path / 'c', f)


def test_a_tse_bi_with_no_edf_beside_it_is_refused(damaged, tmp_path, capsys):
    root, f = damaged
    f.path.unlink()
    with pytest.raises(AnnotationError, match='an annotation with no recording beside it'):
        discover(root)
    assert main(['build-cache', '--data-dir', str(root), '--cache-dir', str(tmp_path / 'c')]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f'{f.annotation}: an annotation with no recording' in err, err


def test_a_corpus_mixing_both_layouts_is_refused(damaged, tmp_path):
    root, _ = damaged
    v2 = synth_tusz(tmp_path / 'v2', subjects=3, seed=0, seconds=(40, 50))
    moved = next(Path(v2, 'edf', 'dev').iterdir())
    moved.rename(root / 'edf' / 'dev' / moved.name)
    with pytest.raises(ValueError, match=r'several TUSZ layouts \(v1.5.2: .*; v2.0: '):
        discover(root)


def test_the_split_check_names_the_patients_v152_shares_between_splits(damaged, capsys):
    root, f = damaged
    dev = Path(root, 'edf', 'dev', f.montage, f.subject[:3], f.subject, 's009_2016_01_01')
    dev.mkdir(parents=True)
    for p in f.path.parent.glob(f'{f.bname}.*'): (dev / p.name.replace('_s001_', '_s009_')).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match=rf'{f.subject} in dev\+train\. .*TUSZ v1\.5\.2 as released shares'):
        check_splits(root)
    assert check_splits_cli(['--data-dir', str(root)]) == 1
    out, err = capsys.readouterr()
    assert f'{f.subject}: found in dev, train' in out and 'TUSZ v1.5.2 layout' in err
