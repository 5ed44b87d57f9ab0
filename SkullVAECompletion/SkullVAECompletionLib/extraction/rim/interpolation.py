"""Surfaces across a hole on its patch: the membrane (harmonic) and the thin plate through the known pixels."""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

SYMMETRIC_ORDERING = "MMD_AT_PLUS_A"  # the surfaces' systems are symmetric: this fill-reducing order suits them best


def grid_adjacency(shape: tuple[int, int]) -> sparse.csr_matrix:
    """4-neighbour adjacency of the pixels of a 2-D grid (row-major)."""
    paths = [sparse.diags([1.0, 1.0], [-1, 1], shape=(n, n)) for n in shape]
    return (sparse.kron(paths[0], sparse.eye(shape[1])) + sparse.kron(sparse.eye(shape[0]), paths[1])).tocsr()


@functools.lru_cache(maxsize=8)
def _smoothness_operator(shape: tuple[int, int], order: int) -> sparse.csr_matrix:
    """The grid Laplacian L with natural (zero-flux) borders (order 1: the membrane's energy) or LᵀL (order 2: the
    thin plate's bending energy; at the grid's borders it also resists slope, which keeps a hole's surface from
    extrapolating the rim's slope; measured better than bending energy alone). One per patch size."""
    laplacian = grid_adjacency(shape)
    laplacian = (sparse.diags(np.asarray(laplacian.sum(axis=1)).ravel()) - laplacian).tocsr()
    return laplacian if order == 1 else (laplacian.T @ laplacian).tocsr()


def _solve_fixed(values: np.ndarray, known: np.ndarray, operator: sparse.csr_matrix) -> np.ndarray:
    """Minimise xᵀ·operator·x over the unknown pixels with the known ones fixed (NaN if none is known), for each of
    the grids stacked in ``values`` (k, *known.shape): one factorisation serves them all."""
    filled = np.where(known, values, np.nan).astype(np.float64)
    if known.all() or not known.any():
        return filled
    # Every unknown pixel is connected to a known one (known pixels exist), so the system is regular.
    free, fixed = np.flatnonzero(~known.ravel()), np.flatnonzero(known.ravel())
    columns = values.reshape(len(values), -1).T.astype(np.float64)
    rhs = -(operator[free][:, fixed] @ columns[fixed])
    solution = spsolve(operator[free][:, free].tocsc(), rhs, permc_spec=SYMMETRIC_ORDERING)
    result = filled.reshape(len(values), -1)
    result[:, free] = solution.reshape(len(free), -1).T
    return result.reshape(values.shape)


def interpolate_surface(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the unknown pixels of a 2-D grid with the harmonic interpolant (the membrane) of the known ones.

    No overshoot and flat across a hole: robust to a noisy rim. NaN everywhere if no pixel is known.
    """
    return interpolate_surfaces(values, known=known)[0]


def interpolate_surfaces(*values: np.ndarray, known: np.ndarray) -> list[np.ndarray]:
    """:func:`interpolate_surface` of several grids with the same known pixels (one factorisation)."""
    return list(_solve_fixed(np.stack(values), known, _smoothness_operator(tuple(known.shape), 1)))


def thin_plate_surface(values: np.ndarray, known: np.ndarray, stiffness: float = 0.0) -> np.ndarray:
    """The thin plate through the known pixels: it carries the rim's slope and curvature across a hole.

    ``stiffness`` 0 interpolates the known values exactly; > 0 is the smoothing spline that minimises
    Σ_known (f − value)² + stiffness·Σ (Δf)² (pixels as units), which follows the rim without copying the noise of
    its voxels (an exact thin plate amplifies it). NaN everywhere if no pixel is known.
    """
    operator = _smoothness_operator(tuple(values.shape), 2)
    if stiffness <= 0 or not known.any():
        return _solve_fixed(values[None], known, operator)[0]
    weights = known.ravel().astype(np.float64)
    system = (sparse.diags(weights) + stiffness * operator).tocsc()
    data = weights * np.nan_to_num(np.asarray(values, np.float64).ravel())
    return spsolve(system, data, permc_spec=SYMMETRIC_ORDERING).reshape(values.shape)
