"""``CaseStore``'s settings: a folder compares fingerprints as JSON records them, refuses
other settings naming the keys, and reports the recorded split prefix."""
import pytest

from data_converters.errors import ConverterError
from data_converters.storage import CaseStore, as_json, settings_that_differ

SPLIT = dict(prefix='blades', val_fraction=0.2, seed=0)


def test_as_json_is_what_json_reads_back():
    assert as_json(dict(size=(256, 256), bands=[('a', 1.0, None)], n={1: 2})) == \
        dict(size=[256, 256], bands=[['a', 1.0, None]], n={'1': 2})


def test_settings_that_differ_compares_as_recorded():
    recorded = dict(size=[256, 256], seed=0)
    assert settings_that_differ(recorded, dict(size=(256, 256), seed=0)) == []
    assert settings_that_differ(recorded, dict(size=(512, 512), seed=0, extra=1)) == \
        ['extra', 'size']


def test_claim_accepts_the_same_settings_and_refuses_others(tmp_path):
    store = CaseStore(str(tmp_path))
    store.claim(dict(size=(256, 256), seed=0), SPLIT)
    assert store.read_settings() == dict(fingerprint=dict(size=[256, 256], seed=0),
                                         split=SPLIT)
    store.claim(dict(size=[256, 256], seed=0), SPLIT)        # a resume: tuples as lists
    with pytest.raises(ConverterError, match=r'\(size differ\)'):
        store.claim(dict(size=(512, 512), seed=0), SPLIT)
    with pytest.raises(ConverterError, match='--seed 0'):
        store.claim(dict(size=(256, 256), seed=0), dict(SPLIT, seed=1))


def test_recorded_prefix(tmp_path):
    store = CaseStore(str(tmp_path))
    assert store.recorded_prefix('default') == 'default'      # nothing recorded yet
    store.claim(dict(seed=0), SPLIT)
    assert store.recorded_prefix('default') == 'blades'
    # settings the caller already read are used as they are, not read again
    assert store.recorded_prefix('default', dict(split=dict(prefix='other'))) == 'other'
    assert store.recorded_prefix('default', dict(fingerprint={})) == 'default'
