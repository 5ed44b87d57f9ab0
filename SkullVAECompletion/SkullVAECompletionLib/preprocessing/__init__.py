"""Preprocessing: from an input mask or CT to the model grid (geometry), the input checks, skull from CT."""
