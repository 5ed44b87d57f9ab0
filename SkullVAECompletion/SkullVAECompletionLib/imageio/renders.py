"""Pictures: the PNG preview of the three canonical views and the offscreen 3D renders (the implant coloured by
its distance to the skull).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..masks import skull_centre_voxel
from ..options import DISTANCE_RANGE_MM
from .atomic import _atomic_target
from .surfaces import mask_to_surface


def _canonical_views(volume: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip axes to the closest RAS orientation (for pictures only) and return the spacing."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(ijk_to_ras)
    canonical = orientations.apply_orientation(volume, ornt)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)[ornt[:, 0].astype(int).argsort()]
    return canonical, spacing


PREVIEW_HEIGHT = 360  # pixels of each view; widths follow the physical aspect


def write_preview_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant: np.ndarray,
    ijk_to_ras: np.ndarray,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Three orthogonal projections (front, side, top) of the skull in grey and the implant in red.

    Drawn with Pillow (imported in ~0.05 s, where matplotlib costs ~0.4 s per CLI call).
    """
    from PIL import Image, ImageDraw

    skull_c, spacing = _canonical_views(np.asarray(skull, dtype=bool), ijk_to_ras)
    implant_c, _ = _canonical_views(np.asarray(implant, dtype=bool), ijk_to_ras)
    views = [("front (coronal)", 1, (0, 2)), ("left side (sagittal)", 0, (1, 2)), ("top (axial)", 2, (0, 1))]
    panels = []
    for name, projection_axis, (horizontal, vertical) in views:
        depth = skull_c.mean(axis=projection_axis, dtype=np.float32)  # shaded projection: thick bone is brighter
        shown_implant = implant_c.any(axis=projection_axis)
        rgb = np.repeat((depth / max(float(depth.max()), 1e-6))[..., None], 3, axis=-1) * 0.85
        rgb[shown_implant] = 0.4 * rgb[shown_implant] + 0.6 * np.array([1.0, 0.15, 0.1], np.float32)
        if projection_axis in (0, 1):  # seen from the left: anterior to the left; from the front: right to the left
            rgb = rgb[::-1]
        # (horizontal, vertical) → image rows top-down: superior (or anterior) at the top.
        picture = Image.fromarray((np.transpose(rgb, (1, 0, 2))[::-1] * 255).astype(np.uint8))
        width_mm = skull_c.shape[horizontal] * spacing[horizontal]
        height_mm = skull_c.shape[vertical] * spacing[vertical]
        size = (max(1, round(PREVIEW_HEIGHT * width_mm / height_mm)), PREVIEW_HEIGHT)
        panels.append((name, picture.resize(size, Image.Resampling.BILINEAR)))
    margin, caption = 12, 22
    top = caption + (caption if title else 0)
    canvas = Image.new(
        "RGB", (sum(p.width for _, p in panels) + margin * (len(panels) + 1), PREVIEW_HEIGHT + top + margin), "white"
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, 4), title, fill="black")
    x = margin
    for name, picture in panels:
        draw.text((x, top - caption + 4), name, fill="black")
        canvas.paste(picture, (x, top))
        x += picture.width + margin
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        canvas.save(temporary, format="PNG")
    return path


def write_render_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant: np.ndarray,
    ijk_to_ras: np.ndarray,
    size: tuple[int, int] = (900, 700),
    overwrite: bool = False,
) -> Path:
    """Offscreen VTK render of the skull (bone) and the implant (red), seen from the front-right, above."""
    actors = []
    for mask, colour, smoothing in ((skull, BONE_COLOUR, 10), (implant, (0.85, 0.15, 0.1), 20)):
        if np.any(mask):
            actors.append(_surface_actor(mask_to_surface(mask, ijk_to_ras, smoothing_iterations=smoothing), colour))
    return _render_png(path, actors, (1.0, 1.6, 0.7), size, overwrite)


BONE_COLOUR = (0.93, 0.88, 0.78)


def write_distance_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant_surface: Any,
    ijk_to_ras: np.ndarray,
    title: str = "to skull (mm)",
    size: tuple[int, int] = (900, 700),
    overwrite: bool = False,
) -> Path:
    """Offscreen render of the implant surface coloured by its active point scalars (distance to the skull, mm),
    over the skull in bone colour, seen from outside along the implant's direction from the skull's centre."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkLookupTable
    from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor

    table = vtkLookupTable()
    table.SetHueRange(0.667, 0.0)  # blue → red
    table.SetTableRange(*DISTANCE_RANGE_MM)
    table.Build()
    implant_actor = _surface_actor(implant_surface, None, table)
    actors = [implant_actor]
    if np.any(skull):
        actors.insert(0, _surface_actor(mask_to_surface(skull, ijk_to_ras, smoothing_iterations=10), BONE_COLOUR))
    bar = vtkScalarBarActor()
    bar.SetLookupTable(table)
    bar.SetTitle(title)
    bar.SetNumberOfLabels(5)
    bar.SetLabelFormat("%.1f")
    bar.SetMaximumWidthInPixels(90)
    bar.UnconstrainedFontSizeOn()
    for text, points in ((bar.GetTitleTextProperty(), 16), (bar.GetLabelTextProperty(), 14)):
        text.SetColor(0.1, 0.1, 0.1)
        text.SetFontSize(points)
        text.ShadowOff()
        text.ItalicOff()
    points = numpy_support.vtk_to_numpy(implant_surface.GetPoints().GetData())
    matrix = np.asarray(ijk_to_ras, dtype=float)
    # the skull's centre (seen from the front when there is no skull)
    skull_centre = (skull_centre_voxel(skull, step=4) @ matrix[:3, :3].T + matrix[:3, 3] if np.any(skull)
                    else points.mean(axis=0) + np.array([0.0, 1.0, 0.0]))
    view = points.mean(axis=0) - skull_centre  # look at the implant from outside the head
    view = view + np.array([0.0, 0.0, 0.3 * np.linalg.norm(view)])  # …a little from above
    return _render_png(path, actors, tuple(view), size, overwrite, focus=implant_actor, overlays=[bar], zoom=0.75)


def _surface_actor(surface: Any, colour: tuple[float, float, float] | None, lookup_table: Any = None) -> Any:
    """An actor for a surface: plain ``colour``, or coloured by its active scalars through ``lookup_table``."""
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (before any mapper: it registers the OpenGL overrides)
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    mapper = vtkPolyDataMapper()
    mapper.SetInputData(surface)
    if lookup_table is None:
        mapper.ScalarVisibilityOff()
    else:
        mapper.ScalarVisibilityOn()
        mapper.SetLookupTable(lookup_table)
        mapper.UseLookupTableScalarRangeOn()
    actor = vtkActor()
    actor.SetMapper(mapper)
    if colour is not None:
        actor.GetProperty().SetColor(*colour)
    actor.GetProperty().SetSpecular(0.2)
    return actor


def _render_png(
    path: str | os.PathLike,
    actors: list,
    view_from: tuple[float, float, float],
    size: tuple[int, int],
    overwrite: bool,
    focus: Any = None,
    overlays: list | None = None,
    zoom: float = 1.3,
) -> Path:
    """Render actors offscreen (camera on the ``view_from`` side, superior up) into a PNG written atomically."""
    import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers the default render window factories)
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of the scalar bar)
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter

    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    for actor in actors:
        renderer.AddActor(actor)
    for overlay in overlays or []:
        renderer.AddViewProp(overlay)
    camera = renderer.GetActiveCamera()
    direction = np.asarray(view_from, dtype=float) / max(float(np.linalg.norm(view_from)), 1e-9)
    camera.SetViewUp(*((0, 1, 0) if abs(direction[2]) > 0.95 else (0, 0, 1)))  # superior up, unless seen from above
    camera.SetPosition(*direction)  # RAS: direction from the focal point
    camera.SetFocalPoint(0, 0, 0)
    if focus is not None:
        renderer.ResetCamera(focus.GetBounds())
    else:
        renderer.ResetCamera()
    camera.Zoom(zoom)
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grabber = vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.Update()
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        writer = vtkPNGWriter()
        writer.SetFileName(str(temporary))
        writer.SetInputConnection(grabber.GetOutputPort())
        writer.Write()
    window.Finalize()
    return path
