"""Train the shipped Chronos-Bolt-mini on the classical engine's residuals (never part of CI).

``python -m chronotickd.forecast.train --minutes 11 --batch 64 --lr 2e-3 \
    --cache /tmp/engres.npz --out chronotickd/forecast/models/chronotick-bolt-mini-engres``

Data: randomized simulated clocks (``chronotickd.sim``: drift, temperature-like wander, random
walk, asymmetric queueing, spikes, wrong offsets, losses, outages, steps) polled at random
spacings of 8–64 s, plus the first 70 % of the real trace at the same spacings (its last 30 %
is held out). Over each polled series the daemon's ``Engine`` is replayed, and at every poll
the engine's prediction from the state *before* that measurement is recorded: the inputs are
``measured − that prediction`` (``residual.prepare``, exactly what ``ForecastCore`` feeds the
model at runtime), the targets are ``truth − that prediction`` at the next 16 polls (the
simulator's truth, or the real trace's centered median): the correction the engine needed,
not the noise. Fixed seed; with ``--steps`` the result is bit-reproducible on one machine,
with only ``--minutes`` the step count depends on CPU speed. Making the data replays the
engine (a few minutes on one core); ``--cache`` keeps it in an .npz for the next run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from chronotickd.forecast.data import real_trace_path
from chronotickd.forecast.model_def import CONTEXT_LENGTH, PREDICTION_LENGTH, build_model
from chronotickd.forecast.residual import (
    ENGINE_RESIDUAL,
    LINE,
    MIN_CONTEXT,
    US,
    prepare,
    prepare_line,
)
from chronotickd.sim.model import ClockModel, simulate

POLL_ROWS = (8, 16, 32)  # rows are 2 s apart: polls of 16 s … 64 s (ntp.minpoll_s: 64)
INPUT = ENGINE_RESIDUAL  # or LINE: the shipped model's older recipe (--input)
TARGET_CLIP_SIGMA = 20.0  # a step inside the target window must not dominate the loss


def random_clock(rng: np.random.Generator, hours: float) -> ClockModel:
    def maybe(p: float, lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi)) if rng.random() < p else 0.0

    outages: tuple[tuple[float, float], ...] = ()
    if rng.random() < 0.3:
        outages = ((float(rng.uniform(0.2, 0.8)) * hours, float(rng.uniform(0.1, 0.8))),)
    step = rng.random() < 0.15
    return ClockModel(
        hours=hours, freq_ppm=float(rng.uniform(-30, 30)),
        wander_ppm=maybe(0.6, 0.1, 3.0), wander_period_s=float(rng.uniform(1800, 14400)),
        rw_ppm_per_sqrt_h=maybe(0.5, 0.05, 1.0),
        base_delay_s=float(rng.uniform(0.05e-3, 2e-3)), asym_s=maybe(0.3, -1e-3, 1e-3),
        queue_fwd_s=float(np.exp(rng.uniform(np.log(10e-6), np.log(400e-6)))),
        queue_back_s=float(np.exp(rng.uniform(np.log(10e-6), np.log(400e-6)))),
        ts_noise_s=float(rng.uniform(1e-6, 20e-6)),
        spike_rate=maybe(0.4, 0.0, 0.1), outlier_rate=maybe(0.3, 0.0, 0.03),
        loss_rate=maybe(0.3, 0.0, 0.05), outages=outages,
        step_at_h=float(rng.uniform(0.2, 0.9)) * hours if step else None,
        step_s=float(rng.uniform(-5e-3, 5e-3)) if step else 0.0)


def engine_residuals(t: np.ndarray, off: np.ndarray, delay: np.ndarray
                     ) -> np.ndarray:
    """The engine's prediction for each measurement from the state it published before it
    (NaN while unsynchronized): exactly what ``ForecastCore.observe`` receives in the daemon
    and in the replay (``Engine.add`` → ``snapshot`` → ``ClockState.query``)."""
    from chronotickd.core.engine import Engine
    from chronotickd.core.measurement import Measurement, Status

    eng = Engine()
    state = eng.snapshot(0.0)
    pred = np.full(len(t), np.nan)
    for i in range(len(t)):
        a = state.query(float(t[i]))
        if a.status != Status.UNSYNCHRONIZED:
            pred[i] = a.offset
        eng.add(Measurement.from_ntp(float(t[i]), float(off[i]), float(delay[i])))
        state = eng.snapshot(float(t[i]))
    return pred


def windows(t: np.ndarray, r: np.ndarray, g: np.ndarray, n: int,
            rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (context µs left-padded with NaN, target µs) pairs from one series of engine
    residuals ``r`` (measured − engine prediction) and true residuals ``g`` (truth − the same
    prediction: what the correction should have been)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    m = len(t)
    if m < MIN_CONTEXT + PREDICTION_LENGTH + 1:
        return out
    for _ in range(n):
        e = int(rng.integers(MIN_CONTEXT, m - PREDICTION_LENGTH + 1))
        length = int(rng.integers(MIN_CONTEXT, 301))
        s = max(0, e - length)
        if INPUT == LINE:  # r: measured offsets, g: true offsets
            p = prepare_line(t[s:e], r[s:e])
            if p is None:
                continue
            tgt = (g[e:e + PREDICTION_LENGTH] - p.line(t[e:e + PREDICTION_LENGTH])) * US
        else:
            p = prepare(t[s:e], r[s:e])
            if p is None:
                continue
            tgt = g[e:e + PREDICTION_LENGTH] * US
        if not np.isfinite(tgt).any():
            continue
        lim = TARGET_CLIP_SIGMA * p.sigma * US
        tgt = np.clip(tgt, -lim, lim)
        ctx = np.full(CONTEXT_LENGTH, np.nan, dtype=np.float32)
        c = p.context_us[-CONTEXT_LENGTH:]
        ctx[CONTEXT_LENGTH - len(c):] = c
        out.append((ctx, tgt.astype(np.float32)))
    return out


def measured(t: np.ndarray, off: np.ndarray, delay: np.ndarray, truth: np.ndarray, k: int,
             phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poll every ``k``-th row from ``phase``, replay the engine over the replies: (times,
    engine residuals, true residuals); with ``--input line-residual`` (times, offsets,
    truth)."""
    idx = np.arange(phase, len(t), k)
    idx = idx[np.isfinite(off[idx])]
    t, off, truth = t[idx], off[idx], truth[idx]
    delay = np.where(np.isfinite(delay[idx]), delay[idx], 0.0)  # as the replay runner does
    if INPUT == LINE:
        return t, off, truth
    pred = engine_residuals(t, off, delay)
    return t, off - pred, truth - pred


def sim_pool(n_traces: int, per_trace: int, rng: np.random.Generator) -> list:
    pool: list = []
    for i in range(n_traces):
        k = int(rng.choice(POLL_ROWS))
        hours = max(3.0, (CONTEXT_LENGTH + PREDICTION_LENGTH) * k * 2.0 / 3600.0 * 1.6)
        tr = simulate(random_clock(rng, hours), seed=int(rng.integers(2**31)) + i)
        pool += windows(*measured(tr.t, tr.offset, tr.delay, tr.truth, k,
                                  int(rng.integers(k))), per_trace, rng)
    return pool


def real_series(split: float = 0.7
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from chronotickd.replay.trace import load_trace
    from chronotickd.replay.truth import centered_median

    tr = load_trace(real_trace_path())
    truth = centered_median(tr.t, tr.offset, np.ones(len(tr.t), dtype=bool))
    return tr.t, tr.offset, tr.delay, truth, int(split * len(tr.t))


def real_pool(per_poll: int, rng: np.random.Generator, train: bool) -> list:
    t, off, delay, truth, cut = real_series()
    sl = slice(0, cut) if train else slice(cut, None)
    pool: list = []
    for k in POLL_ROWS:
        phases = range(0, k, max(1, k // 4))
        for phase in phases:
            pool += windows(*measured(t[sl], off[sl], delay[sl], truth[sl], k, phase),
                            per_poll // len(phases), rng)
    return pool


def trace_pool(path: str, per_poll: int, rng: np.random.Generator) -> list:
    """Windows of a user's own trace (chronotick-replay's CSV format), all of it."""
    from chronotickd.replay.trace import load_trace
    from chronotickd.replay.truth import centered_median

    tr = load_trace(path)
    truth = tr.truth if tr.truth is not None else centered_median(
        tr.t, tr.offset, np.ones(len(tr.t), dtype=bool))
    pool: list = []
    for k in POLL_ROWS:
        pool += windows(*measured(tr.t, tr.offset, tr.delay, truth, k, 0), per_poll, rng)
    return pool


def stack(pool: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([c for c, _ in pool]), np.stack([g for _, g in pool]))


def evaluate(model, ctx: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
    """Mean |error| (µs) of the median forecast vs residual 0 (the engine alone, or the line
    alone for ``--input line-residual``)."""
    import torch

    with torch.no_grad():
        out = model(context=torch.from_numpy(ctx)).quantile_preds.numpy()
    med = out[:, out.shape[1] // 2, :]
    ok = np.isfinite(tgt)
    lo, hi = out[:, 0, :], out[:, -1, :]
    return {"model_mae_us": float(np.abs(med - tgt)[ok].mean()),
            "base_mae_us": float(np.abs(tgt)[ok].mean()),
            "cover_10_90": float(((tgt >= lo) & (tgt <= hi))[ok].mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chronotickd.forecast.train", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (reproducible)")
    ap.add_argument("--out", required=True, help="directory for config.json + safetensors")
    ap.add_argument("--seed", type=int, default=20250319)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sim-traces", type=int, default=400)
    ap.add_argument("--cache", default=None,
                    help="an .npz: load the windows from it if it exists, else save them there")
    ap.add_argument("--data-only", action="store_true", help="make (and cache) the data, stop")
    ap.add_argument("--poll-rows", default="8,16,32",
                    help="poll spacings in 2-s rows (default %(default)s: 16 … 64 s; the "
                         "line-residual model was trained at 1,2,4,8,16,32)")
    ap.add_argument("--input", choices=(ENGINE_RESIDUAL, LINE), default=ENGINE_RESIDUAL,
                    help="what the model sees: the engine's residuals (default) or the "
                         "residual after a robust line over the context (the shipped model)")
    ap.add_argument("--init", default=None,
                    help="fine-tune from this Chronos-Bolt (directory or HF id, e.g. "
                         "amazon/chronos-bolt-tiny) instead of training from scratch")
    ap.add_argument("--trace", action="append", default=[],
                    help="add windows of your own trace CSV (repeatable)")
    args = ap.parse_args(argv)

    import torch

    globals()["POLL_ROWS"] = tuple(int(k) for k in args.poll_rows.split(","))
    globals()["INPUT"] = args.input
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.monotonic()
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache)
        ctx, tgt = z["ctx"], z["tgt"]
        vs, vr = (z["vs_ctx"], z["vs_tgt"]), (z["vr_ctx"], z["vr_tgt"])
    else:
        train = sim_pool(args.sim_traces, 60, rng) + real_pool(2000, rng, train=True)
        for path in args.trace:
            train += trace_pool(path, 2000, rng)
        val_sim = sim_pool(60, 40, np.random.default_rng(args.seed + 1))
        val_real = real_pool(1500, np.random.default_rng(args.seed + 2), train=False)
        ctx, tgt = stack(train)
        vs, vr = stack(val_sim), stack(val_real)
        if args.cache:
            np.savez(args.cache, ctx=ctx, tgt=tgt, vs_ctx=vs[0], vs_tgt=vs[1], vr_ctx=vr[0],
                     vr_tgt=vr[1])
    if args.data_only:
        print(f"data: {len(ctx)} train windows, {time.monotonic() - t0:.0f} s", flush=True)
        return 0
    print(f"data: {len(ctx)} train windows, {len(vs[0])} sim val, {len(vr[0])} real val, "
          f"{time.monotonic() - t0:.0f} s", flush=True)

    if args.init:
        from chronos import BaseChronosPipeline

        model = BaseChronosPipeline.from_pretrained(args.init, dtype=torch.float32).model
    else:
        model = build_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    budget = args.minutes * 60.0
    start = time.monotonic()
    step = 0
    ctx_t, tgt_t = torch.from_numpy(ctx), torch.from_numpy(tgt)
    gen = torch.Generator().manual_seed(args.seed)
    while True:
        elapsed = time.monotonic() - start
        frac = step / args.steps if args.steps else elapsed / budget
        if frac >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, len(ctx_t), (args.batch,), generator=gen)
        loss = model(context=ctx_t[idx], target=tgt_t[idx]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.4f} {elapsed:.0f} s", flush=True)
    model.eval()
    report = {"input": args.input, "poll_rows": list(POLL_ROWS), "steps": step,
              "seconds": round(time.monotonic() - start),
              "val_sim": evaluate(model, *vs), "val_real_last30": evaluate(model, *vr)}
    print(json.dumps(report, indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)  # fp16 on disk (≤ 5 MB); loaded back as float32
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "chronotick.json").write_text(json.dumps({"input": args.input}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
