"""Time sources: each measures the system clock against a reference and reports Measurements."""
