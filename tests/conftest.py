"""Shared pytest set-up: the repository root on sys.path and mmdet3d's default scope."""
import os.path as osp
import sys

REPO_ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def import_from(folder: str, name: str):
    """The module ``<REPO_ROOT>/<folder>/<name>.py`` (``tools``, ``tests/tools``), imported
    by name: the tools import each other by name (``from _checkpoints import ...``), so the
    folder is on ``sys.path`` while it loads, and only then."""
    import importlib
    path = osp.join(REPO_ROOT, folder)
    sys.path.insert(0, path)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(path)


# -- a small demo dataset, built once per test session (data_converters demo) --------------
import dataclasses  # noqa: E402

import pytest  # noqa: E402


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The session's demo dataset (``python -m data_converters demo``; see README "Data
    format"). ``os.fspath(demo_dataset)`` and ``str(demo_dataset)`` give ``root``.

    Attributes:
        root (str): the dataset folder (``data_root``).
        train_pkl, val_pkl (str): the info pickles (absolute paths).
        train_coco, val_coco (str): the COCO files (absolute paths).
        prefix (str): the split files' prefix, ``'demo'``.
        geometry: its ``projects.mv2d_xray.core.geometry.XrayGeometry``.
        tokens (dict): ``{'train': [...], 'val': [...]}`` case ids.
    """
    root: str
    train_pkl: str
    val_pkl: str
    train_coco: str
    val_coco: str
    prefix: str
    geometry: object
    tokens: dict

    def __fspath__(self):
        return self.root

    def __str__(self):
        return self.root


#: What the ``demo_dataset`` fixture builds: 6 cases (LIDC-IDRI-0001 and one synthetic case
#: in val, four in train), 10 views of 96 x 96 px (default 800 mm detector, sod 300,
#: sdd 600), up to 3 inserted nodules per synthetic case.
DEMO_FIXTURE_SETTINGS = dict(num_cases=6, num_views=10, image_size=(96, 96),
                             val_fraction=0.34, seed=0, max_nodules=3)


@pytest.fixture(scope='session')
def demo_dataset(tmp_path_factory) -> DemoData:
    """Build a small demo dataset once per session (about a minute on 2 CPU cores)."""
    from data_converters.runner import run_conversion
    from data_converters.sources.demo import DemoSource
    from data_converters.splits import split_file_paths
    from projects.mv2d_xray.core.geometry import XrayGeometry
    cfg = DEMO_FIXTURE_SETTINGS
    geometry = XrayGeometry(num_views=cfg['num_views'], image_size=cfg['image_size'])
    root = str(tmp_path_factory.mktemp('demo_dataset'))
    source = DemoSource(geometry, num_cases=cfg['num_cases'], max_nodules=cfg['max_nodules'],
                        seed=cfg['seed'], val_fraction=cfg['val_fraction'])
    report = run_conversion(source, root, workers=1, progress=False)
    paths = split_file_paths(root, source.default_prefix)
    return DemoData(root=root, train_pkl=paths['train']['pkl'], val_pkl=paths['val']['pkl'],
                    train_coco=paths['train']['coco'], val_coco=paths['val']['coco'],
                    prefix=source.default_prefix, geometry=geometry,
                    tokens={k: [i['token'] for i in v] for k, v in report.lists.items()})


# -- a tiny chest benchmark, built once per test session (data_converters chest-bench) -----
#: What the ``chest_bench_build`` fixture builds: 9 synthetic cases (one deformed anatomy
#: per split) and LIDC-IDRI-0001, 3 views of 64 x 64 px.
CHEST_BENCH_FIXTURE_SETTINGS = dict(num_cases=9, deformations=(1, 1, 1), seed=0)
CHEST_BENCH_FIXTURE_GEOMETRY = dict(num_views=3, image_size=(64, 64))


def tiny_chest_bench_source():
    """A new ``ChestBenchSource`` with the fixture's settings (nothing built)."""
    from data_converters.sources.chest_bench import ChestBenchSource
    from projects.mv2d_xray.core.geometry import XrayGeometry
    return ChestBenchSource(XrayGeometry(**CHEST_BENCH_FIXTURE_GEOMETRY),
                            **CHEST_BENCH_FIXTURE_SETTINGS)


@pytest.fixture(scope='session')
def chest_bench_build(tmp_path_factory):
    """The tiny chest benchmark built once per session (~30 s on 2 CPU cores):
    ``(folder, source, {split: loaded info pickle})``. Tests read the folder, never
    change it (the source's per-process caches do fill)."""
    from data_converters.runner import run_conversion
    from data_converters.splits import split_file_paths
    from projects.mv2d_xray.core.data_format import load_infos
    root = str(tmp_path_factory.mktemp('chest_bench'))
    source = tiny_chest_bench_source()
    run_conversion(source, root, workers=1, progress=False)
    paths = split_file_paths(root, source.default_prefix, ('train', 'val', 'test'))
    return root, source, {name: load_infos(p['pkl']) for name, p in paths.items()}


# -- tiny cast blades, built once per test session (data_converters blades) -----------------
#: What the ``blades_build`` fixture builds: 4 parts (2 train, 1 val, 1 test) of 40-50 mm
#: span with 2-3 defects of 1.5-2.5 mm (cracks 2-4 mm) each, in 4 views of 128 x 128 px
#: (0.7 mm per pixel at the part), voxels of 0.5 mm.
BLADES_FIXTURE_SETTINGS = dict(num_cases=4, seed=0, val_fraction=0.25, test_fraction=0.25,
                               voxel_mm=0.5)
BLADES_FIXTURE_GEOMETRY = dict(num_views=4, sod_mm=400.0, sdd_mm=800.0, image_size=(128, 128),
                               pixel_spacing_mm=1.4)


@pytest.fixture(scope='session')
def blades_build(tmp_path_factory):
    """The tiny blades build, once per session (a few seconds on 2 CPU cores):
    ``(folder, source, {split: loaded info pickle})``. Tests read the folder, never change
    it."""
    from data_converters.blade_parts import BladeRanges
    from data_converters.casting_defects import DefectSettings
    from data_converters.runner import run_conversion
    from data_converters.sources.blades import BladesSource
    from data_converters.splits import split_file_paths
    from projects.mv2d_xray.core.data_format import load_infos
    from projects.mv2d_xray.core.geometry import XrayGeometry
    root = str(tmp_path_factory.mktemp('blades'))
    source = BladesSource(
        XrayGeometry(**BLADES_FIXTURE_GEOMETRY), **BLADES_FIXTURE_SETTINGS,
        defects=DefectSettings(count=(2, 3), size_mm=dict(pore=(1.5, 2.5),
                                                          inclusion=(1.5, 2.5),
                                                          crack=(2.0, 4.0)),
                               detectable_mm=1.0),
        ranges=BladeRanges(span_mm=(40.0, 50.0)))
    run_conversion(source, root, workers=1, progress=False)
    paths = split_file_paths(root, source.default_prefix, ('train', 'val', 'test'))
    return root, source, {name: load_infos(p['pkl']) for name, p in paths.items()}
