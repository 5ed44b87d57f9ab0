"""Benchmark: time of each implant design option, the quality report and the STL on a 512×512×216 skull at 0.4 mm.

Not a test. Run from the repository root::

    source .venv/bin/activate
    PYTHONPATH=SkullVAECompletion:. python benchmarks/benchmark_design.py

The skull: a synthetic skull-like shell (``SkullVAECompletionLib.synthetic``, 6 mm bone) placed so that its vault
fills a 512×512×216 grid of 0.4 mm voxels (204.8 × 204.8 × 86.4 mm), with a round cranial defect of 30 mm
radius; the implant is the true one (complete ∧ hole). Each option is timed alone with ``design_implant`` (the
time it adds to a completion), best of ``--repeat`` runs; then all together, the quality report and the STL with and
without ``--max-triangles 20000``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from SkullVAECompletionLib.design.quality import quality_report
from SkullVAECompletionLib.design.shaping import DesignOptions, design_implant
from SkullVAECompletionLib.imageio.surfaces import decimate_surface, hausdorff_mm, mask_to_surface, surface_topology
from SkullVAECompletionLib.synthetic import ShellSpec, centred_ijk_to_ras, cranial_defect, skull_shell

SHAPE = (512, 512, 216)
SPACING = (0.4, 0.4, 0.4)
SKULL_CENTRE = (0.0, 0.0, -40.0)  # the vault (75 mm above the centre) ends inside the 86 mm high grid
HOLE_CENTRE = (35.0, 20.0, 15.0)
HOLE_RADIUS = 30.0
OPTIONS = {
    "thickness 3 mm": DesignOptions(thickness_mm=3.0),
    "flange 5 mm": DesignOptions(flange_mm=5.0),
    "clearance 1 mm": DesignOptions(clearance_mm=1.0),
    "all three": DesignOptions(thickness_mm=3.0, flange_mm=5.0, clearance_mm=1.0),
}


def build_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(defective uint8, implant uint8, IJK→RAS), built slab by slab to keep the float coordinates small."""
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    spec = ShellSpec(thickness_mm=6.0, base_cut_mm=-60.0)
    defective = np.zeros(SHAPE, np.uint8)
    implant = np.zeros(SHAPE, np.uint8)
    for start in range(0, SHAPE[2], 24):
        stop = min(start + 24, SHAPE[2])
        slab = matrix.copy()
        slab[:3, 3] = matrix[:3, :3] @ [0, 0, start] + matrix[:3, 3]
        shape = (SHAPE[0], SHAPE[1], stop - start)
        shell = skull_shell(shape, slab, spec, SKULL_CENTRE)
        hole = cranial_defect(shape, slab, HOLE_CENTRE, HOLE_RADIUS)
        defective[:, :, start:stop] = shell & ~hole
        implant[:, :, start:stop] = shell & hole
    return defective, implant, matrix


def timed(function, repeat: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    defective, implant, matrix = build_case()
    print(f"skull {SHAPE} at {SPACING[0]} mm built in {time.perf_counter() - start:.1f} s; "
          f"implant {implant.sum() * 0.064 / 1000:.1f} ml")
    figures: dict[str, float] = {}
    designed = {}
    for name, options in OPTIONS.items():
        seconds, result = timed(lambda o=options: design_implant(implant, defective, matrix, o), args.repeat)
        designed[name] = result.implant
        figures[f"design: {name}"] = seconds
        steps = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
        print(f"design {name:16s} {seconds:6.2f} s   ({steps})")
    seconds, report = timed(lambda: quality_report(designed["all three"], defective, matrix, defect=implant),
                            args.repeat)
    figures["quality report"] = seconds
    print(f"quality report         {seconds:6.2f} s   {json.dumps(report.as_dict())}")
    seconds, surface = timed(lambda: mask_to_surface(designed["all three"], matrix), 1)
    figures["surface"] = seconds
    print(f"surface                {seconds:6.2f} s   {surface_topology(surface)}")
    seconds, decimated = timed(lambda: decimate_surface(surface, 20000), 1)
    figures["decimation to 20k"] = seconds
    print(f"decimation to 20k      {seconds:6.2f} s   {decimated.triangles_before} → {decimated.triangles} triangles, "
          f"Hausdorff {hausdorff_mm(surface, decimated.surface):.3f} mm, {surface_topology(decimated.surface)}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
