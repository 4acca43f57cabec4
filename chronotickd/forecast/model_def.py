"""The shipped model's architecture: a tiny Chronos-Bolt (T5 encoder-decoder over patches)."""

from __future__ import annotations

from typing import Any

CONTEXT_LENGTH = 320  # ≥ the long model's 300 measurements, a multiple of the patch
PREDICTION_LENGTH = 16  # steps of one measurement spacing each
PATCH = 16
QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # amazon/chronos-bolt-*'s levels


def t5_config(**over: Any) -> Any:
    """T5Config carrying ``chronos_config`` so ``BaseChronosPipeline.from_pretrained`` loads it."""
    from transformers import T5Config

    kw: dict[str, Any] = dict(
        d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=2, num_decoder_layers=2,
        dropout_rate=0.0, feed_forward_proj="relu", dense_act_fn="relu", is_gated_act=False,
        vocab_size=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        architectures=["ChronosBoltModelForForecasting"],
        chronos_pipeline_class="ChronosBoltPipeline",
        chronos_config=dict(context_length=CONTEXT_LENGTH, prediction_length=PREDICTION_LENGTH,
                            input_patch_size=PATCH, input_patch_stride=PATCH,
                            quantiles=QUANTILES, use_reg_token=True),
    )
    kw.update(over)
    return T5Config(**kw)


def build_model() -> Any:
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    return ChronosBoltModelForForecasting(t5_config())
