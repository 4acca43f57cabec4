"""Figures of a replay: answers and the engine's bound over time, and the error distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chronotickd.replay.runner import ReplayResult

COLORS = {"none": "#999999", "hold": "#8c564b", "median": "#2ca02c", "linear": "#9467bd",
          "engine": "#d62728", "chronos-short": "#17becf", "chronos-long": "#bcbd22",
          "fused": "#ff7f0e"}


def plot_replay(res: ReplayResult, out: str | Path, title: str | None = None,
                band_method: str = "engine") -> Path:
    """Write a PNG: top, measurements/truth/answers with the bound band; bottom, error CDF
    and the engine's error against its bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = res.trace
    h = (tr.t - tr.t[0]) / 3600.0
    hs = h[res.scored]
    truth = res.truth[res.scored]
    # a clock drifting by tens of ms hides everything else: show offsets minus a straight line
    ok_truth = np.isfinite(res.truth)
    trend = np.zeros(len(h))
    ylabel = "offset (ms)"
    if ok_truth.sum() > 2 and np.ptp(res.truth[ok_truth]) > 20e-3:
        b, a = np.polyfit(h[ok_truth], res.truth[ok_truth], 1)
        trend = a + b * h
        ylabel = f"offset − ({a * 1e3:.1f} ms {b * 1e3:+.2f} ms/h · t)  (ms)"
    ts = trend[res.scored]
    fig = plt.figure(figsize=(13, 8.5), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, height_ratios=(1.4, 1.0))
    ax = fig.add_subplot(gs[0, :])
    ok = np.isfinite(tr.offset)
    ax.plot(h[ok], (tr.offset - trend)[ok] * 1e3, ",", color="#c7c7c7",
            label="measurements (all rows)")
    pol = res.polled & ok
    ax.plot(h[pol], (tr.offset - trend)[pol] * 1e3, ".", ms=3, color="black", label="polled")
    band = res.runs.get(band_method)
    if band is not None:
        ax.fill_between(hs, (band.offset - ts - band.bound) * 1e3,
                        (band.offset - ts + band.bound) * 1e3,
                        color=COLORS.get(band_method, "red"), alpha=0.15, lw=0,
                        label=f"{band_method} bound")
    for name, run in res.runs.items():
        if name == "none":
            continue
        top = name == band_method
        ax.plot(hs, (run.offset - ts) * 1e3, lw=1.2 if top else 0.7, color=COLORS.get(name),
                label=name, zorder=4 if top else 2, alpha=1.0 if top else 0.7)
    ax.plot(hs, (truth - ts) * 1e3, lw=1.0, color="#1f77b4", ls="--", zorder=5,
            label="truth" if tr.truth is not None else "reference")
    lo, hi = (np.nanpercentile((tr.offset - trend)[ok], [0.5, 99.5]) * 1e3 if ok.any()
              else (-1, 1))
    pad = 0.3 * (hi - lo) + 0.05
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("hours")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{Path(tr.path).name}, poll {res.poll_s:g} s ({res.truth_kind})")
    ax.legend(loc="best", fontsize=7, ncol=3, markerscale=3)

    ax2 = fig.add_subplot(gs[1, 0])
    for name, run in res.runs.items():
        err = np.sort(np.abs(run.offset - truth)) * 1e3
        if len(err) == 0:
            continue
        q = np.arange(1, len(err) + 1) / len(err)
        ax2.plot(np.maximum(err, 1e-4), q, lw=1.0, color=COLORS.get(name), label=name)
    ax2.set_xscale("log")
    ax2.set_xlabel("|error| (ms)")
    ax2.set_ylabel("share of scored rows ≤ x")
    ax2.set_title("error distribution")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)

    ax3 = fig.add_subplot(gs[1, 1])
    if band is not None:
        err = (band.offset - truth) * 1e3
        ax3.fill_between(hs, -band.bound * 1e3, band.bound * 1e3, color=COLORS.get(band_method),
                         alpha=0.15, lw=0, label="±bound")
        ax3.plot(hs, err, ",", color=COLORS.get(band_method), label="error")
        ax3.set_ylim(*(np.nanpercentile(np.abs(err), 99.5) * 3 + 0.01) * np.array([-1, 1]))
        cov = band.metrics["coverage"]
        ax3.set_title(f"{band_method}: error and bound (coverage {cov:.4f})")
    ax3.set_xlabel("hours")
    ax3.set_ylabel("ms")
    ax3.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
