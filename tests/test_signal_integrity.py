"""Issue #12, EDF to array: units, format by header, EDF+D, the reference of a channel, duplicate labels;
issue #17: the 23 channels of the official EEGPT TUAB fine-tune."""
import logging, shutil
from pathlib import Path
import mne
import numpy as np
import pytest

from brain_go_brrr.signal import CHANNELS, TUAB23_CHANNELS, SignalError, channel_names, read_eeg

THIRD_PARTY = Path(__file__).parent / 'data' / 'third_party'  # origins and licences: README.md there


def write_edf(path, labels=None, sfreq=250.0, seconds=4, seed=0) -> Path:
    "An EDF written by MNE (physical dimension uV), one random signal per label."
    labels = labels or [f'EEG {c}-REF' for c in CHANNELS] + ['EEG EKG1-REF']
    data = np.random.default_rng(seed).normal(0, 20e-6, (len(labels), int(sfreq * seconds)))
    mne.export.export_raw(path, mne.io.RawArray(data, mne.create_info(labels, sfreq, 'eeg'), verbose='error'),
                          fmt='edf', overwrite=True, verbose='error')
    return Path(path)


def patch_signal_field(path, offset: int, width: int, values: dict) -> Path:
    "Overwrite a per-signal header field (`offset` in units of ns: 0 label, 96 physical dimension) of signal i."
    b = bytearray(Path(path).read_bytes()); ns = int(b[252:256])
    for i, v in values.items():
        start = 256 + ns * offset + i * width
        b[start:start + width] = v.ljust(width)
    Path(path).write_bytes(bytes(b))
    return Path(path)


def set_units(path, unit: bytes) -> Path:
    "Every EEG channel's physical dimension set to `unit` (the EDF Annotations channel is left alone)."
    return patch_signal_field(path, 96, 8, {i: unit for i in range(len(CHANNELS) + 1)})


# 1. Units: MNE takes any physical dimension but V, mV, uV and latin-1 µV for volts.
SPELLINGS = [(b'V', 1.0), (b'mV', 1e-3), (b'uV', 1e-6), (b'uv', 1e-6), (b'UV', 1e-6), (b'microV', 1e-6),
             ('\u00b5V'.encode('utf-8'), 1e-6), ('\u00b5V'.encode('latin-1'), 1e-6), ('\u03bcV'.encode('utf-8'), 1e-6),
             (b'nV', 1e-9)]


@pytest.mark.parametrize('unit,volts', SPELLINGS, ids=[repr(u) for u, _ in SPELLINGS])
def test_physical_dimension_spellings_give_the_right_scale(tmp_path, unit, volts):
    x_uv = read_eeg(write_edf(tmp_path / 'uv.edf'))[0]
    x = read_eeg(set_units(write_edf(tmp_path / 'x.edf'), unit))[0]
    np.testing.assert_allclose(x, x_uv * (volts / 1e-6), rtol=1e-5)


@pytest.mark.parametrize('unit', [b'', b'mmHg'])
def test_blank_or_unknown_unit_is_refused_until_stated(tmp_path, unit):
    edf = set_units(write_edf(tmp_path / 'blank.edf'), unit)
    with pytest.raises(SignalError) as e: read_eeg(edf)
    assert 'blank.edf' in str(e.value) and 'EEG FP1-REF' in str(e.value) and "unit='uV'" in str(e.value)
    np.testing.assert_allclose(read_eeg(edf, unit='uV')[0], read_eeg(write_edf(tmp_path / 'uv.edf'))[0])


def test_stated_unit_overrides_the_header(tmp_path):
    wrong = set_units(write_edf(tmp_path / 'wrong.edf'), b'V')  # values are µV, the header says V
    np.testing.assert_allclose(read_eeg(wrong, unit='uV')[0], read_eeg(write_edf(tmp_path / 'uv.edf'))[0])


# 2. The format is told by the header, not the extension.
def test_bdf_named_edf_is_read_as_bdf(tmp_path):
    bdf, misnamed = tmp_path / 'rec.bdf', tmp_path / 'rec.edf'
    shutil.copy(THIRD_PARTY / 'mne_test.bdf', bdf); shutil.copy(THIRD_PARTY / 'mne_test.bdf', misnamed)
    x, sfreq, _ = read_eeg(bdf)
    y, sfreq_y, _ = read_eeg(misnamed)
    assert sfreq == sfreq_y == 2048 and x.shape == (19, 2048)
    np.testing.assert_array_equal(y, x)


def test_edf_named_bdf_is_read_as_edf(tmp_path):
    edf = write_edf(tmp_path / 'rec.edf')
    misnamed = tmp_path / 'rec.bdf'; shutil.copy(edf, misnamed)
    np.testing.assert_array_equal(read_eeg(misnamed)[0], read_eeg(edf)[0])


# 3. EDF+D / BDF+D: never joined across a gap.
def test_discontinuous_edf_is_refused(tmp_path):
    edf = write_edf(tmp_path / 'gap.edf')
    b = bytearray(edf.read_bytes()); assert b[192:197] == b'EDF+C'
    b[192:197] = b'EDF+D'; edf.write_bytes(bytes(b))
    with pytest.raises(SignalError, match=r'gap\.edf: EDF\+D \(discontinuous\).*EDF\+C'): read_eeg(edf)


def test_discontinuous_bdf_is_refused(tmp_path):
    bdf = tmp_path / 'gap.bdf'; shutil.copy(THIRD_PARTY / 'mne_test.bdf', bdf)
    b = bytearray(bdf.read_bytes()); b[192:236] = b'BDF+D'.ljust(44); bdf.write_bytes(bytes(b))
    with pytest.raises(SignalError, match=r'gap\.bdf: BDF\+D \(discontinuous\)'): read_eeg(bdf)


# 4. One electrode under two references: take the montage's reference, and say so.
@pytest.mark.parametrize('ref,other', [('REF', 'A2'), ('LE', 'REF')])
def test_channel_referenced_like_the_others_is_taken(tmp_path, caplog, ref, other):
    labels = [f'EEG T4-{other}'] + [f'EEG {c}-{ref}' for c in CHANNELS]  # the other reference comes first
    edf = write_edf(tmp_path / 'two_refs.edf', labels)
    with caplog.at_level(logging.WARNING, logger='brain_go_brrr'): x = read_eeg(edf)[0]
    want = mne.io.read_raw_edf(edf, verbose='error').get_data(picks=[f'EEG T4-{ref}'])[0] * 1e6
    np.testing.assert_allclose(x[CHANNELS.index('T4')], want, rtol=1e-5)
    assert f'took EEG T4-{ref}' in caplog.text and 'two_refs.edf' in caplog.text


# 5. Duplicate labels are named as such.
def test_duplicate_label_is_named(tmp_path):
    edf = write_edf(tmp_path / 'dup.edf', [f'EEG {c}-REF' for c in CHANNELS] + ['EEG XXX-REF'])
    patch_signal_field(edf, 0, 16, {len(CHANNELS): b'EEG FP1-REF'})
    with pytest.raises(SignalError) as e: read_eeg(edf)
    assert 'dup.edf: duplicate label FP1' in str(e.value) and 'missing' not in str(e.value)


def test_real_files_headers_are_read_as_written():
    from brain_go_brrr.signal import _pick_canonical, read_edf_header, volts_per_unit
    dup = read_edf_header(THIRD_PARTY / 'mne_duplicate_channel_labels.edf')  # MNE renames these EEG F1-Ref-0/-1
    assert dup['format'] == 'EDF' and dup['reserved'] == 'EDF+C'
    assert dup['labels'] == ['EEG F1-Ref', 'EEG F2-Ref', 'EEG F1-Ref', 'EDF Annotations']
    with pytest.raises(SignalError, match='duplicate label F1'): _pick_canonical(dup['labels'][:3], ['F1', 'F2'], 'x')
    assert [volts_per_unit(u) for u in read_edf_header(THIRD_PARTY / 'mne_test_uneven_samp.edf')['units']] == [1, 1e-6]
    assert read_edf_header(THIRD_PARTY / 'mne_test.bdf')['format'] == 'BDF'


# 6. The official EEGPT TUAB inputs: the 19, the ears and T1/T2, in the authors' order, µV, whatever the reference.
@pytest.mark.parametrize('ref', ['REF', 'LE'])
def test_tuab23_reads_the_official_inputs_in_their_order(tmp_path, ref):
    labels = [f'EEG {c}-{ref}' for c in reversed(TUAB23_CHANNELS)] + [f'EEG EKG1-{ref}', 'PHOTIC PH']
    edf = write_edf(tmp_path / 'tuab23.edf', labels)
    x, sfreq, names = read_eeg(edf, 'tuab23')
    assert names == channel_names('tuab23') == ['FP1', 'FP2', 'F3', 'F4', 'C3', 'C4', 'P3', 'P4', 'O1', 'O2', 'F7',
                                                'F8', 'T3', 'T4', 'T5', 'T6', 'A1', 'A2', 'FZ', 'CZ', 'PZ', 'T1', 'T2']
    raw = mne.io.read_raw_edf(edf, verbose='error')
    np.testing.assert_allclose(x, raw.get_data(picks=[f'EEG {c}-{ref}' for c in names]) * 1e6, rtol=1e-5)
    np.testing.assert_array_equal(x[[names.index(c) for c in CHANNELS]], read_eeg(edf)[0])  # the 19 as before


@pytest.mark.parametrize('drop,missing', [(('T1', 'T2'), 'T1, T2'), (('A2',), 'A2')])
def test_tuab23_without_an_input_is_refused_naming_it(tmp_path, drop, missing):
    edf = write_edf(tmp_path / 'short.edf', [f'EEG {c}-REF' for c in TUAB23_CHANNELS if c not in drop])
    with pytest.raises(SignalError, match=rf'short\.edf: missing channel\(s\) {missing} ') as e:
        read_eeg(edf, 'tuab23')
    assert "montage='referential' reads the 19 alone" in str(e.value)
    assert read_eeg(edf)[0].shape[0] == 19  # the 10-20 channels are still there


# issue #26: the edges of the format
def _record_bytes(path) -> int:
    from brain_go_brrr.signal import read_edf_header
    return sum(read_edf_header(path)['samples']) * 2


def test_whole_records_past_the_declared_count_are_refused(tmp_path):
    edf = write_edf(tmp_path / 'long.edf')  # 4 records of 1 s
    with open(edf, 'ab') as f: f.write(np.random.default_rng(1).integers(0, 256, 2 * _record_bytes(edf), np.uint8))
    with pytest.raises(SignalError, match=r'declares 4 data records .* 2 more records'):
        read_eeg(edf)


def test_a_partial_record_past_the_end_is_ignored_with_a_warning(tmp_path, caplog):
    edf = write_edf(tmp_path / 'tail.edf')
    with open(edf, 'ab') as f: f.write(b'\x00' * 100)
    with caplog.at_level(logging.WARNING, logger='brain_go_brrr'):
        data, sfreq, _ = read_eeg(edf)
    assert data.shape[1] == 4 * 250 and '100 bytes after the last data record ignored' in caplog.text


@pytest.mark.parametrize('offset,what', [(112, 'physical'), (128, 'digital')])
def test_a_degenerate_range_is_named_as_such_not_flat(tmp_path, offset, what):
    edf = write_edf(tmp_path / 'range.edf')
    b = edf.read_bytes(); ns = int(b[252:256]); low = b[256 + ns * (offset - 8):256 + ns * (offset - 8) + 8]
    patch_signal_field(edf, offset, 8, {0: low})  # FP1's maximum := its minimum
    with pytest.raises(SignalError, match=rf'EEG FP1-REF: {what} minimum and maximum are both'):
        read_eeg(edf)


def _one_sample_edf(path) -> Path:
    import edfio
    edfio.Edf([edfio.EdfSignal(np.array([float(i)]), sampling_frequency=250, label=f'EEG {c}-REF',
                               physical_dimension='uV', physical_range=(-1000, 1000)) for i, c in enumerate(CHANNELS)],
              data_record_duration=0.004).write(path)
    return Path(path)


def test_a_recording_too_short_to_filter_is_refused_with_its_length_and_the_minimum(tmp_path):
    from brain_go_brrr.signal import EegReader, PreprocessedEeg
    edf = _one_sample_edf(tmp_path / 'one.edf')
    with pytest.raises(SignalError, match=r'one\.edf: 1 samples \(0\.004 s\) .* too short to filter: .* at least'):
        PreprocessedEeg(EegReader(edf))[:, 0:1]


def test_a_recording_too_short_to_filter_is_not_called_flat_by_the_cache(tmp_path):
    from brain_go_brrr.cache import load_tusz, preprocessing_config
    from brain_go_brrr.tusz import parse_edf_path
    d = tmp_path / 'edf' / 'train' / 'aaaaaaaa' / 's001_2010' / '01_tcp_ar'
    d.mkdir(parents=True)
    edf = _one_sample_edf(d / 'aaaaaaaa_s001_t000.edf')
    with pytest.raises(SignalError, match='too short to filter'):
        load_tusz(parse_edf_path(edf, tmp_path), preprocessing_config(tmp_path, 'train'))


@pytest.mark.parametrize('filters', ['butterworth', 'mne_fir'])
def test_tuab_filters_name_the_recording_they_refuse(tmp_path, filters):
    "TUAB's load gave the filters no `where`: a refusal named 'data', not the recording (TUSZ's cache names it)."
    import re
    from brain_go_brrr.cache import preprocessing_config
    from brain_go_brrr.tuab import load_tuab, parse_tuab_path
    d = tmp_path / 'edf' / 'train' / 'normal' / '01_tcp_ar'
    d.mkdir(parents=True)
    if filters == 'butterworth':  # too short to filter (and not flat: 10 samples of noise)
        import edfio
        noise = np.random.default_rng(0).normal(0, 20, (len(CHANNELS), 10))
        edf = d / 'aaaaaaaa_s001_t000.edf'
        edfio.Edf([edfio.EdfSignal(x, sampling_frequency=250, label=f'EEG {c}-REF', physical_dimension='uV',
                                   physical_range=(-1000, 1000)) for x, c in zip(noise, CHANNELS)],
                  data_record_duration=0.04).write(edf)
        config = preprocessing_config(tmp_path, 'train', corpus='tuab')
        why = r'10 samples \(0\.04 s\) at 250 Hz are too short to filter'
    else:  # the official EEGPT steps' 75-Hz low-pass on a 125-Hz recording: past its Nyquist frequency
        edf = write_edf(d / 'aaaaaaaa_s001_t000.edf', [f'EEG {c}-REF' for c in CHANNELS], sfreq=125.0)
        config = {**preprocessing_config(tmp_path, 'train', sfreq=200.0, l_freq=0.1, h_freq=75.0, notch=50.0,
                                          corpus='tuab'), 'filters': filters}
        why = 'at 125 Hz, .*Nyquist.* give h_freq below 62.5 Hz'
    with pytest.raises(SignalError, match=rf'^{re.escape(str(edf))}: {why}'):
        load_tuab(parse_tuab_path(edf, tmp_path), config)


@pytest.mark.parametrize('value', [b'abc', b'-1', b'0'])
def test_a_damaged_sample_count_names_its_channel(tmp_path, value):
    edf = patch_signal_field(write_edf(tmp_path / 'count.edf'), 216, 8, {0: value})
    with pytest.raises(SignalError, match=r'EEG FP1-REF: .*samples per record'):
        read_eeg(edf)


def test_a_sample_count_off_by_one_names_the_odd_channel(tmp_path):
    edf = patch_signal_field(write_edf(tmp_path / 'count.edf'), 216, 8, {0: b'249'})
    with pytest.raises(SignalError, match=r'EEG FP1-REF'):
        read_eeg(edf)
