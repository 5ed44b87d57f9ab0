"""Bad input: each case is refused with a message that names the problem."""

import numpy as np
import pytest

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.preprocessing.validation import validate_mask
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, defective_pair


@pytest.fixture(scope="module")
def skull():
    _, defective, matrix = defective_pair("cranial")
    return defective, matrix


def test_valid_binary_masks_pass_in_several_encodings(skull):
    mask, matrix = skull
    for encoded in (mask, mask.astype(bool), mask.astype(np.int16) * 255, mask.astype(np.float32)):
        result = validate_mask(encoded, matrix)
        assert result.dtype == bool and result.sum() == mask.sum()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: np.zeros_like(m), "empty"),
        (lambda m: _single_voxel(m), "too small to be a skull"),
        (lambda m: np.ones_like(m), "fills 100% of its bounding box"),
        (lambda m: m.astype(np.int16) * 1000 - 1024, "CT intensity image"),
        (lambda m: m.astype(np.float32) * np.random.default_rng(0).uniform(0.5, 2, m.shape), "intensity image"),
        (lambda m: m * np.where(np.arange(m.shape[0]) < 30, 1, 2)[:, None, None].astype(np.uint8), "several labels"),
        (lambda m: m[:, :, 30], "3D volume is needed"),
        (lambda m: m[:, :, 30:31], "3D volume is needed"),
        (lambda m: _with_nan(m), "NaN"),
    ],
)
def test_bad_masks_are_refused(skull, make, message):
    mask, matrix = skull
    with pytest.raises(InputError, match=message):
        validate_mask(make(mask), matrix, name="test volume")


def test_message_names_the_input(skull):
    mask, matrix = skull
    with pytest.raises(InputError, match="^my_node: "):
        validate_mask(np.zeros_like(mask), matrix, name="my_node")


def test_label_selects_one_label(skull):
    mask, matrix = skull
    labels = mask * np.where(np.arange(mask.shape[0]) < 30, 1, 2)[:, None, None].astype(np.uint8)
    labels[labels == 1] = 7
    chosen = validate_mask(labels * 0 + mask * 3, matrix, label=3)
    assert chosen.sum() == mask.sum()
    with pytest.raises(InputError, match="label 5 does not occur"):
        validate_mask(labels, matrix, label=5)


def test_volume_too_small_to_hold_a_skull():
    shape = (20, 20, 20)
    mask = np.zeros(shape, np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    with pytest.raises(InputError, match="too small to hold a skull"):
        validate_mask(mask, centred_ijk_to_ras(shape, (1.0, 1.0, 1.0)))


def test_singular_geometry_is_refused(skull):
    mask, _ = skull
    with pytest.raises(InputError, match="singular"):
        validate_mask(mask, np.diag([1.0, 0.0, 1.0, 1.0]))


def _single_voxel(mask):
    out = np.zeros_like(mask)
    out[30, 30, 30] = 1
    return out


def _with_nan(mask):
    out = mask.astype(np.float32)
    out[0, 0, 0] = np.nan
    return out
