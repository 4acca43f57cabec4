"""Optional Chronos-Bolt forecaster: residual forecasts fused with the classical engine."""
