"Every reader of an environment switch takes the same words: `params`, `graph.EdgeStream` and `ssm` (see 00a_switches)."
import pytest
import torch
from brain_go_brrr.graph import EdgeStream
from brain_go_brrr.params import TrainParams, with_env_overrides
from brain_go_brrr.ssm import uses_cuda_kernels
from brain_go_brrr.switches import OFF, ON, parse_switch, switch

# reader: (variable, read it, what it reads when the switch is on, when it is off); on a CPU the scan never uses CUDA
READERS = {
    'params edge_clamp': ('BGB_EDGE_CLAMP', lambda: with_env_overrides(TrainParams()).edge_clamp, True, False),
    'params sanitize_grads': ('BGB_SANITIZE_GRADS', lambda: with_env_overrides(TrainParams()).sanitize_grads, True, False),
    'params nan_debug': ('BGB_NAN_DEBUG', lambda: with_env_overrides(TrainParams()).nan_debug, True, False),
    'graph EdgeStream': ('BGB_EDGE_CLAMP', lambda: EdgeStream(edge_dim=2, n_layers=1).clamp, True, False),
    'ssm uses_cuda_kernels': ('SEIZURE_MAMBA_FORCE_FALLBACK', lambda: uses_cuda_kernels(torch.zeros(1)), False, False),
}
SPELLINGS = [w for word in ON + OFF for w in (word, word.upper(), f' {word.title()} ')]


@pytest.mark.parametrize('value', SPELLINGS)
def test_each_spelling_is_on_or_off(value):
    assert parse_switch('X', value) is (value.strip().lower() in ON)


@pytest.mark.parametrize('value', ['maybe', '2', 'ture', 'y', 'enabled'])
def test_any_other_word_is_an_error_naming_variable_value_and_words(value):
    with pytest.raises(ValueError) as e: parse_switch('BGB_NAN_DEBUG', value)
    assert f'BGB_NAN_DEBUG={value!r}' in str(e.value)
    assert all(word in str(e.value) for word in ON + OFF)


def test_unset_or_empty_keeps_the_default():
    for environ in ({}, {'BGB_EDGE_CLAMP': ''}, {'BGB_EDGE_CLAMP': '  '}):
        assert switch('BGB_EDGE_CLAMP', True, environ) is True
        assert switch('BGB_EDGE_CLAMP', False, environ) is False


@pytest.mark.parametrize('reader', READERS)
def test_every_reader_takes_the_same_words(reader, monkeypatch):
    name, read, when_on, when_off = READERS[reader]
    for value, expected in [*((v, when_on) for v in ('true', 'On', 'YES', '1')),
                            *((v, when_off) for v in ('false', 'Off', 'NO', '0'))]:
        monkeypatch.setenv(name, value)
        assert read() is expected, (reader, value)
    monkeypatch.setenv(name, 'maybe')
    with pytest.raises(ValueError, match=name): read()


def test_edge_clamp_set_to_true_builds_the_detector_after_load_params(monkeypatch):
    "The seed's bug: `BGB_EDGE_CLAMP=true` passed load_params and then failed building the detector."
    from brain_go_brrr.params import load_params
    monkeypatch.setenv('BGB_EDGE_CLAMP', 'true')
    assert load_params().edge_clamp is True
    assert EdgeStream(edge_dim=2, n_layers=1, clamp=False).clamp is True
