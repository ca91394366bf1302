"""Sources behind one interface: the CLI's subcommands come from the registry, and a
source's class list and HU -> density mapping reach the dataset's metainfo."""
import argparse
import json
import os.path as osp
import pickle
import re

import numpy as np
import pytest

from data_converters import arguments
from data_converters.__main__ import build_parser, main
from data_converters.cases import finish_case
from data_converters.density import WATER_RELATIVE, LinearDensity
from data_converters.errors import ConverterError
from data_converters.findings import Finding
from data_converters.render import XrayRenderer, to_uint8
from data_converters.sources import base, load_sources
from data_converters.sources.base import ConversionSource, register_source
from data_converters.sources.blades import BladesSource
from data_converters.sources.chest_bench import ChestBenchSource
from data_converters.sources.demo import DemoSource
from data_converters.sources.lidc import LidcSource
from data_converters.sources.lidc_annotations import NODULE_CLASSES
from data_converters.volume import CTVolume
from projects.mv2d_xray.core.geometry import XrayGeometry

#: The tiny source's mapping: water = 2 (twice WATER_RELATIVE), so its renders show it.
TINY_DENSITY = LinearDensity(offset_hu=1000.0, scale_hu=500.0)
TINY_CLASSES = ('mass', 'nodule')


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test (the built-in sources loaded first)."""
    load_sources()
    monkeypatch.setattr(base, 'SOURCES', dict(base.SOURCES))
    return base.SOURCES


def tiny_volume() -> CTVolume:
    """A ``(12, 12, 12)`` air volume of 2 mm voxels with a ``(4, 4, 4)`` water cube."""
    hu = np.full((12, 12, 12), -1000.0, dtype=np.float32)
    hu[4:8, 4:8, 4:8] = 0.0
    return CTVolume(hu, (2.0, 2.0, 2.0), 'tiny-series')


def define_tiny_source():
    """Define (and so register) a source in one class, as a new source file would."""

    @register_source
    class TinySource(ConversionSource):
        name = 'tiny'
        default_prefix = 'tiny'
        classes = TINY_CLASSES
        density = TINY_DENSITY
        cli_help = 'a water cube in air, one per case'
        default_image_size = 16
        field_of_view_mm = 24.0         # the 12 x 2 mm volume

        def __init__(self, geometry, rule, device='cpu', val_fraction=0.5, seed=0, cases=2):
            super().__init__(geometry, rule, device, val_fraction, seed)
            self.cases = cases

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument('--cases', type=arguments.positive_int, default=2)

        @classmethod
        def from_args(cls, args, geometry, rule):
            return cls(geometry, rule, args.device, args.val_fraction, args.seed, args.cases)

        def source_settings(self):
            return dict(tiny=dict(cases=self.cases))

        def discover(self):
            return [dict(token=f'tiny-{i}', patient_id=f'p{i}') for i in range(self.cases)], {}

        def convert(self, spec, out_dir):
            volume = tiny_volume()
            cube = Finding(np.ones((4, 4, 4), bool), (4, 4, 4), f'{spec["token"]}/0', 3, 8.0,
                           512.0, label=TINY_CLASSES.index('nodule'))
            images = self.make_renderer().render(volume.hu, volume.spacing_mm)
            return finish_case(out_dir, spec['token'], spec['patient_id'], 'synthetic',
                               volume.meta(), self.geometry, images, [cube])

    return TinySource


def _subcommands(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_cli_subcommands_come_from_the_registry(registry, tmp_path):
    assert set(_subcommands(build_parser())) == {'blades', 'chest-bench', 'demo',
                                                 'export-study', 'lidc', 'merge'}
    assert load_sources() == {'blades': BladesSource, 'chest-bench': ChestBenchSource,
                              'demo': DemoSource, 'lidc': LidcSource}
    tiny = define_tiny_source()
    assert registry['tiny'] is tiny
    commands = _subcommands(build_parser())
    assert set(commands) == {'blades', 'chest-bench', 'demo', 'export-study', 'lidc',
                             'merge', 'tiny'}
    args = commands['tiny'].parse_args(['--out', str(tmp_path), '--cases', '3'])
    # the source's own flag, and the common ones with the source's defaults
    assert args.cases == 3 and args.image_size == (16, 16) and args.prefix == 'tiny'
    assert args.views == 10 and args.shard is None


def test_metainfo_records_the_sources_classes_and_density(registry, tmp_path, capsys):
    define_tiny_source()
    out = str(tmp_path / 'tiny')
    assert main(['tiny', '--out', out, '--cases', '1', '--val-fraction', '0', '--views', '2',
                 '--pixel-spacing', '4', '--no-progress']) == 0
    capsys.readouterr()
    with open(osp.join(out, 'tiny_infos_train.pkl'), 'rb') as f:
        data = pickle.load(f)
    meta = data['metainfo']
    assert meta['classes'] == TINY_CLASSES and meta['categories'] == {'mass': 0, 'nodule': 1}
    conv = meta['converter']
    assert conv['source'] == 'tiny' and conv['tiny'] == {'cases': 1}
    assert conv['render']['density'] == TINY_DENSITY.description == 'max(HU + 1000, 0) / 500'
    with open(osp.join(out, 'tiny_infos_train_2d.coco.json')) as f:
        coco = json.load(f)
    assert coco['categories'] == [{'id': 1, 'name': 'mass'}, {'id': 2, 'name': 'nodule'}]
    assert {a['category_id'] for a in coco['annotations']} == {2}
    # the views were rendered with the source's density, not the default one
    import cv2
    (info,) = data['data_list']
    geometry = XrayGeometry.from_metainfo(meta['geometry'])
    volume = tiny_volume()
    for view, img in enumerate(info['images'].values()):
        png = cv2.imread(osp.join(out, img['img_path']), cv2.IMREAD_UNCHANGED)
        ours = XrayRenderer(geometry, hu_to_density=TINY_DENSITY).render(
            volume.hu, volume.spacing_mm, [view])[0]
        default = XrayRenderer(geometry).render(volume.hu, volume.spacing_mm, [view])[0]
        np.testing.assert_array_equal(png, to_uint8(ours))
        np.testing.assert_allclose(ours, 2 * default, rtol=1e-5, atol=1e-5)
        assert png.max() > to_uint8(default).max() > 0


def test_builtin_sources_declare_classes_and_density():
    sources = load_sources()
    for name in ('chest-bench', 'demo', 'lidc'):
        assert sources[name].classes == NODULE_CLASSES
        assert sources[name].density is WATER_RELATIVE
    assert WATER_RELATIVE.description == 'max(HU + 1000, 0) / 1000'
    # the blades' volumes hold mu already: rendered as they are
    assert sources['blades'].classes == ('pore', 'inclusion', 'crack')
    mu = np.array([0.0, 0.37], np.float32)
    assert np.array_equal(sources['blades'].density(mu), mu)


def test_register_source_refuses_incomplete_sources(registry):
    class NoDensity(ConversionSource):
        name, default_prefix, classes, cli_help = 'nodensity', 'x', ('a',), 'x'

    with pytest.raises(ConverterError, match=r'test_sources\.[\w.<>]*NoDensity: set density'):
        register_source(NoDensity)

    class NoClasses(NoDensity):
        classes, density = (), WATER_RELATIVE

    with pytest.raises(ConverterError, match='set classes'):
        register_source(NoClasses)

    class Merge(NoDensity):
        name, density = 'merge', WATER_RELATIVE

    with pytest.raises(ConverterError, match="'merge' is a command"):
        register_source(Merge)

    class Demo(Merge):
        name = 'demo'

    with pytest.raises(ConverterError, match=r"'demo' is taken by .*sources\.demo\.DemoSource"):
        register_source(Demo)
    assert set(registry) == {'blades', 'chest-bench', 'demo', 'lidc'}


@pytest.mark.parametrize('parse, good, bad, message', [
    (arguments.positive_int, ('1', 1), ('0', 'x'), 'a positive integer'),
    (arguments.non_negative_int, ('0', 0), ('-1', '1.5'), 'an integer >= 0'),
    (arguments.positive_float, ('0.5', 0.5), ('0', 'nan', 'inf'), 'a positive finite number'),
    (arguments.fraction, ('1', 1.0), ('1.5', 'nan'), 'a number in [0, 1]'),
])
def test_number_types(parse, good, bad, message):
    assert parse(good[0]) == good[1]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f'expected {message}, got ')):
            parse(text)
