"""Rim-conforming implant surfaces: the decode says *where* and *what shape*, the patient's bone says *exactly where*.

A decoded skull on a 2–3 mm model grid cannot place an implant's surfaces within a millimetre of the defect's
rim. This stage therefore uses the decode only as a locator and a shape prior, and takes the surfaces from the
patient's own intact bone at the input's full resolution:

1. **Rays from the cranial centre** (:func:`~.frame.vault_sphere_centre`). Along each direction the decode gives an
   expected shell (its outermost bone segment); the input's bone is searched in a window around it.
2. **Defect localisation** (:func:`~.holes.find_holes`): directions where the decode expects shell and the patient
   has no bone in the window, grouped into holes on the sphere. Natural openings are where the decode expects no
   bone; directions whose expected shell lies outside the input's field of view are never holes. A hole must be a
   gap in a shell: measurable shell bone around at least a third of it (:func:`~.hole_fit.rim_support`, checked on
   its patch).
3. **Surfaces per hole** (:func:`~.hole_fit.fit_hole`): in a latitude-longitude patch whose equator runs through the
   hole (no pole near it), the outer and inner table radii of the intact bone are measured with sub-voxel accuracy.
   Their offsets from the decode's surfaces are interpolated across the hole (the outer surface as a thin plate,
   which carries the rim's curvature; the thickness as the decode's, scaled by the rim's ratio to it as a
   membrane, robust to a noisy rim);
   rays near the rim, which graze a ragged or bevelled edge, and outliers are re-estimated, and bone that is
   present but sunken well below the interpolated outer table (a depressed fracture) joins the defect.
4. **Voxelisation on the input grid** (:func:`~.voxels.voxelise`): a voxel belongs to the implant when its direction
   lies in the hole (plus a thin rim band) and its distance from the centre lies between the two surfaces; the same
   signed field gives the implant's surface.

All geometry is in "model millimetres": the model grid's index times its spacing (RAS axes, isotropic).

The package holds one file per step, in the order :func:`~.fit.fit_implant` uses them: ``options``
(:class:`RimOptions`), ``frame`` (the centre and the maps between model millimetres, the input's voxels and the
mirror image), ``sampling`` and ``profiles`` (bone along rays), ``sphere`` and ``holes`` (defects on the sphere of
directions), ``patch``, ``measurement``, ``interpolation`` and ``hole_fit`` (surfaces over each hole), ``voxels``
(the signed field on the input grid), ``results`` (:class:`RimFit`, :class:`Hole`) and ``fit`` (the entry point).
"""

from .fit import HoleSearch, find_holes_in, fit_implant
from .interpolation import interpolate_surface, thin_plate_surface
from .options import RimOptions
from .results import Hole, RimFit

__all__ = ["Hole", "HoleSearch", "RimFit", "RimOptions", "find_holes_in", "fit_implant", "interpolate_surface",
           "thin_plate_surface"]
