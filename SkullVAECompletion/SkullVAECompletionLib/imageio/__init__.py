"""Files: skull masks (NRRD, NIfTI) in and out, implant surfaces (STL), PNG previews and renders, and the
command line's output folder.

Arrays are (i, j, k) with an IJK→RAS matrix. NRRD files in LPS space are converted to RAS on read and back on
write. Every writer writes to a temporary file first and renames it (:mod:`.atomic`), so a failure never leaves a
half-written file, and no existing file is replaced unless ``overwrite=True``.
"""
