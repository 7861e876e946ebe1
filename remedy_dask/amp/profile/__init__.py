"""Cross-dispersion fiber profiles: the empirical profile table used by trace and scattered light (fibermodel) and the extraction profile model (model, fitted by kernels)."""
