"""The sphere of detection directions: nearly uniform directions, their neighbour graph and a search tree."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree


@functools.lru_cache(maxsize=4)
def detection_sphere(step_deg: float) -> tuple[np.ndarray, sparse.csr_matrix, cKDTree]:
    """The detection directions, their neighbour graph and a search tree over them (the same for every skull and
    γ: built once)."""
    directions = fibonacci_directions(step_deg)
    directions.flags.writeable = False
    return directions, neighbour_graph(directions, step_deg), cKDTree(directions)


def fibonacci_directions(step_deg: float) -> np.ndarray:
    """Nearly uniform unit vectors about ``step_deg`` apart (Fibonacci sphere)."""
    count = max(64, int(round(4.0 * math.pi / math.radians(step_deg) ** 2)))
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    ring = np.sqrt(1.0 - z * z)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def neighbour_graph(directions: np.ndarray, step_deg: float) -> sparse.csr_matrix:
    """Symmetric adjacency of the directions closer than 1.6 steps."""
    reach = 2.0 * math.sin(math.radians(1.6 * step_deg) / 2.0)
    pairs = cKDTree(directions).query_pairs(reach, output_type="ndarray")
    n = len(directions)
    rows, cols = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
    return sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
