"""Evaluation: label sets, metrics, calibration, long-tail tools and the one ranking rule."""
