"""Reporting: metrics with bootstrap intervals, evaluation, robustness, figures, the model card and site calibration."""
