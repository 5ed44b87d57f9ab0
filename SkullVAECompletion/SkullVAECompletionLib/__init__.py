"""SkullVAE Completion engine: skull completion and cranial implant design with an aggregated β-VAE.

Pure Python (numpy, torch, MONAI, VTK); importable without 3D Slicer. The Slicer module
(``SkullVAECompletion.py``) and the ``skullvae-complete`` command line both call into
:mod:`SkullVAECompletionLib.completion`.
"""

__version__ = "0.1.0"
