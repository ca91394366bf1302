"""What every source of cases provides, and the registry the CLI is built from.

A source lists its cases (:meth:`ConversionSource.discover`), may prepare shared work once
per run (:meth:`~ConversionSource.prepare`) and converts one case at a time
(:meth:`~ConversionSource.convert`); :func:`~data_converters.runner.run_conversion` does
the rest (claiming the folder, resuming, workers, shards, split files). A source also
declares its class list and its HU -> density mapping, which reach the dataset's
``metainfo`` through :meth:`~ConversionSource.fingerprint` (``metainfo['classes']`` and
``metainfo['converter']['render']['density']``), and its own command-line flags.

:func:`register_source` puts a source class into :data:`SOURCES`; ``python -m
data_converters`` has one subcommand per registered source
(:func:`data_converters.sources.load_sources`).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Tuple, Type

import numpy as np

from data_converters.density import DensityMapping
from data_converters.errors import ConverterError
from data_converters.findings import LabelRule
from data_converters.storage import settings_that_differ
from projects.mv2d_xray.core.acquisition import Acquisition, as_acquisition
from projects.mv2d_xray.core.data_format import FORMAT_VERSION

#: Registered source classes by name (= subcommand), filled by :func:`register_source`.
SOURCES: Dict[str, Type['ConversionSource']] = {}
#: Subcommands of the CLI that are not sources.
RESERVED_NAMES = ('merge',)


class ConversionSource:
    """A source of cases: CT volumes with findings, rendered into the dataset's views.

    Subclasses set the class attributes, implement :meth:`discover`, :meth:`convert` and
    :meth:`from_args`, and may override :meth:`add_arguments`, :meth:`source_settings`,
    :meth:`split_settings` and :meth:`prepare`. A source is pickled to worker processes
    (``spawn``): name per-process caches in :attr:`process_caches`, which pickling drops.

    Class attributes:
        name (str): subcommand and ``metainfo['converter']['source']``, e.g. ``'lidc'``.
        default_prefix (str): default prefix of the split files.
        classes (tuple[str, ...]): the class list; a finding's ``label`` indexes it.
        density (DensityMapping): HU -> density the views are rendered from.
        cli_help (str): one line for ``python -m data_converters --help``.
        cli_description (str): the subcommand's ``--help`` text.
        default_image_size (int): default ``--image-size`` in pixels.
        field_of_view_mm (float): the least width (mm) about the isocentre that every
            view's detector must see (:func:`~data_converters.checks.check_acquisition`).
        body_radius_mm (float): the farthest a volume reaches from the z axis: the X-ray
            source must be farther (the isocentre's camera depth in every view: ``--sod``).
        size_bands_mm (tuple, optional): ``(name, low_mm, high_mm or None)`` size bands
            of the source's findings, for the metric (``metainfo['converter']
            ['size_bands_mm']``); None: the metric's LUNA16 nodule bands.
        default_ring (dict): defaults of the ring flags that differ from a chest's
            (``views`` 10, ``sod`` 300, ``sdd`` 600, ``detector_mm`` 800: the default
            pixel pitch is ``detector_mm`` over the longer image side).

    Args:
        geometry (Acquisition | XrayGeometry): the views (``--acquisition FILE`` or the
            ring flags); kept as an :class:`Acquisition` in ``self.geometry``, whose
            matrices render the views, place the 2D boxes and fill the info pickles.
        rule (LabelRule): which findings are ground truth (the others: ignore regions).
        device (str): torch device for rendering.
        val_fraction (float): fraction of patients in validation.
        seed (int): seed of the split (and of whatever the source draws).
    """
    name: str = ''
    default_prefix: str = ''
    classes: Tuple[str, ...] = ()
    density: Optional[DensityMapping] = None
    cli_help: str = ''
    cli_description: str = ''
    default_image_size: int = 256
    field_of_view_mm: float = 100.0
    body_radius_mm: float = 150.0
    default_ring: Dict[str, float] = {}
    size_bands_mm: Optional[Tuple[Tuple[str, float, Optional[float]], ...]] = None

    def __init__(self, geometry: Acquisition, rule: LabelRule = LabelRule(),
                 device: str = 'cpu', val_fraction: float = 0.2, seed: int = 0):
        self.geometry = as_acquisition(geometry)
        self.rule = rule
        self.device = device
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.show_progress = True       # progress bars of prepare() (set by the runner)

    # -- command line ----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the source's own flags to its subcommand (the CLI adds the common ones:
        ``--out``, geometry, label rule, run)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, geometry: Acquisition,
                  rule: LabelRule) -> 'ConversionSource':
        """The source for parsed flags (``args.device``, ``args.val_fraction``,
        ``args.seed`` and the source's own), with the CLI's acquisition and label rule.

        Raises:
            ConverterError: a flag's value is unusable (e.g. a missing input folder).
        """
        raise NotImplementedError

    # -- settings --------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """The settings that shape every case; a folder converted with another
        fingerprint is refused. All but ``geometry`` (``Acquisition.to_metainfo``, so a
        resumed run must use the same acquisition) and ``classes`` become
        ``metainfo['converter']``; the key order is the metainfo's."""
        bands = {} if self.size_bands_mm is None else dict(
            size_bands_mm=[[str(n), float(lo), None if hi is None else float(hi)]
                           for n, lo, hi in self.size_bands_mm])
        return dict(format_version=FORMAT_VERSION, source=self.name,
                    classes=list(self.classes), geometry=self.geometry.to_metainfo(),
                    label_rule=self.rule.to_dict(), render=self.render_settings(),
                    **bands, **self.source_settings())

    @classmethod
    def from_settings(cls, settings: Optional[dict], where: str = 'the settings',
                      device: str = 'cpu') -> 'ConversionSource':
        """The source that built a folder, from the settings it recorded
        (``CaseStore(root).read_settings()``), to regenerate its cases exactly
        (:meth:`regenerate`).

        Args:
            settings (dict, optional): the recorded settings; None: the folder has none.
            where (str): how messages name them (e.g. the settings file's path).
            device (str): where to render. A build regenerates bit for bit on the kind of
                device it was built on only: CPU and CUDA renders differ in rounding
                (README "Rendering"), and the settings do not record the device.

        Raises:
            ConverterError: no settings; settings of another source or with a setting
                missing; a source that cannot regenerate its cases (one that reads
                inputs, e.g. ``lidc``); or settings this code would record differently
                (another version of the converter or of DiffDRR), naming the parts that
                differ.
        """
        if not settings:
            raise ConverterError(f'{where}: no conversion settings (not a converted folder?)')
        fingerprint, split = settings.get('fingerprint') or {}, settings.get('split') or {}
        if fingerprint.get('source') != cls.name:
            raise ConverterError(f'{where}: not a {cls.name} build (its source is '
                                 f'{fingerprint.get("source")!r})')
        try:
            source = cls.from_recorded(fingerprint, split, device)
        except KeyError as err:
            raise ConverterError(f'{where}: the setting {err.args[0]!r} is missing') from None
        except NotImplementedError:
            raise ConverterError(f'{where}: a {cls.name} build cannot be regenerated from '
                                 'its settings (only generated sources can)') from None
        except (TypeError, ValueError, ConverterError) as err:   # settings it cannot use
            raise ConverterError(f'{where}: unusable settings ({err})') from None
        differ = settings_that_differ(fingerprint, source.fingerprint())
        if differ:
            raise ConverterError(f'{where}: this converter would record other settings '
                                 f'({", ".join(differ)}): the folder was built by another '
                                 'version of it or of DiffDRR, and cannot be regenerated')
        return source

    @classmethod
    def from_recorded(cls, fingerprint: dict, split: dict,
                      device: str) -> 'ConversionSource':
        """The source with a folder's recorded ``fingerprint`` and ``split`` settings (what
        :meth:`from_settings` checks and then compares); sources that generate their cases
        implement it.

        Raises:
            KeyError: a setting is missing (:meth:`from_settings` names it).
            NotImplementedError: the source reads inputs it does not record.
        """
        raise NotImplementedError

    def source_settings(self) -> dict:
        """The source's own entries of the fingerprint (after ``render``)."""
        return {}

    def render_settings(self) -> dict:
        """The renderer's settings, the density mapping's description included."""
        return self.make_renderer().settings()

    #: Attributes that hold per-process state (caches a worker rebuilds itself); pickling
    #: a source for a worker process drops them (:meth:`__getstate__`).
    process_caches: Tuple[str, ...] = ('_renderer',)

    @property
    def renderer(self):
        """The source's one :class:`~data_converters.render.XrayRenderer` per process
        (:meth:`make_renderer`, made on first use), with the settings of
        ``fingerprint()['render']``."""
        if getattr(self, '_renderer', None) is None:
            self._renderer = self.make_renderer()
        return self._renderer

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in self.process_caches:
            state[name] = None
        return state

    def render_to_cache(self, path: str, volume_hu, spacing_mm, what: str) -> None:
        """Render every view of a HU volume with :attr:`renderer` (a progress bar on
        stderr unless ``show_progress`` is off) and save the ``(N, H, W)`` float32 line
        integrals as ``.npy`` at ``path``, atomically: the shared renders a source
        caches under ``DIR/.parts/cache``.

        Args:
            path (str): the ``.npy`` file.
            volume_hu (np.ndarray): ``(rows, cols, slices)`` HU.
            spacing_mm: ``(row, col, slice)`` voxel size in mm.
            what (str): names the volume in the progress bar.
        """
        import io
        import sys

        import numpy as np
        from tqdm import tqdm

        from projects.mv2d_xray.core.io import atomic_write
        height, width = self.geometry.image_size
        bar = tqdm(total=self.geometry.num_views, unit='view', file=sys.stderr,
                   desc=f'rendering {what} ({height}x{width})',
                   bar_format='{l_bar}{bar}| {n:.1f}/{total} views [{elapsed}<{remaining}]',
                   disable=not self.show_progress)

        def progress(done: int, total: int) -> None:
            bar.n = done * self.geometry.num_views / total
            bar.refresh()

        try:
            images = self.renderer.render(volume_hu, spacing_mm, progress=progress)
        finally:
            bar.close()
        buf = io.BytesIO()
        np.save(buf, images)
        atomic_write(path, buf.getvalue())

    def make_renderer(self):
        """A :class:`~data_converters.render.XrayRenderer` for the source's acquisition,
        device and density mapping."""
        from data_converters.render import XrayRenderer
        return XrayRenderer(self.geometry, self.device, hu_to_density=self.density)

    def split_settings(self) -> dict:
        """How patients are split (recorded in the folder, used by ``merge``)."""
        return dict(val_fraction=self.val_fraction, seed=self.seed, force_val=[])

    # -- cases -----------------------------------------------------------------------
    def discover(self) -> Tuple[List[dict], Dict[str, str]]:
        """The cases: specs (dicts with at least ``token`` and ``patient_id``) and
        ``{token: reason}`` of inputs that cannot be cases.

        Raises:
            ConverterError: the input cannot be used at all.
        """
        raise NotImplementedError

    def prepare(self, store, pending: List[dict]) -> None:
        """Work shared by the ``pending`` cases, done once per run before them (may cache
        under ``store.cache_path``). Nothing by default."""

    def generated(self, spec: dict) -> bool:
        """Whether :meth:`regenerate` can make the case again (a source that generates its
        cases: all of them by default)."""
        return True

    def encode(self, view: np.ndarray) -> np.ndarray:
        """One view as its PNG holds it (what :meth:`convert` writes), from the float
        image :meth:`regenerate` gives; sources that regenerate implement it."""
        raise NotImplementedError

    def regenerate(self, split: str, spec: dict) -> dict:
        """One converted case again, with what a detectability analysis needs
        (``tools/detectability.py``); for sources made by :meth:`from_settings`, after
        :meth:`prepare` of the cases, and cases that are :meth:`generated`.

        Args:
            split (str): the case's split.
            spec (dict): the case, as :meth:`discover` lists it.

        Returns:
            dict: ``images`` ``(N, H, W)`` float, the views as the PNGs hold them before
            encoding (:meth:`encode`; ``img`` frame, the image's unit: ``metainfo
            ['converter']['image']['unit']``); ``noiseless``, the same without photon
            noise (equal to ``images`` where the build has none); ``findings``, the case's
            :class:`~data_converters.findings.Finding` list; and ``signals``, per finding
            (in that order) its own ``(N, H, W)`` noiseless contribution to the views
            (signed: a void lowers the line integral).
        """
        raise NotImplementedError

    def convert(self, spec: dict, out_dir: str) -> dict:
        """Convert one case: write its PNGs (:func:`~data_converters.cases.finish_case`)
        and return its info item.

        Raises:
            SkipCase: the case cannot be converted (the run records the reason).
        """
        raise NotImplementedError


def register_source(cls: Type[ConversionSource]) -> Type[ConversionSource]:
    """Class decorator: add a source to :data:`SOURCES` (and so to the CLI).

    Raises:
        ConverterError: the class lacks a setting (``name``, ``default_prefix``,
            ``classes``, ``density``, ``cli_help``) or its name is taken; the message names
            the class's module and the setting.
    """
    where = f'{cls.__module__}.{cls.__qualname__}'
    if not issubclass(cls, ConversionSource):
        raise ConverterError(f'{where}: a source must subclass ConversionSource')
    for setting in ('name', 'default_prefix', 'cli_help'):
        if not isinstance(getattr(cls, setting), str) or not getattr(cls, setting):
            raise ConverterError(f'{where}: set {setting} (a non-empty string)')
    if (not isinstance(cls.classes, tuple) or not cls.classes
            or not all(isinstance(c, str) and c for c in cls.classes)):
        raise ConverterError(f'{where}: set classes (a non-empty tuple of class names)')
    if not isinstance(cls.density, DensityMapping):
        raise ConverterError(f'{where}: set density (a DensityMapping)')
    if cls.name in RESERVED_NAMES:
        raise ConverterError(f'{where}: name {cls.name!r} is a command of the CLI')
    known = SOURCES.get(cls.name)
    if known is not None and known is not cls:
        raise ConverterError(f'{where}: name {cls.name!r} is taken by '
                             f'{known.__module__}.{known.__qualname__}')
    SOURCES[cls.name] = cls
    return cls
