"""``projects.mv2d_xray.core.io``: atomic writes with the usual permissions, one-line read
errors, and data pickles that cannot run code."""
import os
import pickle
import stat

import numpy as np
import pytest

from projects.mv2d_xray.core.io import (atomic_output, atomic_write, loads_pickle, read_json,
                                        read_pickle, remove_stale_temporaries, write_json)


def test_atomic_write_gives_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / 'sub' / 'out.bin'
        atomic_write(str(path), b'abc')
    finally:
        os.umask(old)
    assert path.read_bytes() == b'abc'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(path.parent)) == ['out.bin']


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / 'out.json'
    path.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_output(str(path)) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise RuntimeError('disk full')
    assert path.read_text() == 'old'
    assert sorted(os.listdir(tmp_path)) == ['out.json']
    with pytest.raises(ValueError):                 # NaN is not JSON: refused, not written
        write_json(str(tmp_path / 'nan.json'), {'x': float('nan')})
    assert sorted(os.listdir(tmp_path)) == ['out.json']


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / '.x.png.k3j.tmp').write_bytes(b'')
    (tmp_path / 'a' / 'x.png').write_bytes(b'')
    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path / 'a') == ['x.png']


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'predictions not found: .*nope\.json'):
        read_json(str(tmp_path / 'nope.json'), 'predictions')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"a": ')
    with pytest.raises(ValueError, match=r'bad\.json is not valid JSON'):
        read_json(str(bad))


class _Payload:
    """Unpickling this would create ``marker`` (if a reader ran it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_read_pickle_reads_plain_data(tmp_path):
    data = {'metainfo': {'classes': ('nodule',), 'n': np.int64(3)},
            'data_list': [{'m': np.eye(4), 'mask': np.ones((2, 3), bool), 's': {1, 2}}]}
    for protocol in (2, 4, 5):
        path = tmp_path / f'p{protocol}.pkl'
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = read_pickle(str(path))
        assert loaded['metainfo']['classes'] == ('nodule',)
        assert loaded['metainfo']['n'] == 3
        np.testing.assert_array_equal(loaded['data_list'][0]['m'], np.eye(4))
        assert loaded['data_list'][0]['mask'].dtype == bool
        assert loaded['data_list'][0]['s'] == {1, 2}


def test_read_pickle_refuses_code(tmp_path):
    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(pickle.dumps({'data_list': [_Payload(str(marker))]}))
    with pytest.raises(ValueError, match=r'cannot read info pickle .*hostile\.pkl: '
                                         r'UnpicklingError: .*posix\.mkdir'):
        read_pickle(str(path), 'info pickle')
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        loads_pickle(pickle.dumps(_Payload(str(marker))))
    assert not marker.exists()
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes(pickle.dumps({'a': list(range(100))})[:20])
    with pytest.raises(ValueError, match=r'cannot read pickle .*truncated\.pkl'):
        read_pickle(str(truncated))
