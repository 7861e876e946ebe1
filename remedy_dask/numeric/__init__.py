"""Shared numerical building blocks: robust statistics, medians, sorting networks and selection."""
