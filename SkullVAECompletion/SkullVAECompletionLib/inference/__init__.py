"""Inference: the completion engine, its trust figure, the defect detection and the defect regions."""
