"""Inference: the completion engine (orchestration, results, latent arithmetic, implant stage, device and progress),
its trust figure, the defect detection and the defect regions."""
