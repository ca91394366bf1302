"""Turbine-blade-like cast parts with casting defects, as an industrial cabinet sees them.

No public data set of turbine-blade radiographs exists, so this source makes them: every
case is a procedurally generated part (:mod:`data_converters.blade_parts`: airfoil with
taper and twist, root block, platform, cooling channels; or the user's own watertight
mesh, ``--mesh part.stl``) voxelised at ``--voxel-mm`` (default 0.2 mm), with 0-5 casting
defects of three classes -- ``pore``, ``inclusion``, ``crack`` -- placed at least one voxel
inside the material (:mod:`data_converters.casting_defects`).

Physics (:mod:`data_converters.xray_physics`): each voxel holds the linear attenuation
``mu`` (1/mm) of its material at ``--energy-kev`` from xraydb's reference tables (a
CMSX-4-like nickel superalloy; hafnia and alumina inclusions; voids); the renderer gives
``L = integral mu dl`` per pixel (:class:`~data_converters.render.XrayRenderer` on the
``mu`` volume, resampled to the isocentre pixel); the detector sees Beer-Lambert
``I = I0 exp(-L)`` blurred by a Gaussian of ``--blur-px`` and with Poisson noise of
``--photons`` unattenuated photons per pixel; the PNGs are **16-bit** over the window
``L`` in 0..12 (:mod:`data_converters.image_encoding`: ``round(clip(L / 12, 0, 1) *
65535)``; a transmission of e^-12 is white), recorded in ``metainfo['converter']
['image']``.

Acquisition: a turntable (the part's span along the ct z axis, which the ring turns
about), by default 12 views over 360 degrees, source-object 400 mm and source-detector
800 mm (magnification 2), a 400 mm detector (a 200 mm field at the part, which the
largest parts need): at the default 512^2 a pixel is 0.78 mm, 0.39 mm at the part, so a
1 mm defect spans about 2.6 px, a 2 mm one 5 px and the 0.3 mm smallest under one
(defects below ``--detectable-mm``, 0.4 mm, become ignore regions).

Labels: per defect the tight 3D box of its voxels (ct mm) and per view the tight box of
its voxels' projected corners, exactly as for nodules
(:class:`~data_converters.findings.Finding`); ``diameter_mm`` is the defect's size
(diameter, a cluster's extent, a crack's length), which the size bands (0.3-1, 1-2, > 2 mm)
use. Splits: train, val and test by part (``--val-fraction``, ``--test-fraction``; the
part ``<split>-blade-NNNN`` is in ``<split>``), each part drawing from its own random
stream ``(seed, part index)``, so no part and no generation seed is shared between them.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_converters.arguments import fraction, non_negative_int, positive_float, positive_int
from data_converters.blade_parts import (MARGIN_VOXELS, BladeRanges, BladeShape, sample_blade,
                                         voxelise)
from data_converters.cases import finish_case
from data_converters.casting_defects import DEFECT_CLASSES, DefectSettings, place_defects
from data_converters.density import AttenuationVolume
from data_converters.errors import ConverterError
from data_converters.findings import Finding, LabelRule
from data_converters.image_encoding import image_settings, to_uint16
from data_converters.sources.base import ConversionSource, register_source
from data_converters.splits import SPLIT_NAMES, named_split_counts
from data_converters.xray_physics import (INCLUSION_MATERIALS, MAX_LINE_INTEGRAL, DetectorModel,
                                          detect, material_table, mu_volume)
from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.geometry import project_points

DESCRIPTION = __doc__.split('\n\n')[0] + '''

Each case: a random blade-like part (or --mesh), 0-5 defects (pore, inclusion, crack),
mu from xraydb at --energy-kev, Beer-Lambert with Poisson noise and detector blur, 16-bit
PNGs. Default acquisition: a turntable of 12 views, sod 400 mm, sdd 800 mm, 400 mm
detector.'''


class LoadedMesh:
    """The user's part from a mesh file, voxelised once (``--mesh``).

    Args:
        path (str): an STL / OBJ / PLY file trimesh reads (mm).
        voxel_mm (float): the voxel size.

    Raises:
        ConverterError: the file cannot be read or the mesh is not watertight (it has no
            inside to fill).
    """

    def __init__(self, path: str, voxel_mm: float):
        import trimesh
        if not osp.isfile(path):
            raise ConverterError(f'--mesh {path}: no such file')
        try:
            mesh = trimesh.load(path, force='mesh')
        except Exception as exc:     # trimesh raises many types for broken files
            raise ConverterError(f'--mesh {path}: cannot read it as a mesh ({exc})') from None
        if not mesh.is_watertight:
            raise ConverterError(f'--mesh {path}: the mesh is not watertight (it has holes '
                                 'or open edges), so it has no inside to fill with material; '
                                 'repair it first (e.g. trimesh.repair.fill_holes)')
        grid = mesh.voxelized(voxel_mm).fill()
        # trimesh indexes (x, y, z); the converter's volumes are (rows = y, cols = x, z)
        self.mask = np.ascontiguousarray(np.transpose(grid.matrix, (1, 0, 2)).astype(bool))
        self.path = path
        self.extent_mm = [float(e) for e in mesh.extents]


@register_source
class BladesSource(ConversionSource):
    """Cast blade-like parts with defects (see the module docstring).

    Args:
        geometry (Acquisition | XrayGeometry): the views.
        rule (LabelRule): unused by the defects' labels (kept for the common interface;
            ``--detectable-mm`` decides the ignore regions).
        num_cases (int): parts.
        seed (int): seed of the parts and of the split.
        val_fraction (float): fraction of parts in validation.
        device (str): torch device for rendering.
        voxel_mm (float): voxel size of the parts.
        test_fraction (float): fraction of parts in test (val: ``val_fraction``; train
            the rest).
        defects (DefectSettings): defect counts, mix and sizes.
        detector (DetectorModel): energy, dose and blur.
        ranges (BladeRanges): part dimensions.
        mesh (str, optional): the user's mesh instead of generated parts.
    """
    name = 'blades'
    default_prefix = 'blades'
    classes = DEFECT_CLASSES
    density = AttenuationVolume()
    cli_help = 'generate cast turbine-blade-like parts with defects (pore, inclusion, crack)'
    cli_description = DESCRIPTION
    process_caches = ('_mesh', '_renderer')
    default_image_size = 512
    field_of_view_mm = 20.0
    body_radius_mm = 100.0
    default_ring = dict(views=12, sod=400.0, sdd=800.0, detector_mm=400.0)
    size_bands_mm = (('0.3-1mm', 0.3, 1.0), ('1-2mm', 1.0, 2.0), ('>2mm', 2.0, None))

    def __init__(self, geometry: Acquisition, rule: LabelRule = LabelRule(),
                 num_cases: int = 40, seed: int = 0, val_fraction: float = 0.2,
                 device: str = 'cpu', voxel_mm: float = 0.2,
                 test_fraction: float = 0.2,
                 defects: DefectSettings = DefectSettings(),
                 detector: DetectorModel = DetectorModel(),
                 ranges: BladeRanges = BladeRanges(), mesh: Optional[str] = None):
        super().__init__(geometry, rule, device, val_fraction, seed)
        self.num_cases = int(num_cases)
        self.test_fraction = float(test_fraction)
        self.voxel_mm = float(voxel_mm)
        self.defects = defects
        self.detector = detector
        self.ranges = ranges
        self.mesh_path = mesh
        self.density = AttenuationVolume(detector.energy_kev)
        # mu (1/mm) of the alloy and the inclusions: looked up once, not per part
        self.mu_per_mm = material_table(detector.energy_kev, tuple(INCLUSION_MATERIALS))
        self._mesh: Optional[LoadedMesh] = None        # per process
        self._renderer = None
        self.check_settings()
        counts = self.split_counts()
        if min(counts.values()) < 1:
            raise ConverterError(f'--cases {self.num_cases} with --val-fraction '
                                 f'{self.val_fraction:g} and --test-fraction '
                                 f'{self.test_fraction:g} leaves a split empty ({counts})')
        what = f'--mesh {mesh}' if mesh else 'the largest part of the ranges'
        self.check_field_of_view(self.largest_part_mm(), what)

    # -- command line ------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--cases', type=positive_int, default=40,
                            help='number of parts (default: 40)')
        parser.add_argument('--test-fraction', type=fraction, default=0.2,
                            help='fraction of the parts in the test split (default: 0.2)')
        parser.add_argument('--mesh', metavar='FILE',
                            help='your own part (watertight STL/OBJ/PLY, mm) instead of '
                            'generated blades; defects are inserted the same way')
        parser.add_argument('--span-mm', type=positive_float, nargs=2, default=(40.0, 120.0),
                            metavar=('LOW', 'HIGH'),
                            help='airfoil spans of the generated parts (default: 40 120)')
        parser.add_argument('--voxel-mm', type=positive_float, default=0.2,
                            help='voxel size of the parts (default: 0.2)')
        parser.add_argument('--max-defects', type=non_negative_int, default=5,
                            help='most defects per part (default: 5; 0 to 5 drawn)')
        parser.add_argument('--defect-mm', type=positive_float, nargs=2, default=(0.3, 2.0),
                            metavar=('LOW', 'HIGH'),
                            help='pore and inclusion diameters (default: 0.3 2)')
        parser.add_argument('--crack-mm', type=positive_float, nargs=2, default=(1.0, 6.0),
                            metavar=('LOW', 'HIGH'), help='crack lengths (default: 1 6)')
        parser.add_argument('--detectable-mm', type=positive_float, default=0.4,
                            help='defects smaller than this become ignore regions '
                            '(default: 0.4)')
        parser.add_argument('--energy-kev', type=positive_float, default=150.0,
                            help='effective beam energy (default: 150)')
        parser.add_argument('--photons', type=positive_float, default=20000.0,
                            help='unattenuated photons per pixel, the dose (default: 20000)')
        parser.add_argument('--no-noise', action='store_true', help='no photon noise')
        parser.add_argument('--blur-px', type=float, default=0.5,
                            help='detector blur, Gaussian sigma in px (default: 0.5)')

    @classmethod
    def from_args(cls, args: argparse.Namespace, geometry: Acquisition,
                  rule: LabelRule) -> 'BladesSource':
        defects = DefectSettings(
            count=(0, args.max_defects),
            size_mm=dict(pore=tuple(args.defect_mm), inclusion=tuple(args.defect_mm),
                         crack=tuple(args.crack_mm)),
            detectable_mm=args.detectable_mm)
        detector = DetectorModel(energy_kev=args.energy_kev,
                                 photons_per_pixel=None if args.no_noise else args.photons,
                                 blur_sigma_px=args.blur_px)
        low, high = args.span_mm
        if low > high:
            raise ConverterError(f'--span-mm {low:g} {high:g}: LOW must be <= HIGH')
        return cls(geometry, rule, args.cases, args.seed, args.val_fraction, args.device,
                   args.voxel_mm, args.test_fraction, defects, detector,
                   BladeRanges(span_mm=(low, high)), mesh=args.mesh)

    def check_settings(self) -> None:
        """Refuse settings no part can satisfy (one line naming the flag)."""
        for name, (low, high) in self.defects.size_mm.items():
            flag = '--crack-mm' if name == 'crack' else '--defect-mm'
            if not 0 < low <= high:
                raise ConverterError(f'{flag} {low:g} {high:g}: LOW must be > 0 and <= HIGH')
        # the thickest place of the smallest part: its root block, chord * tau * 2.5 deep
        # and 1.2 chord wide; a defect (with a voxel each side) must fit there
        depth = self.ranges.chord_mm[0] * self.ranges.thickness_ratio[0] * 2.5
        width = 1.2 * self.ranges.chord_mm[0]
        margin = 2 * self.voxel_mm
        for name, (_, high) in self.defects.size_mm.items():
            thick = high * (0.5 if name == 'crack' else 1.0)     # a crack's width
            if self.mesh_path is None and (thick + margin > depth or high + margin > width):
                flag = '--crack-mm' if name == 'crack' else '--defect-mm'
                raise ConverterError(
                    f'{flag}: a {high:g} mm {name} cannot fit in the parts (the smallest '
                    f'part\'s root block is {depth:.2g} mm deep and {width:.3g} mm wide, the '
                    'thickest place it has): lower the range')
        if self.defects.detectable_mm < 0:
            raise ConverterError('--detectable-mm must be >= 0')
        if self.detector.blur_sigma_px < 0:
            raise ConverterError('--blur-px must be >= 0')

    @classmethod
    def from_recorded(cls, fingerprint: dict, split: dict, device: str) -> 'BladesSource':
        """See :meth:`ConversionSource.from_recorded` (``from_settings`` refuses what it
        cannot regenerate). A ``--mesh`` build needs its mesh file where it was."""
        blades = fingerprint['blades']
        defects, parts = blades['defects'], blades['parts']
        if isinstance(parts, str) and not parts.startswith('mesh '):
            raise ValueError(f'parts {parts!r} (neither ranges nor "mesh PATH")')
        mesh = parts[len('mesh '):] if isinstance(parts, str) else None
        ranges = BladeRanges() if mesh else BladeRanges(**{k: tuple(v) for k, v in
                                                          parts.items()})
        return cls(Acquisition.from_metainfo(fingerprint['geometry']),
                   LabelRule.from_dict(fingerprint['label_rule']),
                   num_cases=sum(blades['splits'].values()), seed=blades['seed'],
                   val_fraction=split['val_fraction'], device=device,
                   voxel_mm=blades['voxel_mm'], test_fraction=split['test_fraction'],
                   defects=DefectSettings(
                       count=tuple(defects['count']), class_mix=dict(defects['class_mix']),
                       size_mm={k: tuple(v) for k, v in defects['size_mm'].items()},
                       crack_thickness_mm=tuple(defects['crack_thickness_mm']),
                       cluster_probability=defects['cluster_probability'],
                       detectable_mm=defects['detectable_mm']),
                   detector=DetectorModel(**blades['detector']), ranges=ranges, mesh=mesh)

    # -- settings ----------------------------------------------------------------------
    def source_settings(self) -> dict:
        return dict(blades=dict(
            seed=self.seed, voxel_mm=self.voxel_mm,
            parts=('mesh ' + self.mesh_path) if self.mesh_path else self.ranges.__dict__,
            defects=self.defects.to_dict(), detector=self.detector.to_dict(),
            mu_per_mm=self.mu_per_mm,
            splits=self.split_counts()),
            image=image_settings(MAX_LINE_INTEGRAL, unit='-log(I / I0), dimensionless'))


    def split_counts(self) -> Dict[str, int]:
        """Parts per split."""
        return named_split_counts(self.num_cases, self.val_fraction, self.test_fraction)

    def split_settings(self) -> dict:
        return dict(val_fraction=self.val_fraction, seed=self.seed, force_val=[],
                    named_splits=list(SPLIT_NAMES), test_fraction=self.test_fraction)

    # -- cases -------------------------------------------------------------------------
    def discover(self) -> Tuple[List[dict], Dict[str, str]]:
        specs, index = [], 0
        for split, count in self.split_counts().items():
            for _ in range(count):
                token = f'{split}-blade-{index:04d}'
                specs.append(dict(token=token, patient_id=token, index=index))
                index += 1
        return specs, {}

    def part(self, rng: np.random.Generator) -> Tuple[np.ndarray, Optional[BladeShape]]:
        """The material mask of a part (a new blade, or the user's mesh)."""
        if self.mesh_path is not None:
            if self._mesh is None:
                self._mesh = LoadedMesh(self.mesh_path, self.voxel_mm)
            return self._mesh.mask, None
        shape = sample_blade(rng, self.ranges)
        return voxelise(shape, self.voxel_mm), shape

    def largest_part_mm(self) -> Tuple[float, float, float]:
        """Extents ``(x, y, z)`` in mm that every part fits in: the mesh's, or the largest
        blade of the ranges (root block and platform included)."""
        if self.mesh_path is not None:
            if self._mesh is None:
                self._mesh = LoadedMesh(self.mesh_path, self.voxel_mm)
            return tuple(self._mesh.extent_mm)
        r = self.ranges
        chord = r.chord_mm[1]
        width = 1.2 * chord + 3.0 + 2 * MARGIN_VOXELS * self.voxel_mm
        depth = chord * r.thickness_ratio[1] * 2.5 + 3.0 + 2 * MARGIN_VOXELS * self.voxel_mm
        height = r.span_mm[1] * (1 + r.root_fraction[1]) + r.platform_mm[1] \
            + 2 * MARGIN_VOXELS * self.voxel_mm
        return (width, max(depth, 0.6 * chord), height)

    def check_field_of_view(self, extent_mm: Sequence[float], what: str) -> None:
        """Refuse a part (a box of ``extent_mm`` about the isocentre) that some view's
        detector does not see whole."""
        half = np.asarray(extent_mm, dtype=np.float64) / 2
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                            for sz in (-1, 1)]) * half
        height, width = self.geometry.image_size
        for view in range(self.geometry.num_views):
            uv, _ = project_points(self.geometry.lidar2img(view), corners)
            if uv.min() < 0 or uv[:, 0].max() > width or uv[:, 1].max() > height:
                raise ConverterError(
                    f'{what} ({extent_mm[0]:.0f} x {extent_mm[1]:.0f} x {extent_mm[2]:.0f} mm)'
                    f' is larger than the field of view of view '
                    f'{self.geometry.view_names[view]}: use a larger --pixel-spacing or '
                    '--image-size, or smaller parts')

    def part_and_defects(self, index: int, token: str) -> Tuple[np.ndarray, list]:
        """Part ``index``'s material mask (voxels of ``voxel_mm``) and its placed
        :class:`~data_converters.casting_defects.Defect` list, from its random stream."""
        from scipy.ndimage import distance_transform_edt
        rng = np.random.default_rng([self.seed, 15, index])
        material, _ = self.part(rng)
        self.check_field_of_view(np.asarray(material.shape) * self.voxel_mm, token)
        depth = distance_transform_edt(material) * self.voxel_mm
        defects, _ = place_defects(material, self.voxel_mm, rng, self.defects,
                                   tuple(INCLUSION_MATERIALS), depth)
        return material, defects

    def line_integrals(self, material: np.ndarray, defects: list) -> np.ndarray:
        """``(N, H, W)`` line integrals of ``mu`` (dimensionless, ``img`` frame) through the
        part with these defects."""
        volume = mu_volume(material, defects, self.mu_per_mm)
        return self.renderer.render_density(volume, (self.voxel_mm,) * 3)

    def detected(self, line: np.ndarray, index: int) -> np.ndarray:
        """What the detector records of part ``index``'s line integrals: ``(N, H, W)``
        float32 ``-log(I / I0)``, noisy when the detector model says so (the part's own
        noise stream)."""
        noise = np.random.default_rng([self.seed, 16, index])
        return detect(line, self.detector, noise).astype(np.float32)

    def findings_of(self, defects: list, token: str) -> List[Finding]:
        """The part's defects as findings (those under ``detectable_mm`` ignored)."""
        return [Finding(d.mask, d.offset, f'{token}/{n}', 1, d.size_mm,
                        float(d.mask.sum() * d.void_fraction) * self.voxel_mm ** 3,
                        ignore=d.size_mm < self.defects.detectable_mm, label=d.label)
                for n, d in enumerate(defects)]

    def synthesize(self, index: int, token: str):
        """One part: its ``mu`` volume's findings and the detector's ``(N, H, W)`` line
        integrals (noisy when the detector model says so)."""
        material, defects = self.part_and_defects(index, token)
        images = self.detected(self.line_integrals(material, defects), index)
        meta = dict(shape=list(material.shape), spacing_mm=[self.voxel_mm] * 3,
                    series_uid=f'{token} (generated)')
        return meta, self.findings_of(defects, token), images

    def encode(self, view: np.ndarray) -> np.ndarray:
        """16-bit over ``L`` in 0 .. :data:`~data_converters.xray_physics.MAX_LINE_INTEGRAL`."""
        return to_uint16(view, MAX_LINE_INTEGRAL)

    def regenerate(self, split: str, spec: dict) -> dict:
        """See :meth:`ConversionSource.regenerate`: the part's views in ``-log(I / I0)``;
        a defect's signal is the noiseless detector image minus the same without that
        defect (one more render per defect)."""
        material, defects = self.part_and_defects(spec['index'], spec['token'])
        line = self.line_integrals(material, defects)
        noiseless = detect(line, self.detector, None).astype(np.float32)   # as the images
        signals = [noiseless - detect(self.line_integrals(material, defects[:k] + defects[k + 1:]),
                                      self.detector, None).astype(np.float32)
                   for k in range(len(defects))]
        return dict(images=self.detected(line, spec['index']), noiseless=noiseless,
                    findings=self.findings_of(defects, spec['token']), signals=signals)

    def convert(self, spec: dict, out_dir: str) -> dict:
        meta, findings, images = self.synthesize(spec['index'], spec['token'])
        return finish_case(out_dir, spec['token'], spec['patient_id'], 'synthetic', meta,
                           self.geometry, images, findings,
                           encode=self.encode)
