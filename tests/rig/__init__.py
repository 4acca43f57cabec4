"""The clock rig: a controllable clock under chronotickd, scored against truth (docs/rig.md)."""
