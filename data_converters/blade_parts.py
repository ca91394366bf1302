"""Procedural turbine-blade-like parts, voxelised: the material of the blades source.

A part (:class:`BladeShape`) is

* an **airfoil** -- a NACA four-digit section (camber ``m`` at chord position ``p``,
  thickness ratio ``tau``, closed trailing edge) of chord ``chord_mm`` at the root,
  extruded along the span (the part's z axis) over ``span_mm`` with a linear **taper** (the
  tip chord is ``taper * chord_mm``) and a linear **twist** about z (``twist_deg`` at the
  tip);
* a **root block** below it (``root_height_mm`` tall, ``1.2 chord`` wide, as deep as
  ``root_depth_mm``) topped by a **platform** (a plate ``platform_mm`` thick, wider and
  deeper than the airfoil's root section);
* **cooling channels**: ``len(channel_positions)`` straight holes of radius
  ``channel_radius_mm`` along the span through root and airfoil, centred on the camber
  line at the given chord fractions (where the airfoil is thick enough: a wall of at least
  :data:`MIN_WALL_MM` remains).

:func:`voxelise` turns it into a bool mask indexed ``[row i, column j, slice k]`` like every
volume of the converter (rows along ct y, columns along ct x, slices along ct z, spacing
``(pitch, pitch, pitch)``); the part's bounding box is centred in the grid, so the ct
origin (the grid centre) is near the part's centre and the turntable axis is ct z.
:func:`sample_blade` draws a shape within :class:`BladeRanges` from a numpy Generator.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np

#: Thinnest wall (mm) left between a cooling channel and the airfoil's surface.
MIN_WALL_MM = 0.8
#: Points per side of the airfoil polygon.
SECTION_POINTS = 80
#: Empty voxels around the part in the grid.
MARGIN_VOXELS = 3


@dataclass(frozen=True)
class BladeRanges:
    """Ranges ``(low, high)`` the random parts are drawn from (uniform). Spans follow the
    issue's 40-120 mm; the rest are typical of small cast blades."""
    span_mm: Tuple[float, float] = (40.0, 120.0)
    chord_fraction: Tuple[float, float] = (0.3, 0.45)      # root chord / span
    chord_mm: Tuple[float, float] = (15.0, 40.0)           # clip of the root chord
    thickness_ratio: Tuple[float, float] = (0.14, 0.22)
    camber: Tuple[float, float] = (0.04, 0.10)
    camber_position: Tuple[float, float] = (0.3, 0.5)
    twist_deg: Tuple[float, float] = (10.0, 35.0)
    taper: Tuple[float, float] = (0.65, 0.95)
    root_fraction: Tuple[float, float] = (0.15, 0.25)      # root height / span
    platform_mm: Tuple[float, float] = (1.5, 3.0)
    channels: Tuple[int, int] = (2, 5)
    channel_radius_mm: Tuple[float, float] = (0.4, 1.0)


@dataclass(frozen=True)
class BladeShape:
    """One part; lengths in mm, angles in degrees (see the module text)."""
    span_mm: float
    chord_mm: float
    thickness_ratio: float
    camber: float
    camber_position: float
    twist_deg: float
    taper: float
    root_height_mm: float
    root_depth_mm: float
    platform_mm: float
    channel_positions: Tuple[float, ...]
    channel_radius_mm: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out['channel_positions'] = list(self.channel_positions)
        return out


def sample_blade(rng: np.random.Generator, ranges: BladeRanges = BladeRanges()) -> BladeShape:
    """A random part within ``ranges`` (every draw from ``rng``, in a fixed order)."""
    def draw(pair):
        return float(rng.uniform(*pair))
    span = draw(ranges.span_mm)
    chord = float(np.clip(span * draw(ranges.chord_fraction), *ranges.chord_mm))
    tau = draw(ranges.thickness_ratio)
    num_channels = int(rng.integers(ranges.channels[0], ranges.channels[1] + 1))
    positions = tuple(float(p) for p in np.sort(rng.uniform(0.15, 0.7, num_channels)))
    return BladeShape(
        span_mm=span, chord_mm=chord, thickness_ratio=tau, camber=draw(ranges.camber),
        camber_position=draw(ranges.camber_position), twist_deg=draw(ranges.twist_deg),
        taper=draw(ranges.taper), root_height_mm=span * draw(ranges.root_fraction),
        root_depth_mm=chord * tau * 2.5, platform_mm=draw(ranges.platform_mm),
        channel_positions=positions, channel_radius_mm=draw(ranges.channel_radius_mm))


def naca_section(chord: float, tau: float, m: float, p: float,
                 num: int = SECTION_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """A NACA four-digit section with its chord along x from ``-chord/2`` to ``chord/2``.

    Returns:
        tuple: the closed outline ``(2 num, 2)`` (x, y) in mm (upper surface from the
        leading edge, then the lower surface back) and the camber line ``(num, 2)``.
    """
    beta = np.linspace(0.0, math.pi, num)
    x = (1 - np.cos(beta)) / 2                                   # cosine spacing
    yt = 5 * tau * (0.2969 * np.sqrt(x) - 0.1260 * x - 0.3516 * x ** 2 + 0.2843 * x ** 3
                    - 0.1036 * x ** 4)                           # closed trailing edge
    yc = np.where(x < p, m / p ** 2 * (2 * p * x - x ** 2),
                  m / (1 - p) ** 2 * ((1 - 2 * p) + 2 * p * x - x ** 2))
    slope = np.where(x < p, 2 * m / p ** 2 * (p - x), 2 * m / (1 - p) ** 2 * (p - x))
    theta = np.arctan(slope)
    upper = np.stack([x - yt * np.sin(theta), yc + yt * np.cos(theta)], 1)
    lower = np.stack([x + yt * np.sin(theta), yc - yt * np.cos(theta)], 1)
    outline = np.concatenate([upper, lower[::-1]]) - [0.5, 0.0]
    camber = np.stack([x - 0.5, yc], 1)
    return outline * chord, camber * chord


def half_thickness(shape: BladeShape, fraction: float) -> float:
    """Half the airfoil's thickness (mm) at a chord fraction of the tip section (the
    thinnest)."""
    x = fraction
    tau = shape.thickness_ratio
    yt = 5 * tau * (0.2969 * math.sqrt(x) - 0.1260 * x - 0.3516 * x ** 2 + 0.2843 * x ** 3
                    - 0.1036 * x ** 4)
    return yt * shape.chord_mm * shape.taper


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return points @ np.array([[c, s], [-s, c]])


def section_at(shape: BladeShape, height_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    """The airfoil outline and camber line (mm, part frame x/y) at ``height_mm`` above the
    platform (0 .. span): tapered and twisted."""
    t = min(max(height_mm / shape.span_mm, 0.0), 1.0)
    scale = 1.0 - (1.0 - shape.taper) * t
    outline, camber = naca_section(shape.chord_mm * scale, shape.thickness_ratio,
                                   shape.camber, shape.camber_position)
    twist = shape.twist_deg * t
    return _rotate(outline, twist), _rotate(camber, twist)


def channel_centres(shape: BladeShape, height_mm: float) -> np.ndarray:
    """``(C, 2)`` centres (mm, part frame x/y) of the channels that fit (see
    :data:`MIN_WALL_MM`) at ``height_mm`` (the root's section below the platform)."""
    _, camber = section_at(shape, max(height_mm, 0.0))
    keep = [f for f in shape.channel_positions
            if half_thickness(shape, f) >= shape.channel_radius_mm + MIN_WALL_MM]
    grid = np.linspace(0.0, 1.0, len(camber))
    return np.array([[np.interp(f, grid, camber[:, 0]), np.interp(f, grid, camber[:, 1])]
                     for f in keep]).reshape(-1, 2)


def voxelise(shape: BladeShape, pitch_mm: float) -> np.ndarray:
    """The part as a bool mask ``(rows, cols, slices)`` of cubic voxels of ``pitch_mm``
    (rows along ct y, columns along ct x, slices along ct z, root at slice 0's end).

    A voxel is material when its centre is inside the part (the outline polygon of its
    slice, the root block or the platform) and outside every channel.
    """
    from matplotlib.path import Path
    root_bottom = -shape.root_height_mm - shape.platform_mm
    heights = np.arange(root_bottom + pitch_mm / 2, shape.span_mm, pitch_mm)
    root_outline, _ = section_at(shape, 0.0)
    half_w = max(0.6 * shape.chord_mm, np.abs(root_outline[:, 0]).max() + 1.0)
    half_d = max(shape.root_depth_mm / 2, np.abs(root_outline[:, 1]).max() + 1.0)
    extent_x = max(half_w, max(np.abs(section_at(shape, h)[0][:, 0]).max()
                               for h in (0.0, shape.span_mm / 2, shape.span_mm)))
    extent_y = max(half_d, max(np.abs(section_at(shape, h)[0][:, 1]).max()
                               for h in (0.0, shape.span_mm / 2, shape.span_mm)))
    cols = int(math.ceil(2 * extent_x / pitch_mm)) + 2 * MARGIN_VOXELS
    rows = int(math.ceil(2 * extent_y / pitch_mm)) + 2 * MARGIN_VOXELS
    xs = (np.arange(cols) - (cols - 1) / 2) * pitch_mm
    ys = (np.arange(rows) - (rows - 1) / 2) * pitch_mm
    gx, gy = np.meshgrid(xs, ys)                                  # (rows, cols)
    centres = np.stack([gx.ravel(), gy.ravel()], 1)
    block = (np.abs(gx) <= half_w) & (np.abs(gy) <= half_d)
    platform = (np.abs(gx) <= half_w + 1.5) & (np.abs(gy) <= half_d + 1.5)
    mask = np.zeros((rows, cols, len(heights)), dtype=bool)
    for k, h in enumerate(heights):
        if h < -shape.platform_mm:
            layer = block.copy()
        elif h < 0:
            layer = platform.copy()
        else:
            outline, _ = section_at(shape, h)
            layer = Path(outline).contains_points(centres).reshape(rows, cols)
        for cx, cy in channel_centres(shape, h):
            layer &= (gx - cx) ** 2 + (gy - cy) ** 2 > shape.channel_radius_mm ** 2
        mask[:, :, k] = layer
    pad = MARGIN_VOXELS
    return np.pad(mask, ((0, 0), (0, 0), (pad, pad)))
