"""The completion pipeline the Slicer module and the command line share: complete → design → surface → quality
report → summary.

Both front ends call :func:`complete_and_design` (or :func:`design_completion` for a design change on a cached
completion) and read everything they show or write from the :class:`DesignedImplant` it returns: the implant STL
(:meth:`DesignedImplant.write_stl`), the quality report and its distance map (:meth:`DesignedImplant.quality`,
computed on first use: it is not on the path of what the user waits for), and the summary record
(:func:`summary_record`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .design.quality import QualityReport, quality_report
from .design.shaping import apply_design
from .inference.detection import BY_CLASS_HEAD
from .options import DEFAULT_STL_COORDINATES, CompletionOptions, DesignOptions

ProgressCallback = Any  # callable(fraction, message); see inference.progress.ProgressCallback


def complete(completer: Any, encoded: Any, options: CompletionOptions, progress: ProgressCallback | None = None,
             uncertainty: bool = True) -> Any:
    """The completion (:class:`~.inference.results.CompletionResult`) of an encoded skull with ``options``;
    ``uncertainty=False`` skips the uncertainty map (the γ slider's preview)."""
    return completer.complete(
        encoded,
        gamma=options.gamma,
        defect_type=options.defect_type,
        smoothing=options.smoothing,
        uncertainty_samples=options.uncertainty_samples if uncertainty else 0,
        method=options.method,
        extraction=options.extraction,
        progress=progress,
    )


def complete_and_design(completer: Any, encoded: Any, ijk_to_ras: np.ndarray, options: CompletionOptions,
                        progress: ProgressCallback | None = None, uncertainty: bool = True) -> DesignedImplant:
    """Complete ``encoded`` and shape its implant with ``options.design``."""
    return design_completion(complete(completer, encoded, options, progress, uncertainty), ijk_to_ras,
                             options.design)


def design_completion(completion: Any, ijk_to_ras: np.ndarray, design: DesignOptions | None = None
                      ) -> DesignedImplant:
    """The implant of ``completion`` shaped by ``design`` (None: as completed); no decoding."""
    design = design or DesignOptions()
    result, designed = apply_design(completion, ijk_to_ras, design)
    return DesignedImplant(completion, result, design, np.asarray(ijk_to_ras, dtype=float), list(designed.warnings))


@dataclass(eq=False)  # compared by identity: it holds arrays
class DesignedImplant:
    """A completion and its designed implant, with what is made from them on first use (surface, quality report).

    ``completion`` is the engine's result before design (its implant tells the report where the defect is),
    ``result`` the designed one: completed = input ∪ designed implant.
    """

    completion: Any
    result: Any
    design: DesignOptions
    ijk_to_ras: np.ndarray
    warnings: list[str] = field(default_factory=list)  # the design's (also in result.warnings)
    _surface: Any = field(default=None, init=False, repr=False)
    _quality: QualityReport | None = field(default=None, init=False, repr=False)
    _measured: bool = field(default=False, init=False, repr=False)

    @property
    def empty(self) -> bool:
        """No implant (no defect found at this γ): no surface, no report, no STL."""
        return not np.any(self.result.implant)

    @property
    def measured(self) -> bool:
        """Whether the quality report has been computed (:meth:`quality`)."""
        return self._measured

    def surface(self) -> Any:
        """The implant's surface (vtkPolyData, RAS mm) that carries the distance map; None for an empty implant.

        The smoothed voxel surface, which the quality report measures (its area); the STL follows the rim
        stage's own surfaces where they describe the implant (:meth:`write_stl`).
        """
        if self._surface is None and not self.empty:
            from .imageio.surfaces import mask_to_surface  # noqa: PLC0415  (VTK: only when a surface is asked for)

            self._surface = mask_to_surface(self.result.implant, self.ijk_to_ras)
        return self._surface

    def quality(self, distance_map: bool = True) -> QualityReport | None:
        """The quality report (None for an empty implant), computed once; ``distance_map`` adds the distance of each
        surface vertex to the skull to :meth:`surface` (the point array ``DistanceToSkull_mm``)."""
        if not self._measured:
            if not self.empty:
                surface = self.surface() if distance_map else None
                self._quality = quality_report(self.result.implant, self.completion.defective, self.ijk_to_ras,
                                               defect=self.completion.implant, surface=surface)
            self._measured = True
        return self._quality

    @property
    def stl_field(self) -> list | None:
        """The rim stage's signed fields the STL is cut from, unless a design option reshaped the implant."""
        return None if self.design.changes_shape else getattr(self.result, "implant_field", None)

    def write_stl(self, path: str | os.PathLike, coordinate_system: str = DEFAULT_STL_COORDINATES,
                  max_triangles: int | None = None, overwrite: bool = False) -> Path | None:
        """Write the implant as binary STL (mm; LPS as Slicer writes STL files); None for an empty implant.

        One surface for every front end: the rim stage's own surfaces (sub-voxel, unsmoothed) when they describe
        the implant, else the smoothed voxel surface; ``max_triangles`` decimates it within 0.2 mm.
        """
        if self.empty:
            return None
        from .imageio.surfaces import write_stl  # noqa: PLC0415

        return write_stl(path, self.result.implant, self.ijk_to_ras, coordinate_system, overwrite=overwrite,
                         max_triangles=max_triangles, field=self.stl_field)

    def summary(self, model_id: str, model_version: str, quality: bool = True, **extra: Any) -> dict[str, Any]:
        """The summary record (:func:`summary_record`); ``quality=False`` leaves the report out unless it has been
        measured already (it is then None in the record)."""
        report = self.quality() if quality else self._quality
        return summary_record(self.result, model_id, model_version, self.design, report, **extra)


def summary_record(result: Any, model_id: str, model_version: str, options: Any, fit: QualityReport | None,
                   **extra: Any) -> dict[str, Any]:
    """What a run did, enough to judge and to redo it: the CLI's NAME_summary.json, the Slicer node's attribute.

    ``result`` is the (designed) completion result, ``options`` the :class:`~.options.DesignOptions`, ``fit`` the
    quality report (kept under the key ``"fit"``).
    """
    record = {
        "detected_class": result.detected_type,
        "detected_by": getattr(result, "detected_by", BY_CLASS_HEAD),  # or BY_DEFECT_POSITION (detection.py)
        "confidence": round(float(result.confidence), 4),
        "defect_class": result.defect_type,
        "class_probabilities": {k: round(float(v), 4) for k, v in getattr(result, "class_probabilities", {}).items()},
        "gamma": round(float(result.gamma), 4),
        "method": getattr(result, "method", None),
        "extraction": getattr(result, "extraction", None),
        "message": getattr(result, "message", ""),  # why the implant is empty or partial ("" when all went well)
        "holes": [{"kind": hole.kind, "area_mm2": round(float(hole.area_mm2), 1)}
                  for hole in getattr(result, "holes", [])],
        "implant_volume_ml": round(float(getattr(result, "implant_volume_ml", 0.0)), 3),
        # How well the model reads the input (trust.py) and what the user should know before using the implant.
        "trust": None if getattr(result, "trust", None) is None else result.trust.to_dict(),
        "warnings": list(getattr(result, "warnings", [])),
        "model_id": model_id,
        "model_version": model_version,
        **options.as_dict(),
        **extra,
        "fit": None if fit is None else fit.as_dict(),
    }
    return record
