"""Implant extraction: the rim-conforming fit, the decode difference (the paper's way) and the mirror method."""
