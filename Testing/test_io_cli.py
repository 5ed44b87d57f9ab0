"""Files and the ``skullvae-complete`` command line, on real NRRD and NIfTI files."""

import os
import stat
import subprocess
import sys

import nibabel
import nrrd
import numpy as np
import pytest
import vtk

from SkullVAECompletionLib.cli import main
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.io import LPS_TO_RAS, read_mask, write_like, write_stl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_nrrd(path, array, ijk_to_ras):
    lps = LPS_TO_RAS @ ijk_to_ras
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]}
    nrrd.write(str(path), np.asarray(array, np.uint8), header, index_order="F")
    return path


def write_nifti(path, array, ijk_to_ras):
    nibabel.save(nibabel.Nifti1Image(np.asarray(array, np.uint8), ijk_to_ras), str(path))
    return path


@pytest.fixture()
def case_files(tmp_path, synthetic_case):
    folder = tmp_path / "inputs"
    folder.mkdir()
    matrix = synthetic_case["ijk_to_ras"].copy()
    matrix[:, 0] *= -1  # a flipped axis, as many scanners store it
    matrix[0, 3] = 100.0
    flipped = synthetic_case["defective"][::-1]
    return {
        "nrrd": write_nrrd(folder / "skull_a.nrrd", flipped, matrix),
        "nifti": write_nifti(folder / "skull_b.nii.gz", flipped, matrix),
        "matrix": matrix,
        "array": flipped,
        "folder": folder,
    }


def test_nrrd_and_nifti_read_the_same_geometry(case_files):
    for key in ("nrrd", "nifti"):
        array, matrix, meta = read_mask(case_files[key])
        assert np.allclose(matrix, case_files["matrix"]), key
        assert np.array_equal(array, case_files["array"]), key
        assert meta.stem in ("skull_a", "skull_b")


@pytest.mark.parametrize("key, suffix", [("nrrd", ".nrrd"), ("nifti", ".nii.gz")])
def test_written_volumes_keep_the_input_grid(case_files, tmp_path, key, suffix):
    array, matrix, meta = read_mask(case_files[key])
    target = write_like(tmp_path / f"out{suffix}", array, meta)
    again, again_matrix, _ = read_mask(target)
    assert np.allclose(again_matrix, matrix) and np.array_equal(again, array)
    with pytest.raises(FileExistsError, match="already exists"):
        write_like(target, array, meta)


def test_stl_is_in_physical_lps_millimetres(tmp_path, synthetic_case):
    implant = synthetic_case["implant"]
    matrix = synthetic_case["ijk_to_ras"]
    path = write_stl(tmp_path / "implant.stl", implant, matrix)
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    points = reader.GetOutput().GetPoints()
    assert reader.GetOutput().GetNumberOfCells() > 100
    centre_lps = np.mean([points.GetPoint(i) for i in range(points.GetNumberOfPoints())], axis=0)
    centre_ras = np.argwhere(implant).mean(0) @ matrix[:3, :3].T + matrix[:3, 3]
    assert np.allclose(centre_lps, centre_ras * [-1, -1, 1], atol=3.0)


def test_unreadable_and_unsupported_files(tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\nthis is not a header\n")
    with pytest.raises(InputError, match="cannot read the file"):
        read_mask(broken)
    with pytest.raises(InputError, match="unsupported file type"):
        read_mask(tmp_path / "skull.png")
    with pytest.raises(InputError, match="file not found"):
        read_mask(tmp_path / "missing.nii.gz")


def test_cli_writes_all_outputs_for_a_folder(case_files, tmp_path, tiny_bundle):
    out = tmp_path / "out"
    code = main([str(case_files["folder"]), "-o", str(out), "--model", str(tiny_bundle), "--defect-type", "cranial"])
    assert code == 0
    for stem, suffix in (("skull_a", ".nrrd"), ("skull_b", ".nii.gz")):
        for name in (f"{stem}_completed{suffix}", f"{stem}_implant{suffix}", f"{stem}_preview.png"):
            assert (out / name).is_file(), name
        completed, matrix, _ = read_mask(out / f"{stem}_completed{suffix}")
        assert np.allclose(matrix, case_files["matrix"])
        assert completed.shape == case_files["array"].shape
        assert np.all(completed >= case_files["array"]), "the completed skull contains the input"
    assert (out / "skull_a_preview.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "skull_a_render.png").exists(), "the 3D render is written only when asked for"
    # A second run does not overwrite without --overwrite, and says so.
    assert main([str(case_files["nrrd"]), "-o", str(out), "--model", str(tiny_bundle)]) == 1
    assert main([str(case_files["nrrd"]), "-o", str(out), "--model", str(tiny_bundle), "--overwrite"]) == 0


def test_cli_offscreen_render(case_files, tmp_path, tiny_bundle):
    out = tmp_path / "rendered"
    args = [str(case_files["nrrd"]), "-o", str(out), "--model", str(tiny_bundle), "--render", "--no-stl"]
    assert main([*args, "--defect-type", "cranial"]) == 0
    render = out / "skull_a_render.png"
    assert render.read_bytes()[:4] == b"\x89PNG" and render.stat().st_size > 5000
    assert not (out / "skull_a_implant.stl").exists()


def test_cli_bad_inputs_exit_non_zero_with_a_message(tmp_path, tiny_bundle, capsys, synthetic_case):
    empty = write_nrrd(tmp_path / "empty.nrrd", np.zeros((64, 72, 60), np.uint8), synthetic_case["ijk_to_ras"])
    out = tmp_path / "out"
    assert main([str(empty), "-o", str(out), "--model", str(tiny_bundle)]) == 1
    assert "the skull mask is empty" in capsys.readouterr().err
    assert not any(out.iterdir()), "nothing written for a failed input"
    assert main([str(tmp_path / "nope.nrrd"), "-o", str(out), "--model", str(tiny_bundle)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([str(empty), "-o", str(out), "--model", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert main([str(empty), "-o", str(out), "--model", str(tiny_bundle), "--defect-type", "vertex"]) == 2
    assert "--defect-type vertex: model tiny-test-model 0.0.1 has no such class; choose one of auto, cranial, facial" \
        in capsys.readouterr().err


def test_cli_read_only_output_folder(case_files, tmp_path, tiny_bundle, capsys, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(out, os.W_OK):  # root ignores permission bits: make the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(out) else real_access(p, mode))
    try:
        assert main([str(case_files["nrrd"]), "-o", str(out), "--model", str(tiny_bundle)]) == 2
        assert "not writable" in capsys.readouterr().err
        assert not any(out.iterdir())
    finally:
        out.chmod(stat.S_IRWXU)


def test_console_entry_point_runs_as_a_module():
    completed = subprocess.run(
        [sys.executable, "-m", "SkullVAECompletionLib.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "SkullVAECompletion")},
        check=False,
    )
    assert completed.returncode == 0 and "--output-dir" in completed.stdout
