"""Implant design for surgery planning (thickness, flange, clearance, edges) and its quality report."""
