"""Skull from CT: bone threshold + largest component, on a synthetic CT built here and on the real Cranium CT."""

import shutil

import nrrd
import numpy as np
import pytest

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.volumes import LPS_TO_RAS, read_mask
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.preprocessing.skull_from_ct import skull_from_ct
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, cranial_defect, skull_shell

SHAPE = (64, 72, 60)
SPACING = (3.0, 3.0, 3.0)


def synthetic_ct(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT in HU (int16), the skull that is in it, IJK→RAS): air, soft tissue, a defective skull, a head holder."""
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    skull = skull_shell(SHAPE, matrix) & ~cranial_defect(SHAPE, matrix)
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000.0, np.float32)
    i, j, k = np.indices(SHAPE)
    head = ((i - 32) / 27.0) ** 2 + ((j - 36) / 33.0) ** 2 + ((k - 30) / 29.0) ** 2 <= 1.0
    ct[head] = 40.0  # brain and skin
    ct[skull] = 1000.0
    ct[2:62, 2:5, 2:8] = 700.0  # a head holder: bright, but not touching the skull
    ct += rng.normal(0, 20, SHAPE).astype(np.float32)
    return np.round(ct).astype(np.int16), skull, matrix


def write_ct(path, ct, matrix):
    lps = LPS_TO_RAS @ matrix
    nrrd.write(str(path), ct, {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                               "space origin": lps[:3, 3]}, index_order="F")
    return path


def test_skull_is_bone_without_the_head_holder():
    ct, skull, _ = synthetic_ct()
    extracted = skull_from_ct(ct)
    assert extracted.dtype == np.uint8
    assert np.array_equal(extracted.astype(bool), skull)
    assert not extracted[2:62, 2:5, 2:8].any(), "the head holder is dropped"
    # A threshold above the skull's HU leaves no bone: a clear message, with the flag to change.
    with pytest.raises(InputError, match="--bone-threshold"):
        skull_from_ct(ct, threshold_hu=3000)


def test_threshold_is_adjustable():
    ct, skull, _ = synthetic_ct()
    ct[skull & (np.indices(SHAPE)[2] > 40)] = 250  # thin bone of lower density at the top
    assert skull_from_ct(ct, 300).sum() < skull.sum()
    assert np.array_equal(skull_from_ct(ct, 200).astype(bool), skull)


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros(SHAPE, np.uint8), "this is a mask, not a CT"),
        (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3000, "air at about -1000 HU"),
        (np.zeros((64, 72), np.int16), "3D CT volume"),
    ],
)
def test_not_a_ct(volume, message):
    with pytest.raises(InputError, match=message):
        skull_from_ct(volume)


def test_cli_from_ct_and_the_error_without_the_flag(tmp_path, tiny_bundle, capsys):
    from SkullVAECompletionLib.cli import main

    ct, skull, matrix = synthetic_ct()
    path = write_ct(tmp_path / "head.nrrd", ct, matrix)
    out = tmp_path / "out"
    # Without --from-ct: today's clear error, now naming the flag.
    assert main([str(path), "-o", str(out), "--model", str(tiny_bundle), "--no-stl", "--no-preview"]) == 1
    assert "--from-ct" in capsys.readouterr().err
    code = main([str(path), "-o", str(out), "--model", str(tiny_bundle), "--from-ct", "--bone-threshold", "300",
                 "--defect-type", "cranial", "--no-preview"])
    assert code == 0
    extracted, extracted_matrix, _ = read_mask(out / "head_skull.nrrd")
    assert np.allclose(extracted_matrix, matrix)
    assert np.array_equal(extracted.astype(bool), skull)
    completed, _, _ = read_mask(out / "head_completed.nrrd")
    assert np.all(completed[skull] == 1), "the completion starts from the extracted skull"
    import json

    summary = json.loads((out / "head_summary.json").read_text())
    assert summary["from_ct"] is True and summary["bone_threshold_hu"] == 300


def _cranium_ct():
    """The sample's source CT (Debian invesalius-examples), when it can be had: cached, or apt-get download."""
    fetch = pytest.importorskip("training.fetch_cranium")
    cache = fetch.cache_dir()
    if not (cache / "Cranium.inv3").exists() and not list(cache.glob(f"{fetch.PACKAGE}_*.deb")):
        if shutil.which("apt-get") is None:
            pytest.skip("the Cranium CT is not cached and apt-get is not available to download invesalius-examples")
    try:
        return fetch.load_cranium_hu()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"the Cranium CT could not be obtained (apt-get download invesalius-examples): {error}")


def test_cranium_ct_gives_the_shipped_sample_mask():
    from pathlib import Path

    hu, matrix = _cranium_ct()
    sample, sample_matrix, _ = read_mask(Path(__file__).resolve().parents[1] / "Resources/SampleData/CraniumSkull.nrrd")
    extracted = skull_from_ct(hu)
    assert np.allclose(matrix, sample_matrix)
    assert dice(extracted, sample) >= 0.99
