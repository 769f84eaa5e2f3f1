"""The proxy's queue: requests wait here, and a node gets work only into a free slot.

Called by the dispatcher (`lb.request.dispatch`) — `submit` for every attempt,
`finished` when one ends, `cancelled` when one is abandoned, `offer` for a
hedge, `withdraw` for a client that left, `expire` from its one timer — and
by the composition root (`wake`) when the pool changes (a probe, a reload).
Pure: time is passed in, no I/O, no awaits; decisions reach the dispatcher
through each ticket's `on_start` / `on_refuse`. `scripts/tail_bound.py` runs
this same class against simulated nodes.

Late binding. A node has `Node.limit.allowed()` slots (learned,
`lb.pool.concurrency`). A request that finds a free slot on a node that should
serve it goes at once; otherwise it waits in the queue of its model (one per
priority lane) and leaves when a slot frees. Which node: among the free ones,
the least τ for the request's key (model, row bucket); τs within `tie_band`
tie, and ties go to the node with the largest share of its slots free. A slower
node's free slot is used only when waiting is worse: with
n requests waiting and faster nodes that free slots at a rate R = Σ L_j / τ_j,
the n-th would wait about n / R and then take τ_fast, so the slower node i
takes it when τ_i ≤ n / R + τ_fast — and it takes the *last* request waiting,
so the head keeps its place for the next fast slot.

Overload. The queue bounds waiting by time, not by count:
* a request whose expected wait (its place over R) exceeds what its deadline
  or `limits.queue_timeout_s` allows is refused at once (`Overloaded`: 503 +
  Retry-After; UNAVAILABLE on gRPC);
* CoDel: when the oldest request waiting in a model's queue stays older than
  the target (`queue.target_ms`, or `TARGET_TAUS` service times of the model)
  for `queue.interval_ms` and the queue does not drain, it is standing: a
  request is admitted only when expected to leave within `ADMIT` of its bound
  (`SHED_AFTER` targets, 4× for critical ones) and is shed at that bound;
  sheddable requests are refused; with `queue.lifo` the newest are served
  first. It stands until no request was refused for an interval and the head
  stays under half the target;
* a request no node serves yet (its model is loading) is held in the queue up
  to `limits.queue_timeout_s` (`NotReady`), woken by `wake`;
* past the deadline, `DeadlineExceeded`.

Batches. A ticket with a `batch` key (micro-batching, `lb.request.batching`) leaves with
the compatible tickets behind it, up to `max_rows` rows, as one attempt in one
slot.

Guarantees: every ticket ends exactly once, started (`on_start`) or refused
(`on_refuse`); `Node.begin` / `Node.end` bracket every attempt here and
nowhere else (`Run`); a node never has more than `allowed()` attempts and
live ghosts, plus one probe, in flight; nothing waits without a bound.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Final

from lb.errors import DeadlineExceeded, LbError, NotReady, Overloaded, Unavailable
from lb.pool.nodes import Flight, Node, NodePool, TauKey, tau_key
from lb.pool.policy import TAU_SAMPLES, Tau

NEW: Final = 0
QUEUED: Final = 1
STARTED: Final = 2
ENDED: Final = 3

CRITICAL: Final = 0
NORMAL: Final = 1
SHEDDABLE: Final = 2
LANES: Final = 3
SCAN: Final = 8             # tickets looked at from a lane's end for one that fits a node
SHED_AFTER: Final = 2.0     # a standing queue sheds waits past this many targets
TARGET_TAUS: Final = 5.0    # the target is at least this many of the model's service times
ADMIT: Final = 0.25         # ... and admits a ticket expected to wait this much of that
# replies before a node's τ is trusted: to judge it slower than the best node, and to
# teach its concurrency limit (fewer: a cold model's first replies, noise)
TRUST_SAMPLES: Final = TAU_SAMPLES // 4


class Ticket:
    """One call waiting for a slot (see the module docstring). Built by the dispatcher;
    the scheduler reads its fields and calls `on_start(run)` or `on_refuse(ticket,
    error)` exactly once per submission."""

    __slots__ = ("arrived", "batch", "deadline", "exclude", "explicit", "group", "held", "key",
                 "max_rows", "model", "on_refuse", "on_start", "payload", "priority", "rows",
                 "seq", "state", "units", "usable", "version", "wait_until")

    def __init__(self, model: str, version: int | None, units: float, rows: int,
                 deadline: float, on_start: Callable[[Run], None],
                 on_refuse: Callable[[Ticket, LbError], None], *, explicit: bool = False,
                 priority: int = NORMAL, batch: Hashable | None = None, max_rows: int = 0,
                 usable: Callable[[Node], bool] | None = None, group: str | None = None,
                 payload: Any = None) -> None:
        self.model = model
        self.version = version
        self.explicit = explicit
        self.units = units
        self.rows = rows
        self.key: TauKey = tau_key(model, rows)
        self.deadline = deadline
        self.priority = min(max(priority, CRITICAL), SHEDDABLE)
        self.batch = batch                  # micro-batching: tickets with one key may share
        self.max_rows = max_rows            # a run, up to this many rows
        self.group = group                  # the node group that answers (lb.rollout)
        self.usable = usable
        self.on_start = on_start
        self.on_refuse = on_refuse
        self.payload = payload
        self.exclude: list[Node] = []       # nodes this call tried already
        self.arrived = 0.0
        self.wait_until = 0.0
        self.held = False                   # queued because no node serves its model
        self.state = NEW
        self.seq = 0


class Run:
    """One attempt holding one slot: the tickets it carries (several for a batch), the
    node, its flight entry, and what the learner needs (`k`, `probe`)."""

    __slots__ = ("flight", "fut", "hedge", "hedged", "k", "key", "node", "prefetch", "probe",
                 "rows", "started", "tickets", "units")

    def __init__(self, tickets: list[Ticket], node: Node, flight: Flight, k: int,
                 probe: bool, started: float, hedge: bool = False) -> None:
        self.tickets = tickets
        self.node = node
        self.flight = flight
        self.k = k
        self.probe = probe
        self.prefetch = False       # sent beyond the limit, to wait at the node (`_room`)
        self.started = started
        self.hedge = hedge
        rows = 0
        units = 0.0
        for t in tickets:
            rows += t.rows
            units += t.units
        self.rows = rows
        self.units = units
        self.key: TauKey = tickets[0].key if len(tickets) == 1 else tau_key(
            tickets[0].model, rows)
        self.fut: Any = None        # the attempt's future, once the dispatcher sent it
        self.hedged = False         # a copy of it runs elsewhere


class Lane:
    """The waiting tickets of one (model, priority), oldest first; withdrawn tickets
    are skipped lazily (`live` counts the others)."""

    __slots__ = ("live", "tickets")

    def __init__(self) -> None:
        self.tickets: deque[Ticket] = deque()
        self.live = 0

    def trim(self) -> None:
        tickets = self.tickets
        while tickets and tickets[0].state != QUEUED:
            tickets.popleft()
        while tickets and tickets[-1].state != QUEUED:
            tickets.pop()


class ModelQueue:
    """One model's lanes and its CoDel state."""

    __slots__ = ("above_since", "lanes", "model", "refused_at", "shed", "standing", "was")

    def __init__(self, model: str) -> None:
        self.model = model
        self.lanes = [Lane() for _ in range(LANES)]
        self.above_since = math.inf     # since when the head's age is past the target
        self.was = 0                    # how many waited then
        self.standing = False
        self.refused_at = -math.inf     # the last refusal at admission
        self.shed = 0

    def live(self) -> int:
        return self.lanes[0].live + self.lanes[1].live + self.lanes[2].live


class QueueStats:
    """Counters for /stats and /metrics."""

    __slots__ = ("deadline", "probes", "queued", "refused", "shed", "started", "timeouts")

    def __init__(self) -> None:
        self.started = 0        # tickets that got a slot
        self.queued = 0         # ... of which waited in the queue first
        self.refused = 0        # refused at once: expected wait past their budget
        self.shed = 0           # shed from a standing queue (CoDel)
        self.timeouts = 0       # held for a model past limits.queue_timeout_s
        self.deadline = 0       # their deadline passed while they waited
        self.probes = 0         # attempts sent one over a node's limit, to learn it

    def as_dict(self) -> dict[str, int]:
        return {"started": self.started, "queued": self.queued, "refused": self.refused,
                "shed": self.shed, "timeouts": self.timeouts, "deadline": self.deadline,
                "probes": self.probes}


class Settings:
    """What the scheduler reads of the config (`from_config` in `lb.request.dispatch`)."""

    __slots__ = ("early", "interval_s", "lifo", "prefetch", "queue_timeout_s", "relax_s",
                 "stall_factor", "target_s", "tie_band")

    def __init__(self, target_s: float = 0.1, interval_s: float = 0.1, lifo: bool = False,
                 queue_timeout_s: float = 10.0, tie_band: float = 0.2,
                 relax_s: float = 10.0, stall_factor: float = 3.0, early: bool = False,
                 prefetch: int = 0) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self.lifo = lifo
        self.queue_timeout_s = queue_timeout_s
        self.tie_band = tie_band            # τs within this fraction of each other tie
        self.relax_s = relax_s
        self.stall_factor = stall_factor
        # policy round_robin / least_conn (comparisons, and a configured split): each
        # call goes at once to the node `NodePool.pick` chooses, no limits, no queue
        self.early = early
        self.prefetch = prefetch            # policy.concurrency.prefetch (`_room`)


def _refusal(ticket: Ticket, now: float) -> LbError:
    if now >= ticket.deadline:          # the client's time ran out, whatever it waited for
        return DeadlineExceeded("Deadline exceeded")
    if ticket.held:
        return NotReady(f"Model {ticket.model} is not available on any node; retry later")
    return Overloaded("the proxy is overloaded: retry later")


class Scheduler:
    """Slots and one queue per model (see the module docstring); one per process."""

    def __init__(self, pool: NodePool, settings: Settings | None = None,
                 seed: int | None = None) -> None:
        self.pool = pool
        self.settings = settings or Settings()
        self.queues: dict[str, ModelQueue] = {}
        self.stats = QueueStats()
        self._heap: list[tuple[float, int, Ticket]] = []
        self._seq = 0
        self._rng = random.Random(seed)
        self.no_node: type[LbError] = Unavailable   # what a ticket no node may take gets
        self.waiting = 0                    # tickets in every queue
        # when `expire` has work next (a ticket's wait ends, a standing queue sheds):
        # the dispatcher keeps one timer at the earliest of it
        self.wake_at = math.inf

    # -- entry ------------------------------------------------------------------------

    def submit(self, ticket: Ticket, now: float) -> None:
        """Start `ticket` on a node now, queue it, or refuse it (see the module
        docstring). `ticket.exclude` lists the nodes it may not go to (tried)."""
        ticket.state = NEW
        ticket.held = False
        if ticket.arrived == 0.0:
            ticket.arrived = now            # kept across retries: it keeps its place
        cands = self._cands(ticket)
        queue = self.queues.get(ticket.model)
        if cands and self.settings.early:
            node = self.pool.pick(ticket.units, ticket.exclude, ticket.model, ticket.version,
                                  explicit=ticket.explicit, usable=ticket.usable,
                                  group=ticket.group)
            if node is not None:
                self._start([ticket], node, now, False)
                return
        if not cands:
            if not self.pool.knows(ticket.model, ticket.version, ticket.usable,
                                   ticket.group):
                self._refuse(ticket, now, None)     # nothing to wait for: the dispatcher
                return                              # answers "no node" (or sends the 404)
            ticket.held = True
            self._enqueue(ticket, now, now + self.settings.queue_timeout_s)
            return
        if queue is None or queue.live() == 0:
            node, probe = self._place(ticket, cands, 1, now)
            if node is not None:
                self._start([ticket], node, now, probe)
                return
        standing = queue is not None and queue.standing
        if standing and ticket.priority == SHEDDABLE:
            self.stats.refused += 1
            self._refuse(ticket, now, Overloaded("the proxy is overloaded: retry later"))
            return
        bound = self._standing_bound(ticket) if standing else self.settings.queue_timeout_s
        until = min(ticket.deadline, now + bound)
        wait = self._expected_wait(ticket, cands, (queue.live() if queue else 0) + 1)
        if now + wait > (now + ADMIT * bound if standing else until):
            self.stats.refused += 1
            if queue is not None:
                queue.refused_at = now
            self._refuse(ticket, now, Overloaded("the proxy is overloaded: retry later"))
            return
        self._enqueue(ticket, now, until)
        self._spill(now)

    def _standing_bound(self, ticket: Ticket) -> float:
        """How long a ticket may wait in a standing queue before it is shed: `SHED_AFTER`
        targets (4× that for critical ones, none for sheddable ones). It is admitted only
        when expected to leave within `ADMIT` of that: the estimate is rough, and a
        ticket shed after waiting waited for nothing (a refusal at once is the clear
        answer)."""
        if ticket.priority == SHEDDABLE:
            return 0.0
        return self.target(ticket.model) * SHED_AFTER * (4.0 if ticket.priority == CRITICAL
                                                          else 1.0)

    def withdraw(self, ticket: Ticket) -> None:
        """The client left while `ticket` waited: it leaves the queue, unanswered."""
        if ticket.state == QUEUED:
            ticket.state = ENDED
            self._unqueue(ticket)

    def finished(self, run: Run, now: float, elapsed: float, ok: bool, sample: bool) -> None:
        """`run`'s attempt ended with an answer or an error (not a cancel): its slot
        frees, the node's τ and limit learn from a good sample, and waiting tickets
        may take the slot."""
        node = run.node
        sample = sample and not run.prefetch    # its time includes a wait at the node
        node.end(run.flight, elapsed, ok=ok, now=now, sample=sample)
        if run.probe:
            node.limit.probes -= 1
        if sample and run.units > 0:
            per_unit = elapsed / run.units
            tau = node.taus.get(run.key)
            if tau is None:
                tau = node.taus[run.key] = Tau(self.settings.relax_s)
            tau.update(per_unit, now)
            if tau.samples >= TRUST_SAMPLES:
                node.limit.observe(run.k, per_unit, tau, now)
        self._drain(node, now)
        if self.waiting:
            self._spill(now)

    def cancelled(self, run: Run, now: float, elapsed: float) -> None:
        """`run`'s attempt was abandoned (a hedge lost, the client left): the node
        likely still works on it, so its slot stays taken as a ghost until the node
        answers something or the ghost lapses (`Node.end`). An attempt that counted as
        stalled (a rescue took its call) holds its ghost until the node answers
        anything, a request or a health check, or for `relax_s` at most: the node
        stays stalled meanwhile, and takes no new call to strand (at twice its age, the
        ghost would free the slot mid-stall, and each new call would wait to be
        rescued, and fill τ with stalled samples)."""
        node = run.node
        age = now - max(run.flight.start, node.answered_at)
        stuck = run.units > 0 and age > (self.settings.stall_factor * run.units
                                         * self._learned_tau(node, run.key, now))
        node.end(run.flight, elapsed, ok=True, now=now, sample=False, lower_bound=True,
                 hold_s=max(elapsed, self.settings.relax_s) if stuck else None)
        if run.probe:
            node.limit.probes -= 1
        tau = node.taus.get(run.key)
        if tau is not None and run.units > 0:
            tau.raise_to(elapsed / run.units, now)
        self._drain(node, now)

    def hedge_node(self, ticket: Ticket, now: float, beat_s: float) -> Node | None:
        """For a hedge: an eligible node (not in `ticket.exclude`) with a free slot now
        that is expected to answer within `beat_s` seconds, the soonest; None when there
        is none. Never queues; the caller spends its budget, then `grant`s."""
        best: Node | None = None
        best_s = beat_s
        for node in self._cands(ticket):
            if node.occupied(now) < node.limit.allowed():
                expect = self._tau(node, ticket.key, now) * ticket.units
                if expect < best_s:
                    best, best_s = node, expect
        return best

    def grant(self, ticket: Ticket, node: Node, now: float) -> Run:
        """A slot on `node` for a hedge of `ticket` (`hedge_node` found it free)."""
        return self._begin([ticket], node, now, False, hedge=True)

    def wake(self, now: float) -> None:
        """The pool changed (a probe, a reload, a node readmitted): drain every node."""
        for node in list(self.pool.nodes.values()):
            self._drain(node, now)
        self._spill(now)

    # -- time ---------------------------------------------------------------------------

    def expire(self, now: float) -> float | None:
        """Refuse the tickets whose wait is over (budget, deadline, CoDel) and return
        when to look again (time of the next expiry), None when nothing waits."""
        heap = self._heap
        while heap and (heap[0][2].state != QUEUED or heap[0][2].seq != heap[0][1]
                        or heap[0][0] <= now):
            _, seq, ticket = heapq.heappop(heap)
            if ticket.state == QUEUED and ticket.seq == seq:
                self._unqueue(ticket)
                if now >= ticket.deadline:
                    self.stats.deadline += 1
                elif ticket.held:
                    self.stats.timeouts += 1
                else:                       # its wait budget ran out: shed
                    self.stats.shed += 1
                    self.queues[ticket.model].shed += 1
                self._refuse(ticket, now, _refusal(ticket, now))
        due = heap[0][0] if heap else None
        for queue in self.queues.values():
            if queue.standing:
                at = self._shed(queue, now)
                if at is not None and (due is None or at < due):
                    due = at
        self.wake_at = math.inf if due is None else due
        return due

    def _shed(self, queue: ModelQueue, now: float) -> float | None:
        """A standing queue: its sheddable lane is refused at once. (The others keep
        the bound they were admitted with: those admitted while it stands expire at
        `SHED_AFTER` targets (`_standing_bound`), and the backlog that built up before
        it stood is served — shedding it would only turn it into slow refusals.)
        Returns None: nothing here is due later."""
        lane = queue.lanes[SHEDDABLE]
        lane.trim()
        while lane.tickets:
            ticket = lane.tickets.popleft()
            if ticket.state != QUEUED:
                continue
            ticket.state = ENDED
            lane.live -= 1
            self.waiting -= 1
            queue.shed += 1
            self.stats.shed += 1
            self._refuse(ticket, now, Overloaded("the proxy is overloaded: retry later"))
            lane.trim()
        return None

    # -- placement ----------------------------------------------------------------------

    def _cands(self, ticket: Ticket) -> list[Node]:
        return self.pool.eligible(ticket.units, ticket.exclude, ticket.model, ticket.version,
                                  explicit=ticket.explicit, usable=ticket.usable,
                                  group=ticket.group)

    def _tau(self, node: Node, key: TauKey, now: float) -> float:
        """The node's τ for `key` (`_learned_tau`), unless it is stalled now: its oldest
        request (or a ghost) has been in service for longer than `stall_factor` × τ ×
        its units; then it counts with what that request has shown."""
        value = self._learned_tau(node, key, now)
        oldest = node.oldest(now)
        if oldest is not None and oldest.units > 0:
            age = now - max(oldest.start, node.answered_at)
            if age > self.settings.stall_factor * value * oldest.units:
                return age / oldest.units
        return value

    def _learned_tau(self, node: Node, key: TauKey, now: float) -> float:
        """The node's τ for `key` from its replies. Without samples, or with fewer than
        `TRUST_SAMPLES` that put it above the least τ any node has for it, that least
        one (optimistic: the node gets samples; a node's first replies are often slow, a
        cold model), and 1.0 when none has; a τ that no sample refreshed relaxes
        towards that least one (`policy.tau_relax_s`)."""
        tau = node.taus.get(key)
        ref = self._least_tau(key)
        if tau is None or tau.value is None or (tau.samples < TRUST_SAMPLES
                                                and tau.value > ref):
            return ref
        value = tau.value
        if value > ref and tau.stamp < now:
            trust = self.settings.relax_s * max(tau.samples, 1) / TAU_SAMPLES
            value = ref + (value - ref) * math.exp(-(now - tau.stamp) / trust)
        return value

    def _least_tau(self, key: TauKey) -> float:
        best = math.inf
        for node in self.pool.nodes.values():
            tau = node.taus.get(key)
            if tau is not None and tau.value is not None and tau.value < best:
                best = tau.value
        return 1.0 if best == math.inf else best

    def _place(self, ticket: Ticket, cands: list[Node], n: int,
               now: float) -> tuple[Node | None, bool]:
        """Where the n-th waiting ticket of its model goes now: the free node with the
        least τ, unless waiting for a faster one is better; else a probe (one over a
        node's limit, while tickets wait for it); (None, False): it waits."""
        free: list[Node] = []
        taus: list[float] = []
        best = math.inf
        for node in cands:
            tau = self._tau(node, ticket.key, now)
            if node.occupied(now) < node.limit.allowed():
                free.append(node)
                taus.append(tau)
                if tau < best:
                    best = tau
        if free:
            if self._worth_waiting(ticket, cands, best, n, now):
                return None, False
            bound = best * (1.0 + self.settings.tie_band)
            growing = self._starting(ticket, cands, bound, now)
            if growing is not None:           # as good, and in its slow start: grow it
                return growing, True
            ties = [node for node, tau in zip(free, taus, strict=True) if tau <= bound]
            return (ties[0] if len(ties) == 1 else self._least_used(ties, now)), False
        return self._probe(ticket, cands, now), True

    def _starting(self, ticket: Ticket, cands: list[Node], bound: float,
                  now: float) -> Node | None:
        """A node in its slow start with fewer slots than another candidate (added to a
        running pool, readmitted: it began at one), at its limit and as fast as the
        best free one (τ within `bound`): it takes a probe, so that it grows while it
        keeps up, not only once requests wait (it would stay at one slot while the
        others can take the load)."""
        most = 0
        for node in cands:
            most = max(most, node.limit.allowed())
        for node in cands:
            limit = node.limit
            if (limit.starting and limit.allowed() < most and limit.wants_probe()
                    and node.occupied(now) >= limit.allowed()
                    and self._tau(node, ticket.key, now) <= bound):
                return node
        return None

    def _least_used(self, ties: list[Node], now: float) -> Node:
        """Among nodes that tie on τ, the one with the most of its slots free (at random
        among equals: processes that do not share counts do not all pick the same)."""
        best: list[Node] = []
        low = math.inf
        for node in ties:
            used = node.occupied(now) / node.limit.allowed()
            if used < low - 1e-9:
                best, low = [node], used
            elif used <= low + 1e-9:
                best.append(node)
        return best[0] if len(best) == 1 else self._rng.choice(best)

    def _worth_waiting(self, ticket: Ticket, cands: list[Node], tau_free: float, n: int,
                       now: float) -> bool:
        """Whether the n-th waiting ticket does better waiting for a slot on a faster
        busy node than taking a free one of τ `tau_free` now: n / R + τ_fast < τ_free."""
        rate = 0.0
        fastest = math.inf
        faster = tau_free / (1.0 + self.settings.tie_band)
        for node in cands:
            tau = self._tau(node, ticket.key, now)
            if tau < faster and node.occupied(now) >= node.limit.allowed():
                rate += node.limit.allowed() / tau
                if tau < fastest:
                    fastest = tau
        if rate <= 0.0:
            return False
        return n / rate + fastest < tau_free

    def _probe(self, ticket: Ticket, cands: list[Node], now: float) -> Node | None:
        """A node at its limit that wants a probe (`Limit.wants_probe`), the fastest."""
        best: Node | None = None
        best_tau = math.inf
        for node in cands:
            limit = node.limit
            if limit.wants_probe() and node.occupied(now) >= limit.allowed():
                tau = self._tau(node, ticket.key, now)
                if tau < best_tau:
                    best, best_tau = node, tau
        return best

    def _expected_wait(self, ticket: Ticket, cands: list[Node], n: int) -> float:
        """About how long the n-th waiting ticket waits for a slot: n over the rate at
        which the candidates free slots (0 while no node has a τ for it yet)."""
        rate = 0.0
        for node in cands:
            tau = node.taus.get(ticket.key)
            if tau is not None and tau.value is not None and tau.value > 0:
                rate += node.limit.allowed() / (tau.value * max(ticket.units, 1e-9))
        return n / rate if rate > 0 else 0.0

    # -- the queue ----------------------------------------------------------------------

    def _enqueue(self, ticket: Ticket, now: float, until: float) -> None:
        queue = self.queues.get(ticket.model)
        if queue is None:
            queue = self.queues[ticket.model] = ModelQueue(ticket.model)
        ticket.wait_until = min(until, ticket.deadline)
        ticket.state = QUEUED
        self._seq += 1
        ticket.seq = self._seq
        lane = queue.lanes[ticket.priority]
        tickets = lane.tickets
        if tickets and tickets[-1].arrived > ticket.arrived:     # a retry: it came first
            i = len(tickets)
            while i > 0 and tickets[i - 1].arrived > ticket.arrived:
                i -= 1
            tickets.insert(i, ticket)
        else:
            tickets.append(ticket)
        lane.live += 1
        self.waiting += 1
        heapq.heappush(self._heap, (ticket.wait_until, ticket.seq, ticket))
        if ticket.wait_until < self.wake_at:
            self.wake_at = ticket.wait_until

    def _unqueue(self, ticket: Ticket) -> None:
        queue = self.queues[ticket.model]
        lane = queue.lanes[ticket.priority]
        lane.live -= 1
        self.waiting -= 1
        lane.trim()

    def _drain(self, node: Node, now: float) -> None:
        """`node` may have free slots: give them to waiting tickets it should take."""
        if not self.waiting:
            return
        while node.occupied(now) < self._room(node):
            taken = self._take_for(node, now)
            if taken is None:
                return
            self._start(taken, node, now, False)

    def _room(self, node: Node) -> int:
        """How many attempts `node` may hold now: its limit, plus `prefetch` while
        tickets wait and the limit is learned and settled (not pinned, not in its slow
        start or measuring, no probe due or out: those already send past it). The extra
        one waits in the node's own queue and starts the moment a slot frees: without
        it each slot stands idle for a round trip (the reply reaching the proxy, the
        next request the node) between two requests, which cost late binding its tails
        at 1 ms a hop (scripts/tail_bound.py --hop-ms). It is no sample: its time
        includes that wait."""
        limit = node.limit
        room = limit.allowed()
        if self.settings.prefetch and self.waiting and not (
                limit.starting or limit.measuring or limit.pinned or limit.probes
                or limit.wants_probe()):
            room += self.settings.prefetch
        return room

    def _spill(self, now: float) -> None:
        """Tickets wait: offer every node's free slots again (a slower node's, left free
        by the rule, may be worth it with the queue longer now), and let a node at its
        limit that wants to learn whether it has one more take a probe."""
        for node in self.pool.nodes.values():
            if not self.waiting:
                return
            occupied = node.occupied(now)
            if occupied < self._room(node):
                self._drain(node, now)
            while self.waiting and node.limit.wants_probe():
                taken = self._take_for(node, now)
                if taken is None:
                    break
                self._start(taken, node, now, True)

    def _take_for(self, node: Node, now: float) -> list[Ticket] | None:
        """The tickets `node`'s free slot should carry now, or None: from the first lane
        (by priority, then the oldest head) that has tickets that may go to it and for
        which it is the right node (the spill rule)."""
        heads: list[tuple[int, float, int, ModelQueue, Lane]] = []
        for queue in self.queues.values():
            for lane_no, lane in enumerate(queue.lanes):
                if lane.live == 0:
                    continue
                lane.trim()
                heads.append((lane_no, lane.tickets[0].arrived, lane.tickets[0].seq,
                              queue, lane))
                break
        heads.sort(key=lambda h: (h[0], h[1], h[2]))
        for _, _, _, queue, lane in heads:
            chosen = self._fitting(queue, lane, node, now)
            if chosen is not None:
                return self._pop(queue, lane, chosen, now)
        return None

    def _fitting(self, queue: ModelQueue, lane: Lane, node: Node,
                 now: float) -> Ticket | None:
        """The ticket of `lane` that `node` takes: the head (or the newest, in a standing
        queue with LIFO), or — when faster nodes are busy and the queue is long enough
        for the spill rule — the newest; None when none may go there now."""
        tickets = lane.tickets
        newest_first = queue.standing and self.settings.lifo
        order = range(len(tickets) - 1, max(len(tickets) - 1 - SCAN, -1), -1) \
            if newest_first else range(min(SCAN, len(tickets)))
        for i in order:
            ticket = tickets[i]
            if ticket.state != QUEUED:
                continue
            cands = self._cands(ticket)
            if node not in cands:
                continue
            tau = self._tau(node, ticket.key, now)
            if not queue.standing and self._worth_waiting(ticket, cands, tau, queue.live(),
                                                          now):
                return None     # standing: every slot is worth more than the wait
            faster = tau / (1.0 + self.settings.tie_band)
            faster_busy = any(self._tau(c, ticket.key, now) < faster for c in cands
                              if c is not node)
            if faster_busy and not newest_first:
                tail = tickets[-1]
                if tail.state == QUEUED and node in self._cands(tail):
                    return tail
            return ticket
        return None

    def _pop(self, queue: ModelQueue, lane: Lane, first: Ticket, now: float) -> list[Ticket]:
        """Take `first` (and, for a batch, the compatible tickets behind it up to
        max_rows) out of the lane; CoDel learns from how long they waited."""
        taken = [first]
        first.state = STARTED
        rows = first.rows
        if first.batch is not None and first.max_rows > rows:
            for ticket in lane.tickets:
                if (ticket.state == QUEUED and ticket.batch == first.batch
                        and not ticket.exclude and rows + ticket.rows <= first.max_rows):
                    ticket.state = STARTED
                    taken.append(ticket)
                    rows += ticket.rows
                    if rows >= first.max_rows:
                        break
        lane.live -= len(taken)
        self.waiting -= len(taken)
        lane.tickets = deque(t for t in lane.tickets if t.state == QUEUED)
        self._codel(queue, now - min(first.arrived, self._oldest(queue, now)), now)
        self.stats.queued += len(taken)
        return taken

    @staticmethod
    def _oldest(queue: ModelQueue, now: float) -> float:
        """When the oldest ticket still waiting in `queue` arrived (`now` if none)."""
        oldest = now
        for lane in queue.lanes:
            if lane.live:
                lane.trim()
                oldest = min(oldest, lane.tickets[0].arrived)
        return oldest

    def target(self, model: str) -> float:
        """CoDel's target for `model`: `queue.target_ms`, or `TARGET_TAUS` times the
        model's service time on its fastest node when that is longer (a queue of a
        second in front of a one-second model is not standing)."""
        return max(self.settings.target_s, TARGET_TAUS * self._least_tau(tau_key(model, 1))
                   if self._has_tau(model) else self.settings.target_s)

    def _has_tau(self, model: str) -> bool:
        key = tau_key(model, 1)
        return any(key in node.taus for node in self.pool.nodes.values())

    def _codel(self, queue: ModelQueue, sojourn: float, now: float) -> None:
        """A ticket left while the oldest one had waited `sojourn` (the head's age, not
        the leaver's: the newest may leave first, LIFO or spilled to a slower node).
        The queue stands once that stayed above `target` for `interval`, the queue is
        no shorter than it was then (a burst that drains is not a standing queue: its
        requests will be served, and shedding them would lose them); it stops
        standing once no request was refused at admission and the head's age stayed
        below half the target for `interval` (admission keeps a standing queue short:
        without the hysteresis it would flap, and each flap would let in a burst that
        is shed later, slowly)."""
        settings = self.settings
        target = self.target(queue.model)
        if not queue.standing:
            live = queue.live()
            if sojourn <= target or live == 0:
                queue.above_since = math.inf
            elif queue.above_since == math.inf:
                queue.above_since, queue.was = now, live
            elif now - queue.above_since >= settings.interval_s:
                if live >= queue.was:
                    queue.standing = True
                    queue.above_since = math.inf
                    self.wake_at = now      # shed what waited past the bound now
                else:                       # draining: look again over the next interval
                    queue.above_since, queue.was = now, live
        elif (sojourn > 0.5 * target and queue.live() > 0) or (
                now - queue.refused_at < settings.interval_s):
            queue.above_since = math.inf            # here: since when it is calm
        elif queue.above_since == math.inf:
            queue.above_since = now
        elif now - queue.above_since >= settings.interval_s:
            queue.standing = False
            queue.above_since = math.inf

    # -- starting and refusing ------------------------------------------------------------

    def _start(self, tickets: list[Ticket], node: Node, now: float, probe: bool) -> None:
        run = self._begin(tickets, node, now, probe)
        for ticket in tickets:
            ticket.state = STARTED
            if ticket.held:         # it waited for a node to serve its model
                ticket.held = False
                self.pool.waits.count(now - ticket.arrived, False)
        self.stats.started += len(tickets)
        tickets[0].on_start(run)

    def _begin(self, tickets: list[Ticket], node: Node, now: float, probe: bool,
               hedge: bool = False) -> Run:
        k = node.occupied(now)
        units = 0.0
        for ticket in tickets:
            units += ticket.units
        flight = node.begin(units, now)
        run = Run(tickets, node, flight, k, probe, now, hedge)
        run.prefetch = not probe and not hedge and k >= node.limit.allowed()
        flight.owner = run
        if probe:
            node.limit.probe_sent()
            self.stats.probes += 1
        return run

    def _refuse(self, ticket: Ticket, now: float, error: LbError | None) -> None:
        ticket.state = ENDED
        if ticket.held:
            self.pool.waits.count(now - ticket.arrived, True)
        if error is None:
            error = self.no_node(f"no node available for model {ticket.model}")
        ticket.on_refuse(ticket, error)

    # -- reporting ------------------------------------------------------------------------

    def queue_lengths(self) -> dict[str, int]:
        """Tickets waiting per model (for /stats and /metrics)."""
        return {m: q.live() for m, q in self.queues.items() if q.live()}

    def standing(self) -> list[str]:
        """The models whose queue stands now (CoDel)."""
        return [m for m, q in self.queues.items() if q.standing]

