"""The converter's own files cannot carry code and stay inside ``--out``: finished cases are
JSON, the demo's nodule-shape cache is ``.npz`` read without pickle, a folder of an older
converter (pickled parts) is refused untouched, and ``--prefix`` is a plain name."""
import hashlib
import io
import os
import os.path as osp
import pickle

import numpy as np
import pytest
from test_sources import define_tiny_source, registry  # noqa: F401 -- the fixture

from data_converters.__main__ import main
from data_converters.errors import ConverterError
from data_converters.sources.demo import load_shape_pool, save_shape_pool
from data_converters.splits import split_file_paths
from data_converters.storage import PARTS_DIR, CaseStore


class Payload:
    """Unpickling it creates the folder ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def tree_digest(folder) -> dict:
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = osp.join(root, name)
            with open(path, 'rb') as f:
                digest[osp.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def convert_tiny(out, *extra):
    return main(['tiny', '--out', str(out), '--cases', '3', '--val-fraction', '0.5',
                 '--views', '2', '--pixel-spacing', '4', '--no-progress', *extra])


def test_parts_are_json_and_a_resume_is_byte_identical(registry, tmp_path,  # noqa: F811
                                                       capsys):
    define_tiny_source()
    out = tmp_path / 'tiny'
    assert convert_tiny(out) == 0
    names = sorted(os.listdir(out / PARTS_DIR))
    assert names == ['settings.json', 'tiny-0.case.json', 'tiny-1.case.json',
                     'tiny-2.case.json']
    splits = {p: (out / p).read_bytes() for p in os.listdir(out) if p.startswith('tiny_')}
    os.remove(out / PARTS_DIR / 'tiny-1.case.json')
    for name in splits:
        os.remove(out / name)
    assert convert_tiny(out) == 0
    assert 'converted 1 case(s)' in capsys.readouterr().out
    assert {p: (out / p).read_bytes() for p in splits} == splits


def test_folder_of_an_older_converter_is_refused_untouched(registry, tmp_path,  # noqa: F811
                                                           capsys):
    """Pickled parts are never read: a crafted one does not run, the run and ``merge``
    stop with one line, and the folder is left as it was."""
    define_tiny_source()
    out = tmp_path / 'old'
    assert convert_tiny(out) == 0
    marker = tmp_path / 'payload-ran'
    with open(out / PARTS_DIR / 'tiny-0.pkl', 'wb') as f:
        pickle.dump(dict(token='tiny-0', x=Payload(marker)), f)
    capsys.readouterr()
    before = tree_digest(out)
    for argv in (None, ['merge', '--out', str(tmp_path / 'merged'), '--inputs', str(out)],
                 ['merge', '--out', str(out)]):
        status = convert_tiny(out) if argv is None else main(argv)
        assert status == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'older version of the converter' in err[0]
        assert 'new --out' in err[0]
    assert tree_digest(out) == before
    assert not marker.exists() and not (tmp_path / 'merged' / PARTS_DIR).exists()


def test_shape_cache_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    pool = {'ground_truth': [dict(mask=rng.random((3, 4, 5)) > 0.5, source_nodule='a/1',
                                  num_readers=3, diameter_mm=6.819117989084,
                                  volume_mm3=177.89, characteristics={'texture': 5.0},
                                  ignore=False)],
            'ignore': [dict(mask=np.ones((1, 1, 1), bool), source_nodule='b/2',
                            num_readers=1, diameter_mm=4.0, volume_mm3=1.0,
                            characteristics={}, ignore=True)]}
    path = str(tmp_path / 'nodule-shapes.npz')
    save_shape_pool(path, pool)
    back = load_shape_pool(path)
    assert list(back) == list(pool)
    for kind in pool:
        for ours, theirs in zip(pool[kind], back[kind]):
            assert list(theirs) == list(ours)
            mask = theirs.pop('mask')
            assert mask.dtype == bool
            np.testing.assert_array_equal(mask, ours['mask'])
            assert theirs == {k: v for k, v in ours.items() if k != 'mask'}


def test_crafted_shape_cache_does_not_run(tmp_path):
    marker = tmp_path / 'payload-ran'
    path = str(tmp_path / 'nodule-shapes.npz')
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([Payload(marker)], dtype=object))
    with open(path, 'wb') as f:
        f.write(buf.getvalue())
    with pytest.raises(ConverterError, match='cannot read the nodule-shape cache'):
        load_shape_pool(path)
    assert not marker.exists()


@pytest.mark.parametrize('prefix', ['../x', '/tmp/x', 'a/b', '', '.hidden', '..'])
def test_prefix_cannot_leave_out(registry, tmp_path, capsys, prefix):  # noqa: F811
    define_tiny_source()
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_:
        convert_tiny(out, '--prefix', prefix)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'argument --prefix: expected a file name prefix' in err[0]
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConverterError, match='not a plain file name prefix'):
        split_file_paths(str(out), prefix)


def test_store_load_skips_temporaries(tmp_path):
    store = CaseStore(str(tmp_path))
    store.claim(dict(a=1), dict(prefix='x', val_fraction=0.0, seed=0))
    store.write_case('t-1', dict(token='t-1', value=[1.5, 2]))
    (tmp_path / PARTS_DIR / '.t-2.case.json.abc.tmp').write_text('{')
    infos, skipped = store.load()
    assert infos == [dict(token='t-1', value=[1.5, 2])] and skipped == {}
