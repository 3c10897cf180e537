"""The report layer: a run's metrics, calibration and plots (`dfer report`), runs side by side (`dfer compare`)."""
