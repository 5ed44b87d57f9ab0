"""Files and the ``skullvae-complete`` command line, on real NRRD and NIfTI files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import nrrd
import numpy as np
import pytest
import vtk

from SkullVAECompletionLib.cli import main
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.surfaces import write_stl
from SkullVAECompletionLib.imageio.volumes import LPS_TO_RAS, read_mask, write_like

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


def _run_args(inputs, out, tiny_bundle, *extra):
    return [*(str(p) for p in inputs), "-o", str(out), "--model", str(tiny_bundle), "--defect-type", "cranial",
            "--no-preview", "--no-distance-map", *extra]


def _owner(out, stem):
    return json.loads((out / f"{stem}_summary.json").read_text())["input"]


def _snapshot(out, prefix):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith(prefix)}


def test_inputs_with_the_same_name_get_their_own_outputs(case_files, tmp_path, tiny_bundle):
    """skull.nrrd and skull.nii.gz side by side: skull_nrrd_* and skull_nii_gz_*, together or in separate runs."""
    folder = tmp_path / "same"
    folder.mkdir()
    nrrd_path = write_nrrd(folder / "skull.nrrd", case_files["array"], case_files["matrix"])
    other = case_files["array"][::-1].copy()  # a different skull: its hole is elsewhere
    nifti_path = write_nifti(folder / "skull.nii.gz", other, case_files["matrix"])
    out = tmp_path / "out"
    assert main(_run_args([folder], out, tiny_bundle)) == 0
    for stem, path, bone, suffix in (("skull_nrrd", nrrd_path, case_files["array"], ".nrrd"),
                                     ("skull_nii_gz", nifti_path, other, ".nii.gz")):
        assert _owner(out, stem) == str(path)
        completed, _, _ = read_mask(out / f"{stem}_completed{suffix}")
        implant, _, _ = read_mask(out / f"{stem}_implant{suffix}")
        assert np.array_equal(completed > 0, (bone > 0) | (implant > 0)), f"{stem} holds its own input's result"
        assert (out / f"{stem}_implant.stl").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith("skull_") and not p.name.startswith(
        ("skull_nrrd_", "skull_nii_gz_"))]
    # A later run of one of them alone gets the same names, and --overwrite replaces only its own files.
    others = _snapshot(out, "skull_nrrd_")
    assert main(_run_args([nifti_path], out, tiny_bundle)) == 1, "its outputs exist: not without --overwrite"
    assert main(_run_args([nifti_path], out, tiny_bundle, "--overwrite", "--no-stl")) == 0
    assert _snapshot(out, "skull_nrrd_") == others
    assert not (out / "skull_nii_gz_implant.stl").exists(), "its own earlier STL went with its earlier run"
    assert _owner(out, "skull_nii_gz") == str(nifti_path)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no staging or temporary files left"


def test_overwrite_never_replaces_another_inputs_outputs(case_files, tmp_path, tiny_bundle, capsys):
    """Two inputs whose outputs would share names (same file name, different folders): --overwrite refuses."""
    first, second = tmp_path / "a" / "skull.nrrd", tmp_path / "b" / "skull.nrrd"
    for path, array in ((first, case_files["array"]), (second, case_files["array"][::-1].copy())):
        path.parent.mkdir()
        write_nrrd(path, array, case_files["matrix"])
    out = tmp_path / "out"
    assert main(_run_args([first], out, tiny_bundle)) == 0
    before = _snapshot(out, "skull_")
    capsys.readouterr()
    assert main(_run_args([second], out, tiny_bundle, "--overwrite")) == 1
    assert "belong to another input" in capsys.readouterr().err
    assert _snapshot(out, "skull_") == before, "the other input's files are untouched"
    assert main(_run_args([first], out, tiny_bundle, "--overwrite")) == 0, "its own outputs are replaced"
    assert _owner(out, "skull") == str(first)


def test_concurrent_runs_into_one_folder_never_mix_files(case_files, tmp_path, tiny_bundle):
    """Two CLI processes at once into one output folder: different inputs keep their own files, and two inputs
    competing for the same names (same file name from two folders, --overwrite) leave one complete set."""
    first, second = tmp_path / "a" / "skull.nrrd", tmp_path / "b" / "skull.nrrd"
    arrays = {first: case_files["array"], second: case_files["array"][::-1].copy()}
    for path, array in arrays.items():
        path.parent.mkdir()
        write_nrrd(path, array, case_files["matrix"])
    other = case_files["nifti"]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "SkullVAECompletion")}
    runs = [subprocess.Popen([sys.executable, "-m", "SkullVAECompletionLib.cli",
                              *_run_args(inputs, out, tiny_bundle, "--overwrite", "-q")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for inputs in ([first, other], [second])]
    outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    owner = Path(_owner(out, "skull"))
    assert owner in arrays, outcomes
    completed, _, _ = read_mask(out / "skull_completed.nrrd")
    implant, _, _ = read_mask(out / "skull_implant.nrrd")
    assert np.array_equal(completed > 0, (arrays[owner] > 0) | (implant > 0)), "the masks are the owner's"
    loser = second if owner == first else first
    code = outcomes[0 if loser == first else 1]
    assert code[0] == 1 and "belong to another input" in code[1], outcomes
    assert _owner(out, "skull_b") == str(other), "the other input completed beside them"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no staging or temporary files left"


def test_console_entry_point_runs_as_a_module():
    completed = subprocess.run(
        [sys.executable, "-m", "SkullVAECompletionLib.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "SkullVAECompletion")},
        check=False,
    )
    assert completed.returncode == 0 and "--output-dir" in completed.stdout
