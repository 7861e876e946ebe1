"""Fiber traces: the calibration fit (fit), fiber numbering from peaks (assign) and the per-exposure shift (shift)."""
