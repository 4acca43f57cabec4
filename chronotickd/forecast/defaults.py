"""Whether the forecaster is on by default, importable without torch (config, replay).

Set from the replay bench: True only if ``fused`` met the goals (coverage ≥ 0.95, MAE
≤ 1.05× ``engine``) on the real trace and every simulator scenario (docs/forecasting.md).
"""

DEFAULT_ON = False
