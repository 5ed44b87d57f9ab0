"""Standalone training pipeline of SkullVAE Completion (data generation, readers, training).

Nothing here is imported by the Slicer module at run time; the module only ships the bundle
that this pipeline produces.
"""
