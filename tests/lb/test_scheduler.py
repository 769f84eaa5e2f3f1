"""lb.request.scheduler: the proxy's queue, in-process with a fake clock. The pool is the real
one; nodes are only the slots the scheduler hands out (no transport): a test starts,
finishes and cancels runs itself, as the dispatcher would."""

from __future__ import annotations

from typing import Any

import pytest

from lb.config import parse_config
from lb.errors import DeadlineExceeded, LbError, NotReady, Overloaded
from lb.pool.concurrency import Limit
from lb.pool.nodes import NodePool
from lb.request.scheduler import (
    CRITICAL,
    QUEUED,
    SHEDDABLE,
    TRUST_SAMPLES,
    Run,
    Scheduler,
    Settings,
    Ticket,
)

M = "m"


class Rig:
    """A pool of nodes serving model m v1, a scheduler, a clock, and what happened."""

    def __init__(self, names: str = "ab", slots: int = 2, **settings: Any) -> None:
        cfg = parse_config({"listen": {"grpc": None},
                            "nodes": [{"name": n, "rest": f"http://127.0.0.1:{9 + i}"}
                                      for i, n in enumerate(names)]})
        self.t = 100.0
        self.pool = NodePool(cfg.nodes, cfg.policy, clock=lambda: self.t, seed=1)
        for node in self.pool:
            self.pool.set_versions(node, {M: frozenset({1})}, {})
            node.limit = Limit(slots, pinned=True)
        self.sched = Scheduler(self.pool, Settings(**settings), seed=1)
        self.runs: list[Run] = []
        self.refused: list[tuple[str, LbError]] = []

    def ticket(self, name: str, *, left_s: float = 60.0, **kw: Any) -> Ticket:
        t = Ticket(kw.pop("model", M), kw.pop("version", 1), kw.pop("units", 1.0),
                   kw.pop("rows", 1), self.t + left_s, self.runs.append,
                   lambda tk, err: self.refused.append((tk.payload, err)), payload=name, **kw)
        return t

    def submit(self, name: str, **kw: Any) -> Ticket:
        t = self.ticket(name, **kw)
        self.sched.submit(t, self.t)
        return t

    def started(self) -> list[tuple[str, str]]:
        """(ticket, node) of every run started, in order."""
        return [(t.payload, r.node.name) for r in self.runs for t in r.tickets]

    def finish(self, run: Run, seconds: float = 0.02) -> None:
        self.t += seconds
        self.sched.finished(run, self.t, seconds, ok=True, sample=True)
        if self.sched.wake_at <= self.t:           # the dispatcher's timer
            self.sched.expire(self.t)

    def teach(self, name: str, tau: float, n: int = 31) -> None:
        """Give node `name` a τ of `tau` seconds per unit for the model."""
        node = self.pool.nodes[name]
        for i in range(n):
            run = Run([self.ticket("warm")], node, node.begin(1.0, self.t), 0, False, self.t)
            self.sched.finished(run, self.t + i * 1e-6, tau, ok=True, sample=True)


def test_a_free_slot_takes_a_call_at_once_and_the_rest_wait_in_arrival_order() -> None:
    rig = Rig("a", slots=2)
    for name in "12345":
        rig.submit(name)
    assert rig.started() == [("1", "a"), ("2", "a")]
    assert rig.sched.waiting == 3
    rig.finish(rig.runs[0])
    rig.finish(rig.runs[1])
    assert [t for t, _ in rig.started()] == ["1", "2", "3", "4"]
    assert rig.pool.nodes["a"].inflight == 2


def test_the_critical_lane_leaves_first_and_the_sheddable_last() -> None:
    rig = Rig("a", slots=1)
    rig.submit("busy")
    rig.submit("s", priority=SHEDDABLE)
    rig.submit("n")
    rig.submit("c", priority=CRITICAL)
    for _ in range(3):
        rig.finish(rig.runs[-1])
    assert [t for t, _ in rig.started()] == ["busy", "c", "n", "s"]


def test_a_slower_nodes_free_slot_takes_the_last_call_once_the_queue_is_long() -> None:
    """a and b 20 ms, c 60 ms, 2 slots each: c's slot is used only when the last one
    waiting would wait n / R + τ_fast ≥ τ_slow for a fast slot (R = 200/s: n ≥ 8),
    and it takes the last one, not the head."""
    rig = Rig("abc", slots=2)
    for name, tau in (("a", 0.02), ("b", 0.02), ("c", 0.06)):
        rig.teach(name, tau)
    for i in range(4):
        rig.submit(f"f{i}")                     # a and b full
    assert {n for _, n in rig.started()} == {"a", "b"}
    for i in range(7):
        rig.submit(f"q{i}")
    assert all(n != "c" for _, n in rig.started())      # 7 waiting: worth waiting
    rig.submit("q7")
    rig.submit("q8")
    on_c = [t for t, n in rig.started() if n == "c"]
    assert on_c and on_c[0] in ("q7", "q8") and "q0" not in on_c


def test_a_call_expected_to_wait_past_its_deadline_is_refused_at_once() -> None:
    rig = Rig("a", slots=1)
    rig.teach("a", 0.5)
    rig.submit("busy")
    rig.submit("late", left_s=0.2)             # one slot frees every 0.5 s
    assert [(t, type(e)) for t, e in rig.refused] == [("late", Overloaded)]
    assert rig.refused[0][1].retry_after == 1
    rig.submit("ok", left_s=0.8)
    rig.t += 0.81
    rig.sched.expire(rig.t)                    # its deadline passed while it waited
    assert [(t, type(e)) for t, e in rig.refused][1:] == [("ok", DeadlineExceeded)]
    assert rig.sched.waiting == 0


def test_a_standing_queue_refuses_at_once_and_sheds_what_waited_too_long() -> None:
    """Arrivals at three times capacity: the head's age stays past the target (100 ms:
    τ is 20 ms) for the interval and the queue does not drain: it stands. New calls
    expected to wait more than a quarter of 2 × target are then refused at once,
    sheddable ones always, and the ones admitted while it stands are shed past
    2 × target (the backlog from before is served: shedding it would only make
    slow refusals)."""
    rig = Rig("a", slots=1)
    rig.teach("a", 0.02)
    rig.submit("busy")
    for _ in range(60):                        # a slot frees every 20 ms, 3 calls arrive
        for _ in range(3):
            rig.submit("more")
        rig.finish(rig.runs[-1], 0.02)
    queue = rig.sched.queues[M]
    assert queue.standing and rig.sched.stats.refused > 0     # refused at once
    assert all(isinstance(e, Overloaded) for _, e in rig.refused)
    assert queue.live() * 0.02 <= 0.25 * 2 * 0.1 + 0.02      # kept short by admission
    for _ in range(5):                         # more arrivals, refused or admitted short
        rig.submit("more")
    before = len(rig.refused)
    rig.submit("s", priority=SHEDDABLE)
    assert [t for t, _ in rig.refused[before:]] == ["s"]
    lane = queue.lanes[1].tickets
    admitted = [t for t in lane if t.wait_until <= rig.t + 0.3]     # while it stood
    shed = rig.sched.stats.shed
    rig.t += 0.3                                # the node stalls: waits pass 2 × target
    rig.sched.expire(rig.t)
    assert admitted and rig.sched.stats.shed == shed + len(admitted)
    assert all(t.wait_until > rig.t for t in queue.lanes[1].tickets if t.state == QUEUED)


def test_a_burst_that_drains_is_not_a_standing_queue() -> None:
    rig = Rig("a", slots=4)
    rig.teach("a", 0.02)
    for i in range(200):
        rig.submit(f"b{i}")                    # a burst: 1 s of work, then nothing
    while rig.sched.waiting:
        rig.finish(rig.runs[len(rig.runs) - 4], 0.02 / 4)
    assert not rig.refused and len(rig.runs) == 200


def test_compatible_calls_leave_together_as_one_batch_up_to_max_rows() -> None:
    rig = Rig("a", slots=1)
    rig.submit("busy", batch="g1", max_rows=4)
    for i, key in enumerate(["g1", "g2", "g1", "g1", "g1", "g1"]):
        rig.submit(f"m{i}", batch=key, max_rows=4, rows=1 if i != 3 else 2)
    rig.finish(rig.runs[0])
    batch = rig.runs[1]
    assert [t.payload for t in batch.tickets] == ["m0", "m2", "m3"]      # 1 + 1 + 2 rows
    assert batch.rows == 4 and rig.pool.nodes["a"].inflight == 1
    rig.finish(batch)
    assert [t.payload for t in rig.runs[2].tickets] == ["m1"]            # another group


def test_a_cancelled_attempt_keeps_its_slot_until_the_node_answers() -> None:
    rig = Rig("a", slots=1)
    rig.submit("first")
    rig.submit("next")
    rig.t += 0.01
    rig.sched.cancelled(rig.runs[0], rig.t, 0.01)        # the client left
    node = rig.pool.nodes["a"]
    assert node.inflight == 0 and node.occupied(rig.t) == 1 and len(rig.runs) == 1
    rig.t += 0.03                                         # the ghost lapses at 2 × age
    rig.sched.wake(rig.t)
    assert [t for t, _ in rig.started()] == ["first", "next"]


def test_a_retry_keeps_its_place_and_avoids_the_node_it_tried() -> None:
    rig = Rig("ab", slots=1)
    first = rig.submit("r")
    for name in "xyz":                                   # a and b busy, y and z wait
        rig.t += 0.001
        rig.submit(name)
    tried = rig.runs[0].node
    rig.finish(rig.runs[0])                              # r's answer says retry: y goes
    first.exclude = [tried]
    rig.sched.submit(first, rig.t)                       # r: before z, not on its node
    assert [t.payload for t in rig.sched.queues[M].lanes[1].tickets] == ["r", "z"]
    rig.finish(rig.runs[1])                              # x's node frees: r goes there
    assert rig.started()[-1][0] == "r" and rig.started()[-1][1] != tried.name


def test_a_hedge_gets_a_free_slot_or_nothing_never_a_place_in_the_queue() -> None:
    rig = Rig("ab", slots=1)
    rig.teach("a", 0.02)
    rig.teach("b", 0.02)
    t = rig.submit("h")
    t.exclude = [rig.runs[0].node]
    node = rig.sched.hedge_node(t, rig.t, beat_s=1.0)
    assert node is not None and node.name != rig.runs[0].node.name
    run = rig.sched.grant(t, node, rig.t)
    assert run.hedge and node.inflight == 1
    assert rig.sched.hedge_node(t, rig.t, beat_s=1.0) is None    # no free slot left


def test_a_call_for_a_model_no_node_serves_yet_is_held_then_started_or_refused() -> None:
    rig = Rig("a", slots=1, queue_timeout_s=1.0)
    rig.pool.set_versions(rig.pool.nodes["a"], {}, {M: frozenset({1})})      # loading
    rig.submit("held")
    rig.submit("late")
    assert not rig.runs and rig.sched.waiting == 2
    rig.pool.set_versions(rig.pool.nodes["a"], {M: frozenset({1})}, {})
    rig.sched.wake(rig.t)
    assert rig.started() == [("held", "a")]
    assert rig.pool.waits.waits == 1
    rig.t += 1.1
    rig.sched.expire(rig.t)
    assert [(t, type(e)) for t, e in rig.refused] == [("late", NotReady)]


def test_a_node_with_few_slow_replies_still_gets_calls_until_it_has_enough() -> None:
    """A node whose first replies were slow (a cold model) is not judged slower than the
    best on fewer than TRUST_SAMPLES replies: with slots free everywhere it takes calls
    (else it would get no samples to show it is fast); with enough, it is judged."""
    for slow_replies, used in ((2, {"a", "b", "c"}), (TRUST_SAMPLES, {"a", "b"})):
        rig = Rig("abc", slots=4)
        for name, tau, n in (("a", 0.05, 31), ("b", 0.05, 31), ("c", 0.09, slow_replies)):
            rig.teach(name, tau, n)
        for i in range(3):
            rig.submit(f"q{i}")
        assert {n for _, n in rig.started()} == used, slow_replies


def test_a_stalled_attempt_cancelled_by_a_rescue_keeps_its_slot_until_the_node_answers(
        ) -> None:
    """A rescue took the call of an attempt that counted as stalled: its ghost holds the
    slot past twice its age, so the stalled node takes no new call to strand, until the
    node answers anything (here a health check); a hedge that lost on a node that was
    not stalled frees its slot at twice its age, as before."""
    rig = Rig("ab", slots=1)
    for name in "ab":
        rig.teach(name, 0.02)
    rig.submit("x")
    stuck = rig.runs[0]
    rig.t += 0.1                                # 5 τ: stalled (stall_factor 3)
    rig.sched.cancelled(stuck, rig.t, 0.1)
    rig.t += 0.3                                # past twice its age
    rig.submit("y")
    rig.submit("z")
    other = "b" if stuck.node.name == "a" else "a"
    assert rig.started()[1:] == [("y", other)] and rig.sched.waiting == 1
    rig.pool.set_versions(stuck.node, {M: frozenset({1})}, {})     # it answers again
    rig.sched.wake(rig.t)
    assert rig.started()[2:] == [("z", stuck.node.name)]
    lost = rig.runs[-1]                         # a hedge lost on a node that keeps up
    rig.t += 0.01
    rig.sched.cancelled(lost, rig.t, 0.01)
    rig.t += 0.011
    assert lost.node.occupied(rig.t) == 0


def test_a_settled_node_holds_one_more_while_calls_wait_and_learns_nothing_from_it(
        ) -> None:
    """policy.concurrency.prefetch 1: a node whose learned limit is settled takes one
    call past it while calls wait (it waits at the node for the next slot, not a round
    trip away); that call's time is no sample; a pinned limit (max_inflight) is never
    passed; and prefetch 0, the default, takes none."""
    rig = Rig("a", slots=2, prefetch=1)
    node = rig.pool.nodes["a"]
    rig.teach("a", 0.02)
    node.limit = Limit(2)
    node.limit.starting = False                 # learned, no probe due
    for name in "1234":
        rig.submit(name)
    assert [t for t, _ in rig.started()] == ["1", "2", "3"] and rig.sched.waiting == 1
    extra = rig.runs[2]
    assert extra.prefetch and not extra.probe and node.inflight == 3
    samples = node.taus[extra.key].samples
    rig.finish(extra, 0.05)
    assert node.taus[extra.key].samples == samples and not node.limit.levels
    assert [t for t, _ in rig.started()] == ["1", "2", "3", "4"]
    pinned = Rig("a", slots=2, prefetch=1)      # Rig pins its limits
    for name in "123":
        pinned.submit(name)
    assert len(pinned.runs) == 2 and pinned.sched.waiting == 1
    off = Rig("a", slots=2)
    off.teach("a", 0.02)
    off.pool.nodes["a"].limit = Limit(2)
    off.pool.nodes["a"].limit.starting = False
    for name in "123":
        off.submit(name)
    assert len(off.runs) == 2 and off.sched.waiting == 1


def test_a_held_call_whose_deadline_comes_first_gets_504_not_503() -> None:
    """Held for a model no node serves yet: past its own deadline the client's time ran
    out (DeadlineExceeded, 504); only past `queue_timeout_s` is it "not ready" (503)."""
    rig = Rig("a", slots=1, queue_timeout_s=1.0)
    rig.pool.set_versions(rig.pool.nodes["a"], {}, {M: frozenset({1})})      # loading
    rig.submit("short", left_s=0.3)
    rig.submit("long", left_s=5.0)
    rig.t += 0.31
    rig.sched.expire(rig.t)
    assert [(t, type(e)) for t, e in rig.refused] == [("short", DeadlineExceeded)]
    rig.t += 0.7
    rig.sched.expire(rig.t)
    assert [(t, type(e)) for t, e in rig.refused][1:] == [("long", NotReady)]
    assert (rig.sched.stats.deadline, rig.sched.stats.timeouts) == (1, 1)


def test_a_node_at_its_limit_takes_one_probe_while_calls_wait() -> None:
    rig = Rig("a", slots=2)
    node = rig.pool.nodes["a"]
    node.limit = Limit(2)
    node.limit.starting = False
    node.limit.since_probe = 100
    for name in "123":
        rig.submit(name)
    assert len(rig.runs) == 3 and rig.runs[2].probe and rig.sched.stats.probes == 1
    rig.submit("4")
    assert len(rig.runs) == 3                            # one probe at a time


@pytest.mark.parametrize("early", [True, False])
def test_round_robin_and_least_conn_send_at_once_without_limits(early: bool) -> None:
    rig = Rig("a", slots=1, early=early)
    for name in "123":
        rig.submit(name)
    assert len(rig.runs) == (3 if early else 1)
