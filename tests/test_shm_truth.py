"""Shared-memory answers scored against known truth under the clock rig (issue 15 item 6).

Each rig scenario (tests/rig/scenarios.py) runs as in tests/test_truth.py, but every `now`
is read from the daemon's segment by a reader that runs under the daemon's own shimmed clocks
(tests/rig/shm_probe.py started with the daemon's LD_PRELOAD, control file and boot id: on a
real host every process reads the same kernel clocks). When the segment refuses (REALTIME
stepped since the write, daemon stopped, another boot), the query goes to the socket, as
chronotick-cli does; those answers are scored too and counted apart. Every shm answer must
hold the truth (coverage ≥ 0.99 per scenario, with most answers from shm), and a step of
CLOCK_REALTIME between two daemon writes must give either a right answer or a refusal.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest
from rig.harness import HERE, NS, Rig, RigDaemon, Sample, Score
from rig.scenarios import SCENARIOS

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBE = HERE / "shm_probe.py"
KEYS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")


class ShmRigDaemon(RigDaemon):
    """A rig daemon queried through its shared-memory segment (socket when refused)."""

    probe: subprocess.Popen | None = None

    def start(self) -> ShmRigDaemon:
        super().start()
        self.shm_score = getattr(self, "shm_score", Score())
        self.refusals: list[str] = getattr(self, "refusals", [])
        self.probe = subprocess.Popen([sys.executable, str(PROBE), str(self.workdir / "shm0")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=self.env, cwd=self.workdir)
        return self

    def stop(self) -> None:
        probe, self.probe = self.probe, None
        if probe is not None:
            assert probe.stdin is not None
            probe.stdin.close()
            try:
                probe.wait(timeout=5)
            except subprocess.TimeoutExpired:
                probe.kill()
                probe.wait()
            assert probe.stdout is not None
            probe.stdout.close()
        super().stop()

    def _ask_probe(self) -> dict:
        assert self.probe is not None and self.probe.stdin and self.probe.stdout
        self.probe.stdin.write("now\n")
        self.probe.stdin.flush()
        ready, _, _ = select.select([self.probe.stdout], [], [], 10.0)
        assert ready, "the shm probe did not answer within 10 s"
        return json.loads(self.probe.stdout.readline())

    def query(self) -> Sample:
        """One `now` from the segment (the socket when it refuses), scored against truth."""
        send = time.clock_gettime_ns(time.CLOCK_REALTIME)
        reply = self._ask_probe()
        if not reply["ok"]:
            self.refusals.append(reply["why"])
            return super().query()
        recv = time.clock_gettime_ns(time.CLOCK_REALTIME)
        r = reply["r"]
        truth = self.rig.truth_ns
        lo, hi = sorted((truth(send), truth(recv)))
        at = self.clock.real_of_system(r["system_time_ns"], (send + recv) // 2)
        exact = truth(at) if send - 1000 <= at <= recv + 1000 else None
        s = Sample(send, recv, r["system_time_ns"], r["earliest_ns"], r["latest_ns"],
                   r["corrected_time_ns"], r["bound_ns"], r["status"], lo, hi, exact)
        self.shm_score.add(s)
        return s


class ShmRig(Rig):
    daemon_class = ShmRigDaemon


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the rig drops CAP_SYS_TIME with setpriv: needs root")


@pytest.mark.parametrize("key", [k for k in KEYS if k in SCENARIOS])
def test_shm_answers_hold_the_truth(chronyd, key: str) -> None:
    _needs_root()
    with ShmRig() as rig:
        result = SCENARIOS[key](rig, chronyd.server, 1.0)
        shm = Score()
        refusals: list[str] = []
        for d in rig.daemons:
            shm.extend(d.shm_score)
            refusals += d.refusals
    s = result.score
    ids = {id(x) for x in shm.samples}
    scored = Score([x for x in s.samples if id(x) in ids])  # the scenario's own window
    print(f"\n{result.scenario}: shm answers in the scenario: {scored.summary()}; all "
          f"{shm.queries} shm answers (waits included) coverage {shm.coverage:.4f}; "
          f"{len(refusals)} refusals → socket "
          f"({sorted({r.split(':')[-1].strip() for r in refusals})[:3]}); all answers: "
          f"coverage {s.coverage:.4f} of {s.queries}")
    assert shm.queries >= 20 and shm.queries >= 0.5 * (shm.queries + len(refusals))
    assert shm.coverage >= 0.99, shm.misses[:5]
    assert s.coverage >= 0.99, s.misses[:5]


def test_realtime_step_between_two_daemon_writes(chronyd) -> None:
    """Right after a step of CLOCK_REALTIME (long before the daemon's next write): a step a
    slew could explain (+0.5 ms) is answered from the segment and holds the truth; a +2 s
    step is refused (socket) until the daemon has rewritten the segment."""
    _needs_root()
    with ShmRig() as rig:
        d = rig.daemon("s", [chronyd.server], start=False)
        d.clock.set(offset_s=0.020, freq_ppm=10.0)
        d.start()
        d.wait_status()
        d.sample_for(2.0)
        for delta, answered in ((0.0005, True), (-0.0005, True), (2.0, False), (-2.0, False)):
            time.sleep(1.0)
            before = len(d.refusals)
            d.clock.step(delta)
            s = d.query()
            assert s.contained, (delta, s)
            assert (len(d.refusals) == before) is answered, (delta, d.refusals[before:])
            if not answered:
                assert "stepped" in d.refusals[-1]
                time.sleep(1.3)  # the next publish rewrites δ: the segment answers again
                before = len(d.refusals)
                s = d.query()
                assert s.contained and len(d.refusals) == before, d.refusals[before:]
        shm = d.shm_score
        print(f"\nstep between writes (shm): {shm.summary()}")
        assert shm.coverage == 1.0, shm.misses[:5]
        assert abs(shm.samples[-1].error_ns) < NS // 1000  # within 1 ms: really corrected
