"""Issue #12, "Nothing silently wrong": annotation files and discovery either read correctly or are refused
with the file and line."""
import os, subprocess, sys
from pathlib import Path

import mne
import pytest

from brain_go_brrr import tusz
from brain_go_brrr.scoring import score_cli
from brain_go_brrr.synth import synth_tusz
from brain_go_brrr.tusz import AnnotationError, discover, read_annotation

BNAME = 'aaaaaasf_s001_t000'
HEADER = f"""# version = csv_v1.0.0
# bname = {BNAME}
# duration = 1289.0000 secs
# montage_file = nedc_eas_default_montage.txt
#
channel,start_time,stop_time,label,confidence
"""
ROWS = 'TERM,0.0000,42.2786,bckg,1.0000\nTERM,42.2786,81.7760,seiz,1.0000\nTERM,81.7760,1289.0000,bckg,1.0000\n'


def write(tmp_path, text, name=BNAME) -> Path:
    p = tmp_path / f'{name}.csv_bi'
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def refused(path, *needles):
    "The AnnotationError `read_annotation(path)` raises; its message must name the file and hold every needle."
    with pytest.raises(AnnotationError) as e: read_annotation(path)
    assert str(path) in str(e.value) and all(n in str(e.value) for n in needles), e.value
    return str(e.value)


# 1. empty, header-only, cut off, duration disagreeing with the EDF, bname of another recording

@pytest.mark.parametrize('text', ['', '\n\n  \n'])
def test_an_empty_file_is_refused_not_read_as_seizure_free(tmp_path, text):
    refused(write(tmp_path, text), 'empty')


def test_a_header_cut_off_before_the_column_line_is_refused(tmp_path):
    refused(write(tmp_path, HEADER.split('channel,')[0]), 'channel,start_time,stop_time,label,confidence')


def test_a_row_cut_off_without_its_newline_is_refused(tmp_path):
    refused(write(tmp_path, HEADER + ROWS[:-4]), f'{BNAME}.csv_bi:9:', 'cut off')


@pytest.mark.parametrize('row', ['TERM,1,2,seiz,nan', 'TERM,1,inf,seiz,1', 'TERM,nan,2,seiz,1'])
def test_a_row_whose_numbers_are_not_finite_is_refused(tmp_path, row):
    refused(write(tmp_path, HEADER + row + '\n'), f'{BNAME}.csv_bi:7:')


def test_a_bname_naming_another_recording_is_refused(tmp_path):
    refused(write(tmp_path, HEADER.replace(f'bname = {BNAME}', 'bname = aaaaaasf_s001_t001') + ROWS),
            f'{BNAME}.csv_bi:2:', 'aaaaaasf_s001_t001')


def test_the_file_must_match_its_recording(tmp_path):
    ann = read_annotation(write(tmp_path, HEADER + ROWS))
    edf = tmp_path / f'{BNAME}.edf'
    tusz.check_annotation_matches(ann, edf, 1289.4)  # within the tolerance
    for n_seconds in (584.0, 1289.0 + 1.5):
        with pytest.raises(AnnotationError, match=rf'csv_bi:3: # duration 1289.0 s disagrees with {edf.name}') as e:
            tusz.check_annotation_matches(ann, edf, n_seconds)
        assert str(ann.path) in str(e.value)
    with pytest.raises(AnnotationError, match=r'csv_bi:2: .*names another recording'):
        tusz.check_annotation_matches(ann, tmp_path / 'aaaaaasf_s001_t001.edf', 1289.0)


def test_header_only_reads_as_nedc_does_but_no_recording_of_the_corpus_has_it(tmp_path):
    ann = read_annotation(write(tmp_path, HEADER))  # NEDC's own inputs: no rows means no event
    assert ann.events == ()
    with pytest.raises(AnnotationError, match=r'csv_bi:6: no rows') as e:
        tusz.check_annotation_matches(ann, tmp_path / f'{BNAME}.edf', 1289.0)
    assert str(ann.path) in str(e.value)


def test_rows_that_stop_before_the_duration_are_refused_against_the_recording(tmp_path):
    ann = read_annotation(write(tmp_path, HEADER + ROWS.rsplit('TERM', 1)[0]))  # cut at a row boundary
    with pytest.raises(AnnotationError, match=r'csv_bi:8: .*81.776.*cut off'):
        tusz.check_annotation_matches(ann, tmp_path / f'{BNAME}.edf', 1289.0)


def test_the_embedded_corpus_passes_every_check(tmp_path):
    files = discover(synth_tusz(tmp_path / 'tusz', subjects=4, seed=0, seconds=(40, 60)))
    assert files
    for f in files:
        raw = mne.io.read_raw(f.path, preload=False, verbose='error')
        for path in (f.csv_bi, f.csv):
            tusz.check_annotation_matches(read_annotation(path), f.path, raw.n_times / raw.info['sfreq'])


# 2. numbers in the header

@pytest.mark.parametrize('value, seconds', [('5.84e2', 584.0), ('1289', 1289.0), ('1.2890E+03', 1289.0)])
def test_duration_reads_in_any_float_notation(tmp_path, value, seconds):
    text = HEADER.replace('1289.0000', value) + 'TERM,0,42,bckg,1\n'
    assert read_annotation(write(tmp_path, text)).duration == seconds


def test_a_duration_that_is_not_a_number_is_refused(tmp_path):
    refused(write(tmp_path, HEADER.replace('1289.0000', 'twenty')), f'{BNAME}.csv_bi:3:', 'twenty')


# 3. encodings

def test_a_utf8_bom_is_read_transparently(tmp_path):
    ann = read_annotation(write(tmp_path, '\ufeff' + HEADER + ROWS))
    assert ann.duration == 1289.0 and len(ann.events) == 3


def test_a_latin1_byte_is_one_error_naming_file_and_line(tmp_path):
    text = (HEADER + ROWS).encode().replace(b'nedc_eas', b'caf\xe9_eas')
    refused(write(tmp_path, text), f'{BNAME}.csv_bi:4:', 'UTF-8')


def _score_pair(tmp_path, ref: bytes, ref_list: bytes = b'r/x.csv_bi\n'):
    "Reference `r/x.csv_bi` and a seizure-free hypothesis `h/x.csv_bi`, with their lists."
    for d in ('r', 'h'): (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / 'r' / 'x.csv_bi').write_bytes(ref)
    (tmp_path / 'h' / 'x.csv_bi').write_text(HEADER.replace(BNAME, 'x') + 'TERM,0,1289,bckg,1\n')
    (tmp_path / 'ref.list').write_bytes(ref_list)
    (tmp_path / 'hyp.list').write_text('h/x.csv_bi\n')


def test_score_cli_prints_one_line_for_a_latin1_reference(tmp_path):
    _score_pair(tmp_path, (HEADER.replace(BNAME, 'x') + ROWS).encode().replace(b'nedc_eas', b'caf\xe9'))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'brain_go_brrr', 'score', tmp_path / 'ref.list', tmp_path / 'hyp.list']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1 and 'r/x.csv_bi:4:' in proc.stderr, proc.stderr


def test_score_reads_lists_with_a_bom_and_refuses_latin1_lists_in_one_line(tmp_path, capsys):
    ref = (HEADER.replace(BNAME, 'x') + ROWS).encode()
    _score_pair(tmp_path, ref, '\ufeffr/x.csv_bi\n'.encode())
    assert score_cli([str(tmp_path / 'ref.list'), str(tmp_path / 'hyp.list')]) == 0
    _score_pair(tmp_path, ref, b'# r\xe9f\nr/x.csv_bi\n')
    capsys.readouterr()
    assert score_cli([str(tmp_path / 'ref.list'), str(tmp_path / 'hyp.list')]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'ref.list:1:' in err, err


# 4. discovery

def _touch(root, rel):
    p = Path(root) / 'edf' / rel
    p.parent.mkdir(parents=True, exist_ok=True); p.touch()
    return p


def test_bdf_and_upper_case_recordings_are_discovered(tmp_path):
    names = ['aaaaaaaa_s001_t000.edf', 'aaaaaaaa_s001_t001.EDF', 'aaaaaaaa_s001_t002.bdf', 'aaaaaaaa_s001_t003.BDF']
    for n in names: _touch(tmp_path, f'train/aaaaaaaa/s001_2003/01_tcp_ar/{n}')
    _touch(tmp_path, 'train/aaaaaaaa/s001_2003/01_tcp_ar/aaaaaaaa_s001_t000.csv_bi')
    files = discover(tmp_path, 'train')
    assert [f.path.name for f in files] == names
    assert [f.token for f in files] == ['t000', 't001', 't002', 't003']
    assert {f.subject for f in files} == {'aaaaaaaa'} and {f.montage for f in files} == {'01_tcp_ar'}
    assert [f.csv_bi.name for f in files] == [f'aaaaaaaa_s001_t00{k}.csv_bi' for k in range(4)]


def test_two_recordings_sharing_one_annotation_are_refused(tmp_path):
    for n in ('aaaaaaaa_s001_t000.edf', 'aaaaaaaa_s001_t000.bdf'):
        _touch(tmp_path, f'train/aaaaaaaa/s001_2003/01_tcp_ar/{n}')
    with pytest.raises(ValueError, match=r'aaaaaaaa_s001_t000\.bdf.*aaaaaaaa_s001_t000\.edf'):
        discover(tmp_path)


# issue #26: classic Mac line endings are line endings
def test_cr_only_line_endings_are_read(tmp_path):
    from brain_go_brrr.tusz import read_annotation
    text = ('# version = csv_v1.0.0\n# bname = x\n# duration = 60.0000 secs\n#\n'
            'channel,start_time,stop_time,label,confidence\nTERM,0.0000,60.0000,bckg,1.0000\n')
    (tmp_path / 'lf').mkdir(), (tmp_path / 'cr').mkdir()
    (tmp_path / 'lf' / 'x.csv_bi').write_text(text)
    (tmp_path / 'cr' / 'x.csv_bi').write_bytes(text.replace('\n', '\r').encode())
    lf, cr = read_annotation(tmp_path / 'lf' / 'x.csv_bi'), read_annotation(tmp_path / 'cr' / 'x.csv_bi')
    assert cr.events == lf.events and cr.duration == 60.0
