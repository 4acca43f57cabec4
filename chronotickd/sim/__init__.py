"""Clock and NTP-path simulator: traces with a truth column for ``chronotick-replay``."""
