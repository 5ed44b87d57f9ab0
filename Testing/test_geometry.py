"""Geometry: defect-independent placement, orientation handling, and the model-grid round trip."""

import dataclasses

import numpy as np
import pytest

from SkullVAECompletionLib.masks import nonzero_bounds
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.preprocessing.geometry import (
    GridSpec,
    _pool_factors,
    _pool_phase,
    plan_mapping,
    planning_counts,
    pooled_counts,
    pooled_occupancy,
    to_input_grid,
    to_model_grid,
    voxel_spacing,
)
from SkullVAECompletionLib.synthetic import (
    centred_ijk_to_ras,
    cranial_defect,
    facial_defect,
    reoriented,
    skull_shell,
)

GRID = GridSpec(shape=(48, 64, 48), spacing_mm=4.0)
SHAPE = (112, 128, 104)
SPACING = (1.8, 1.8, 1.9)


@pytest.fixture(scope="module")
def skull():
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    return skull_shell(SHAPE, matrix), matrix


def test_placement_does_not_depend_on_the_defect(skull):
    complete, matrix = skull
    reference = plan_mapping(complete, matrix, GRID).model_to_ras
    for removed in (
        cranial_defect(SHAPE, matrix, centre_ras=(0, 10, 75), radius_mm=45),  # large, at the top edge
        cranial_defect(SHAPE, matrix, centre_ras=(65, 0, 30), radius_mm=40),  # large, at the lateral edge
        facial_defect(SHAPE, matrix, front_mm=50, top_mm=15),  # removes the whole front
    ):
        defective = complete & ~removed
        assert removed.sum() > 0.05 * complete.sum()
        moved = plan_mapping(defective, matrix, GRID).model_to_ras
        shift_mm = np.abs(moved[:3, 3] - reference[:3, 3])
        assert np.all(shift_mm <= GRID.spacing_mm), shift_mm


@pytest.mark.parametrize(
    "permutation, flips",
    [((0, 1, 2), (0,)), ((2, 1, 0), ()), ((1, 2, 0), (0, 2)), ((0, 2, 1), (1,))],
)
def test_flipped_and_permuted_copies_map_to_the_same_model_volume(skull, permutation, flips):
    complete, matrix = skull
    reference = to_model_grid(complete, plan_mapping(complete, matrix, GRID))
    array, new_matrix = reoriented(complete, matrix, permutation, flips)
    assert np.allclose(voxel_spacing(new_matrix), np.asarray(SPACING)[list(permutation)])
    mapping = plan_mapping(array, new_matrix, GRID)
    moved = to_model_grid(array, mapping)
    assert dice(moved > 0.5, reference > 0.5) > 0.95
    assert np.abs(moved - reference).mean() < 0.02


def test_oblique_volume_maps_like_the_axis_aligned_one(skull):
    complete, matrix = skull
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique = matrix.copy()
    oblique[:3, :3] = rotation @ matrix[:3, :3]
    oblique[:3, 3] = rotation @ matrix[:3, 3]
    # The same physical skull sampled on the rotated grid.
    on_oblique_grid = skull_shell(SHAPE, oblique)
    reference = to_model_grid(complete, plan_mapping(complete, matrix, GRID))
    moved = to_model_grid(on_oblique_grid, plan_mapping(on_oblique_grid, oblique, GRID))
    assert dice(moved > 0.5, reference > 0.5) > 0.9


def test_round_trip_to_model_grid_and_back_overlays_the_input(skull):
    complete, matrix = skull
    mapping = plan_mapping(complete, matrix, GRID)
    model = to_model_grid(complete, mapping)
    assert model.dtype == np.float32 and model.shape == GRID.shape
    assert 0.0 <= model.min() and model.max() <= 1.0
    block, lo = to_input_grid(model, mapping)
    back = np.zeros(SHAPE, bool)
    hi = lo + np.asarray(block.shape)
    back[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = block > 0.5
    assert dice(back, complete) > 0.85
    # Overlay, not a shift: the centres of mass agree to a fraction of a model voxel.
    shift = np.argwhere(back).mean(0) - np.argwhere(complete).mean(0)
    assert np.all(np.abs(shift * np.asarray(SPACING)) < 0.5 * GRID.spacing_mm)


def test_grid_spec_round_trip():
    assert GridSpec.from_dict(GRID.to_dict()) == GRID
    assert np.allclose(GRID.extent_mm, [192, 256, 192])


@pytest.mark.parametrize("box", [None, ((10, 20, 5), (60, 90, 40)), ((100, 0, 90), (112, 9, 104))])
def test_separable_resampling_matches_scipy_on_flipped_and_permuted_grids(skull, box):
    """The fast path (three small products over the model slices a block reaches) is trilinear interpolation."""
    from dataclasses import replace

    from scipy import ndimage

    complete, matrix = skull
    mapping = plan_mapping(complete, matrix, GRID)
    field = np.random.default_rng(0).random(GRID.shape, dtype=np.float32)
    permuted = matrix[:, [2, 0, 1, 3]] * np.array([1, -1, 1, 1])  # axes permuted, one of them flipped
    permuted[:3, 3] = matrix[:3, 3]
    for ijk_to_ras in (matrix, permuted):
        moved = replace(mapping, ijk_to_ras=ijk_to_ras, input_shape=SHAPE)
        lo, hi = (None, None) if box is None else (np.array(box[0]), np.array(box[1]))
        block, corner = to_input_grid(field, moved, lo, hi)
        shift = np.eye(4)
        shift[:3, 3] = corner
        expected = ndimage.affine_transform(field, moved.input_to_model @ shift, output_shape=block.shape, order=1,
                                            mode="constant", cval=0.0, prefilter=False)
        assert np.allclose(block, expected, atol=1e-5)


def _block_average(mask: np.ndarray, ijk_to_ras: np.ndarray, target_mm: float) -> np.ndarray:
    """Plain float64 block means on the pooling blocks pooled_occupancy uses (the reference for its counting)."""
    factors = np.asarray(_pool_factors(voxel_spacing(ijk_to_ras), target_mm))
    lo, hi = nonzero_bounds(mask)
    lo = lo - (lo - _pool_phase(ijk_to_ras, tuple(factors))) % factors
    hi = hi + (-(hi - lo)) % factors
    padded = np.zeros(hi - lo)
    source_lo, source_hi = np.maximum(lo, 0), np.minimum(hi, mask.shape)
    padded[tuple(slice(a - b, c - b) for a, b, c in zip(source_lo, lo, source_hi, strict=True))] = mask[
        tuple(slice(a, c) for a, c in zip(source_lo, source_hi, strict=True))]
    blocks = (hi - lo) // factors
    return padded.reshape(blocks[0], factors[0], blocks[1], factors[1], blocks[2], factors[2]).mean(axis=(1, 3, 5))


@pytest.mark.parametrize("seed", range(12))
def test_pooled_occupancy_is_the_block_average(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 40, 3))
    mask = rng.random(shape) < 0.3
    mask = [mask, mask.astype(np.uint8), np.asfortranarray(mask.astype(np.uint8)), mask[::-1]][seed % 4]
    matrix = np.diag([*rng.uniform(0.15, 1.5, 3), 1.0])
    matrix[:3, 3] = rng.uniform(-50, 50, 3)
    target = float(rng.uniform(0.5, 5.0))  # the finest voxels and coarsest targets give > 255 voxels per block
    pooled, pooled_to_ras = pooled_occupancy(mask, matrix, target)
    np.testing.assert_allclose(pooled, _block_average(np.asarray(mask), matrix, target), rtol=1e-6, atol=1e-7)
    assert pooled.dtype == np.float32
    factors = _pool_factors(voxel_spacing(matrix), target)
    np.testing.assert_allclose(np.linalg.norm(pooled_to_ras[:3, :3], axis=0), voxel_spacing(matrix) * factors)


@pytest.mark.parametrize("layout", ["F", "C", "bool", "int16", "strided"])
def test_nonzero_bounds_of_every_layout(layout):
    rng = np.random.default_rng(3)
    for shape in [(8, 16, 5), (7, 9, 11), (24, 8, 3)]:
        mask = np.zeros(shape, np.uint8)
        points = [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(3)]
        for point in points:
            mask[point] = 2
        array = {"F": np.asfortranarray(mask), "C": mask, "bool": mask.astype(bool), "int16": mask.astype(np.int16),
                 "strided": np.asfortranarray(np.repeat(mask, 2, axis=0))[::2]}[layout]
        lo, hi = nonzero_bounds(array)
        expected = np.asarray(points)
        np.testing.assert_array_equal(lo, expected.min(axis=0))
        np.testing.assert_array_equal(hi, expected.max(axis=0) + 1)
        assert nonzero_bounds(np.zeros_like(array)) is None


@pytest.mark.parametrize("seed", range(8))
def test_model_grid_from_the_planning_counts_is_the_same(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(20, 60, 3))
    mask = np.asfortranarray(rng.random(shape) < 0.2)
    spacing = [rng.uniform(0.4, 1.2, 3), np.full(3, 0.5), np.array([0.48, 0.48, 0.75])][seed % 3]
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = rng.uniform(-40, 40, 3)
    grid = GridSpec(shape=(16, 20, 16), spacing_mm=float(rng.choice([3.2, 4.0])))
    counts = planning_counts(mask, matrix, grid)
    np.testing.assert_array_equal(counts.occupancy()[0], pooled_occupancy(mask, matrix, grid.spacing_mm / 2)[0])
    for scale in (1.0, 0.97, 1.1):
        mapping = plan_mapping(mask, matrix, dataclasses.replace(grid, spacing_mm=grid.spacing_mm * scale))
        np.testing.assert_array_equal(to_model_grid(mask, mapping, counts), to_model_grid(mask, mapping))
    # Blocks twice the planning blocks: merged, not counted again (and the same integers).
    factors = tuple(2 * f for f in counts.factors)
    merged = counts.merged(factors)
    direct = pooled_counts(mask, matrix, float(np.max(spacing * np.asarray(factors))) + 1e-9)
    if direct.factors == factors:
        np.testing.assert_array_equal(merged.counts, direct.counts)
        np.testing.assert_array_equal(merged.lo, direct.lo)
