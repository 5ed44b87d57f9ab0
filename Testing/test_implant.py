"""Implant extraction: the defect is kept, misregistration speckle and stray islands are not."""

import numpy as np
import pytest
from scipy import ndimage

from SkullVAECompletionLib.extraction.implant import (
    core_distance_mm,
    decoded_implant_region,
    implant_at_input_resolution,
    near_input_bone,
    remove_small_islands,
)
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.preprocessing.geometry import GridSpec, plan_mapping, to_model_grid
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, cranial_defect, skull_shell

GRID = GridSpec(shape=(48, 64, 48), spacing_mm=4.0)
SHAPE = (96, 112, 92)
SPACING = (2.0, 2.0, 2.0)


def shell_with_hole():
    """A skull shell with a 30 mm cranial hole: matrix, complete, hole, defective, its mapping and model-grid input."""
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    complete = skull_shell(SHAPE, matrix)
    hole = cranial_defect(SHAPE, matrix, radius_mm=30)
    defective = complete & ~hole
    mapping = plan_mapping(defective, matrix, GRID)
    return matrix, complete, hole, defective, mapping, to_model_grid(defective, mapping)


def test_decoded_skull_slightly_off_the_input_gives_only_the_defect():
    matrix, complete, hole, defective, mapping, model_input = shell_with_hole()
    # A "decoded" complete skull, shifted by one model voxel and slightly thicker: speckle everywhere along the bone.
    decoded = np.roll(to_model_grid(complete, mapping), 1, axis=1)
    decoded = np.clip(decoded * 1.3, 0, 1)
    raw_difference = (decoded > 0.5) & (model_input < 0.5)
    region = decoded_implant_region(decoded, model_input, GRID.spacing_mm)
    assert raw_difference.sum() > 2 * region.sum(), "the raw difference is mostly speckle"
    implant = implant_at_input_resolution(decoded, region, defective, mapping, smoothing=True)
    truth = complete & hole
    assert not np.any(implant.astype(bool) & defective)
    assert dice(implant, truth) > 0.7
    # Nothing far from the defect survives.
    far = ~cranial_defect(SHAPE, matrix, radius_mm=45)
    assert (implant.astype(bool) & far).sum() < 0.02 * implant.sum()


def test_the_bone_threshold_reads_a_faint_decode():
    """A decoder that blurs thin bone gives it a probability below 0.5: a lower threshold still reads it."""
    _, complete, hole, defective, mapping, model_input = shell_with_hole()
    faint = 0.45 * to_model_grid(complete, mapping)
    assert not decoded_implant_region(faint, model_input, GRID.spacing_mm).any(), "0.45 is not bone at the default 0.5"
    region = decoded_implant_region(faint, model_input, GRID.spacing_mm, threshold=0.2)
    implant = implant_at_input_resolution(faint, region, defective, mapping, threshold=0.2)
    assert dice(implant, complete & hole) > 0.7


def test_no_defect_means_no_implant():
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    complete = skull_shell(SHAPE, matrix)
    mapping = plan_mapping(complete, matrix, GRID)
    model_input = to_model_grid(complete, mapping)
    decoded = np.roll(model_input, 1, axis=2)
    region = decoded_implant_region(decoded, model_input, GRID.spacing_mm)
    implant = implant_at_input_resolution(decoded, region, complete, mapping)
    assert implant.sum() == 0


def test_small_islands_are_removed():
    mask = np.zeros((40, 40, 40), bool)
    mask[5:25, 5:25, 5:15] = True  # 4 ml at 1 mm
    mask[35, 35, 35] = True  # a speck
    cleaned = remove_small_islands(mask, np.array([1.0, 1.0, 1.0]))
    assert cleaned.sum() == mask.sum() - 1


@pytest.mark.parametrize("spacing_mm", [1.0, 2.5, 2.667, 3.2, 3.84, 4.0])
def test_near_bone_is_the_distance_transform_within_the_core_distance(spacing_mm):
    rng = np.random.default_rng(int(spacing_mm * 100))
    model_input = (rng.random((30, 34, 28)) < 0.03).astype(np.float32)
    distance = ndimage.distance_transform_edt(model_input < 0.5, sampling=spacing_mm)
    expected = distance <= core_distance_mm(spacing_mm)
    np.testing.assert_array_equal(near_input_bone(model_input, spacing_mm), expected)
