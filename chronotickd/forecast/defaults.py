"""Whether the forecaster is on by default, importable without torch (config, replay).

Off (2026-11-24, docs/forecasting.md): ``fused`` met the accuracy gates on every trace
measured (coverage ≥ 0.95, MAE ≤ 1.05× ``engine``; worst 1.010× on ``asymmetric``) but gains
only on ``wander`` (0.92×) and equals the engine elsewhere, while the models cost ~350 MB of
RSS (393 MB with, 41 MB without: at the 400 MB limit) and ``now`` p99 measured 1.07× and
1.19× of models-off in two runs (goal ≤ 1.1×). Turn it on per host with ``model.enabled``.

Still off (2026-12-02, issue 13 item 4): a model trained on the engine's residual
(``chronotick-bolt-mini-engres``) gets weight 0 on every trace (fused = engine); the shipped
line-residual model helps on wander only (0.89×, 0.94×) and equals the engine elsewhere.
"""

DEFAULT_ON = False
