"""Data pipeline: loading and validation, anomaly repair, splits, windows, calendar features."""
