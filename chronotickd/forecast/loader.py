"""Loading a Chronos-Bolt pipeline from ``model.source``: a Hugging Face id or a directory.

Everything that can fail (torch or chronos not installed, no weights, no network to the hub)
raises ``ForecastUnavailable`` whose message says what is missing and how to fix it; callers
fall back to the classical engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent / "models" / "chronotick-bolt-mini"
DEFAULT_SOURCE = "builtin"  # the shipped chronotick-bolt-mini


class ForecastUnavailable(RuntimeError):
    """The forecaster cannot run here; the message names the cause and the fix."""


def resolve_source(source: str | None) -> str:
    """``builtin``/empty → the shipped directory; anything else is passed to from_pretrained."""
    if not source or source == DEFAULT_SOURCE:
        return str(SHIPPED)
    return source


def load_pipeline(source: str | None = None, threads: int = 1) -> Any:
    """A ``ChronosBoltPipeline`` in float32 on the CPU, torch limited to ``threads``."""
    try:
        import torch
        from chronos import BaseChronosPipeline
    except ImportError as exc:
        raise ForecastUnavailable(
            f"{exc.name or 'torch/chronos'} is not installed; install the extra: "
            "pip install 'chronotick[chronos]'") from exc
    if threads > 0:
        torch.set_num_threads(threads)
    where = resolve_source(source)
    if where == str(SHIPPED) and not (SHIPPED / "config.json").is_file():
        raise ForecastUnavailable(f"shipped model missing in {SHIPPED}; reinstall chronotick or "
                                  "set model.source to a Chronos-Bolt directory or HF id")
    try:
        import logging

        logging.getLogger("transformers").setLevel(logging.ERROR)
        pipe = BaseChronosPipeline.from_pretrained(where, device_map="cpu", dtype=torch.float32)
    except Exception as exc:
        raise ForecastUnavailable(
            f"cannot load model {where!r} ({type(exc).__name__}: {exc}); set model.source to "
            "a local Chronos-Bolt directory or a reachable Hugging Face id") from exc
    if not hasattr(pipe, "predict_quantiles") or not hasattr(pipe, "quantiles"):
        raise ForecastUnavailable(f"{where!r} is not a Chronos-Bolt (quantile) model")
    pipe.model.eval()
    pipe.chronotick_input = model_input(where)
    return pipe


def model_input(where: str) -> str:
    """What the model at ``where`` was trained on: ``chronotick.json``'s ``input`` in its
    directory, else the line residual (the shipped model, Amazon's, older fine-tunes)."""
    import json

    from chronotickd.forecast.residual import ENGINE_RESIDUAL, LINE

    marker = Path(where) / "chronotick.json"
    try:
        value = json.loads(marker.read_text()).get("input", LINE)
    except (OSError, ValueError, AttributeError):
        return LINE
    if value not in (ENGINE_RESIDUAL, LINE):
        raise ForecastUnavailable(f"{marker}: unknown input {value!r} (expected "
                                  f"{ENGINE_RESIDUAL!r} or {LINE!r})")
    return value
