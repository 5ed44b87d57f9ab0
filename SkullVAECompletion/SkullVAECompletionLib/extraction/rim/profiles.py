"""Where the bone lies along rays: the expected skull's outermost shell, and the input's bone in a window
around it (outer and inner table radii, sub-sample by interpolated crossings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frame import Frame, inside_input
from .sampling import sample_input, sample_model

DETECTION_PRESENCE = 0.25  # thin bone broken into sub-voxel cracks (thin CT slices, resampling) still counts as bone


def _segment_ends(profile: np.ndarray, radii: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample radii where the OUTERMOST run of ``profile >= threshold`` starts and ends, per ray (NaN if none).

    The run's ends are located by linear interpolation between the samples on either side of the crossing.
    """
    above = profile >= threshold
    n_rays, n_samples = profile.shape
    has = above.any(axis=1)
    rows = np.arange(n_rays)
    last = n_samples - 1 - np.argmax(above[:, ::-1], axis=1)
    # Start of the outermost run: the last "below" sample before `last`, plus one.
    below_before = np.where(~above & (np.arange(n_samples)[None, :] < last[:, None]), np.arange(n_samples), -1)
    first = below_before.max(axis=1) + 1
    step = radii[1] - radii[0]

    def crossing(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
        a = profile[rows, np.clip(inner, 0, n_samples - 1)]
        b = profile[rows, np.clip(outer, 0, n_samples - 1)]
        fraction = np.clip((a - threshold) / np.where(np.abs(a - b) > 1e-6, a - b, 1.0), 0.0, 1.0)
        return radii[np.clip(inner, 0, n_samples - 1)] + fraction * step * np.sign(outer - inner)

    outer = np.where(last < n_samples - 1, crossing(last, last + 1), radii[-1])
    inner = np.where(first > 0, crossing(first, first - 1), radii[0])
    return np.where(has, outer, np.nan), np.where(has, inner, np.nan)


def expected_shell(frame: Frame, directions: np.ndarray, radial_step_mm: float,
                   radii_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner radius (mm) of the expected skull's outermost bone along each direction (NaN: none).

    ``radii_mm``: the range of radii to search (default: from the centre to the farthest expected bone).
    """
    # No bone lies in the middle of the cranial cavity: start a quarter of the way out.
    low, high = radii_mm if radii_mm is not None else (0.25 * frame.reach_mm, frame.reach_mm)
    radii = np.arange(low, high + radial_step_mm, radial_step_mm, dtype=np.float32)
    return _segment_ends(sample_model(frame, directions, radii[None, :]), radii)


@dataclass
class RayProfile:
    """What the input's bone looks like along rays, in a window around the expected shell."""

    present: np.ndarray  # bone in the window
    outer: np.ndarray  # outer table radius (mm), NaN without bone
    inner: np.ndarray  # inner table radius (mm)
    in_view: np.ndarray  # the expected inner surface lies inside the input's field of view (a shell to judge)


def input_profile(
    frame: Frame, directions: np.ndarray, expected_outer: np.ndarray, expected_inner: np.ndarray, window_mm: float,
    radial_step_mm: float, order: int = 1, inward_mm: float | None = None, presence: float = 0.5,
) -> RayProfile:
    """The input's bone along each ray between ``expected_inner − inward`` and ``expected_outer + window``
    (``inward`` defaults to ``window``). ``presence``: the interpolated bone fraction that counts as bone there (below
    0.5 bridges cracks thinner than a voxel)."""
    start = np.nan_to_num(expected_inner, nan=0.0) - (window_mm if inward_mm is None else inward_mm)
    stop = np.nan_to_num(expected_outer, nan=0.0) + window_mm
    length = float(np.max(stop - start)) if len(start) else 0.0
    offsets = np.arange(0.0, length + radial_step_mm, radial_step_mm, dtype=np.float32)
    radii = start[:, None] + offsets[None, :]
    values = sample_input(frame, directions, radii, order)
    values[radii > stop[:, None]] = 0.0
    above = values >= 0.5
    present = (values >= presence).any(axis=1) if presence < 0.5 else above.any(axis=1)
    # Outer table: the outermost crossing; inner table: the innermost one (the whole bone within the window).
    n_samples = values.shape[1]
    rows = np.arange(len(values))
    last = n_samples - 1 - np.argmax(above[:, ::-1], axis=1)
    first = np.argmax(above, axis=1)

    def crossing(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
        outside = np.clip(outside, 0, n_samples - 1)
        a, b = values[rows, inside], values[rows, outside]
        fraction = np.clip((a - 0.5) / np.where(np.abs(a - b) > 1e-6, a - b, 1.0), 0.0, 1.0)
        return radii[rows, inside] + fraction * (radii[rows, outside] - radii[rows, inside])

    outer = np.where(present, crossing(last, last + 1), np.nan)
    inner = np.where(present, crossing(first, first - 1), np.nan)
    tip = frame.centre + directions * np.nan_to_num(expected_inner, nan=0.0)[:, None]
    return RayProfile(present, outer, inner, inside_input(frame, tip))
