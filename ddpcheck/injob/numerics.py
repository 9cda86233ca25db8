"""The Monitor's numerics canary: ``Monitor(numerics_every=N)``, inside the user's job.

Every N steps each rank runs a few-millisecond canary on its training device: the preflight
check's product chain (``remote.numerics.ProductChain``: a seeded chain of products, a batched
product and a small product checked against float64, one sync), in bf16 on a GPU that has it
(fp32 otherwise, and on CPU), and posts the digest of its bits to torchrun's TCPStore. At the next
canary, rank 0 reads every rank's post of the previous round (the ranks have all passed it by
then, so nothing waits; in a thread of its own, so the store's round trips stay out of the step)
and applies the preflight vote (``core.numerics_vote``): a rank whose bits differ from its peers
of the same device model and versions, whose result holds NaN/Inf or leaves the float64 bound,
is logged as a ``numerics`` warning naming its rank, host and device (also kept in
``canary.wrong``, complete after ``canary.flush()``, and the Monitor's ``warnings``), and carried
in the judging rank's heartbeat (``canary.named``: per device and dtype, how many of the rounds
compared it was wrong in), so that ``ddpcheck hang`` names it too. Without a
store (a job not started by torchrun) each rank judges its own canary by the reference and
NaN/Inf alone.

Torch-light like the Monitor: torch is used only when the job has already imported it (the
product chain's module is imported at the first canary).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional

from ..core.numerics_vote import DtypeResult, RankNumerics, WrongProducts, odd_ones

STORE_PREFIX = "numerics/"
SLOTS = 3
MAX_NAMED = 32  # devices x dtypes kept for the heartbeat (a few kB; the heartbeat's cap is 64 kB)
CPU_SIZE = 64  # a chain of 64x64 products: about a millisecond on one core
GPU_SIZE = 1024  # 1024^2 in bf16: well under a millisecond on a current GPU

logger = logging.getLogger("ddpcheck.injob.numerics")


class NumericsCanary:
    """Every ``every`` steps: the canary on this rank, its digest posted, the previous round
    compared (on rank 0). ``store``: a callable giving the job's store (None: no store)."""

    def __init__(self, every: int, rank: int, world_size: int, host: str,
                 store: Callable[[], Any], warnings: Optional[list[str]] = None) -> None:
        if every < 1:
            raise ValueError(f"numerics_every must be >= 1, got {every}")
        self.every = every
        self.rank = rank
        self.world_size = world_size
        self.host = host
        self.connect = store
        self.store: Any = None
        self.store_tried = False
        self.chain: Any = None
        self.identity: dict[str, Any] = {}
        self.rounds: list[int] = []  # the steps canaries ran at, newest last
        self.wrong: list[dict[str, Any]] = []  # every wrong device named (as dicts)
        self.judged = 0  # rounds compared so far
        self.named: dict[tuple[Any, str], dict[str, Any]] = {}  # (rank, dtype) -> its record
        self.named_json: Optional[str] = None  # ``named`` as the heartbeat carries it
        self.warnings = warnings if warnings is not None else []
        self.seconds = 0.0  # time spent in canaries, all told
        self.times: list[float] = []  # each canary's seconds (the first builds the chain)
        self.disabled: Optional[str] = None
        self._rounds_to_judge: Optional[queue.SimpleQueue] = None
        self._unjudged = 0  # rounds queued and not yet judged (under _judged)
        self._judged = threading.Condition()

    def step(self, step: int) -> None:
        """Called from ``Monitor.step``: runs the canary when ``step`` is a multiple of N."""
        if step % self.every or self.disabled or (self.rounds and self.rounds[-1] == step):
            return
        begin = time.perf_counter()
        try:
            self._canary(step)
        except Exception as exc:  # noqa: BLE001 - the canary is advisory: never stop the job
            self.disabled = f"{type(exc).__name__}: {exc}"
            logger.warning("ddpcheck.Monitor numerics canary off: %s", self.disabled)
        self.times.append(time.perf_counter() - begin)
        self.seconds += self.times[-1]

    # -- one round -------------------------------------------------------------------------
    def _canary(self, step: int) -> None:
        if self.chain is None and not self._build():
            return
        digest, nonfinite, off = self.chain.repetition()
        post = {"step": step, "rank": self.rank, "host": self.host, "digest": digest,
                "nonfinite": int(nonfinite), "off": int(off), **self.identity}
        store = self._store()
        previous = self.rounds[-1] if self.rounds else None
        self.rounds.append(step)
        if store is None:
            self._judge([post], step)
            return
        # slots in turn: only the previous round is read, so each post overwrites one from
        # SLOTS rounds ago and the store never grows (three: a rank a round ahead of rank 0
        # must not overwrite the round rank 0 is reading)
        slot = len(self.rounds) % SLOTS
        store.set(f"{STORE_PREFIX}{slot}/{self.rank}", json.dumps(post, separators=(",", ":")))
        if previous is not None and self.rank == 0:
            self._judge_later(store, (slot - 1) % SLOTS, previous)

    def _build(self) -> bool:
        torch = sys.modules.get("torch")
        if torch is None:
            self.disabled = "torch is not imported by the job"
            return False
        from ..remote import numerics  # the job has torch: the chain's module may load it

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.device("cuda", _job_device(torch))
            major, _ = torch.cuda.get_device_capability(device)
            name = "bf16" if major >= 8 and torch.cuda.is_bf16_supported() else "fp32"
            size = GPU_SIZE
        else:
            device, name, size = torch.device("cpu"), "fp32", CPU_SIZE
        identity = numerics.device_identity(device, self.host, self.rank)
        threads = torch.get_num_threads() if device.type == "cpu" else None
        # on CPU the job's thread count may change the bits: ranks vote with their like
        group = identity["group"] + (f" | {threads} threads" if threads else "")
        self.identity = {"where": identity["where"], "group": group, "dtype": name}
        self.chain = numerics.ProductChain(name, device, size)
        return True

    def _store(self) -> Any:
        if not self.store_tried:
            self.store_tried = True
            self.store = self.connect()
        return self.store

    def _judge_later(self, store: Any, slot: int, step: int) -> None:
        """Rank 0 reads and judges a round in a thread of its own: the store's round trips
        (to torchrun's agent, which may be waiting for a CPU) stay out of the training step."""
        if self._rounds_to_judge is None:
            self._rounds_to_judge = queue.SimpleQueue()
            threading.Thread(target=self._judge_rounds, args=(store,), daemon=True,
                             name="ddpcheck-numerics").start()
        with self._judged:
            self._unjudged += 1
        self._rounds_to_judge.put((slot, step))

    def _judge_rounds(self, store: Any) -> None:
        while True:
            slot, step = self._rounds_to_judge.get()
            try:
                self._judge(read_round(store, slot, step, self.world_size), step)
            except Exception as exc:  # noqa: BLE001 - advisory: a lost round is not an error
                logger.debug("ddpcheck numerics canary: round %s not judged: %s", step, exc)
            with self._judged:
                self._unjudged -= 1
                self._judged.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until every round posted so far is judged (``wrong`` is then complete)."""
        with self._judged:
            return self._judged.wait_for(lambda: self._unjudged == 0, timeout_s)

    def _judge(self, posts: list[dict[str, Any]], step: int) -> None:
        self.judged += 1
        found = odd_ones(rank_results(posts))
        for wrong in found:
            named = {"step": step, "rank": wrong.rank, "host": wrong.host, "where": wrong.where,
                     "dtype": wrong.dtype, "why": [str(w) for w in wrong.why]}
            self.wrong.append(named)
            self._remember(wrong, step, len(posts))
            message = canary_message(self.host, self.rank, step, wrong, len(posts))
            self.warnings.append(message)
            logger.warning(message)
        if found or self.named:
            for record in self.named.values():
                record["rounds"] = self.judged
            # a new string each time: the Monitor's writer splices whichever it reads
            self.named_json = json.dumps(list(self.named.values())[-MAX_NAMED:],
                                         separators=(",", ":"))

    def _remember(self, wrong: WrongProducts, step: int, compared: int) -> None:
        """The heartbeat's record of a device and dtype: wrong in ``wrong_rounds`` of the
        ``rounds`` compared, first and last at which step, why the last time."""
        record = self.named.get((wrong.rank, wrong.dtype))
        if record is None:
            record = self.named[(wrong.rank, wrong.dtype)] = {
                "rank": wrong.rank, "host": wrong.host, "where": wrong.where,
                "dtype": wrong.dtype, "first_step": step, "wrong_rounds": 0,
                "gpu": wrong.where.startswith("GPU ")}
        record.update({"why": [str(w) for w in wrong.why], "peers": wrong.peers,
                       "compared": compared, "last_step": step,
                       "wrong_rounds": record["wrong_rounds"] + 1})


def attach_canary(monitor: Any, every: Optional[int],
                  connect: Callable[[Mapping[str, str], str], Any]) -> Optional[NumericsCanary]:
    """``Monitor(numerics_every=N)``: a canary for the monitor's rank, run after each of its
    steps (None when ``every`` is 0 or None). The canary is chained onto this monitor's
    ``step`` rather than tested for in it, so a Monitor without one pays nothing per step.
    ``connect(env, job)`` gives the job's store (the Monitor's own way of reaching it)."""
    if not every:
        return None
    canary = NumericsCanary(every, monitor.rank or 0, monitor.world_size or 1, monitor.hostname,
                            lambda: connect(monitor.env, monitor.job), monitor.warnings)
    step = monitor.step

    def step_then_canary(number: int) -> None:
        step(number)
        canary.step(number)

    monitor.step = step_then_canary
    return canary


def read_round(store: Any, slot: int, step: int, world_size: int) -> list[dict[str, Any]]:
    """Every rank's post of the round at ``step`` that is in ``slot`` (one request when all
    ranks posted)."""
    keys = [f"{STORE_PREFIX}{slot}/{rank}" for rank in range(world_size)]
    if store.check(keys):
        values = store.multi_get(keys)
    else:
        values = [store.get(key) for key in keys if store.check([key])]
    posts = []
    for value in values:
        try:
            post = json.loads(value)
        except ValueError:
            continue
        if isinstance(post, dict) and post.get("step") == step:  # not a rank's older round
            posts.append(post)
    return posts


def rank_results(posts: list[dict[str, Any]]) -> list[RankNumerics]:
    """One repetition per rank, in the vote's terms."""
    ranks = []
    for post in posts:
        result = DtypeResult(1, {str(post.get("digest")): 1}, int(bool(post.get("nonfinite"))),
                             int(bool(post.get("off"))))
        rank = post.get("rank") if isinstance(post.get("rank"), int) else None
        ranks.append(RankNumerics(rank, str(post.get("host")), str(post.get("where")),
                                  str(post.get("group")), {str(post.get("dtype")): result}))
    return ranks


def canary_message(hostname: str, rank: int, step: int, wrong: WrongProducts,
                   compared: int) -> str:
    """The log line: who computed wrong, at which canary, and what to do."""
    why = ", ".join(str(w) for w in wrong.why).replace(
        "its peers", f"its {wrong.peers} peer{'s' if wrong.peers != 1 else ''}")
    return (f"ddpcheck.Monitor [{hostname}:rank {rank}]: numerics: {wrong.where} computed the "
            f"step-{step} canary ({wrong.dtype}) wrong ({why}; {compared} rank(s) compared); "
            f"drain the node after this run's checkpoint; run DCGM diag level 3 "
            f"(`dcgmi diag -r 3`) or the vendor's field diagnostics; RMA if it repeats")


def _job_device(torch: Any) -> int:
    """The GPU this rank's job uses: its process group's bound device, else the current device
    the job set, else ``cuda:LOCAL_RANK`` (a job that places its tensors there without
    ``set_device`` leaves every rank's current device at 0), else 0."""
    dist = sys.modules.get("torch.distributed")
    try:
        bound = dist.distributed_c10d._get_default_group().bound_device_id \
            if dist is not None and dist.is_available() and dist.is_initialized() else None
    except Exception:  # noqa: BLE001 - an older torch
        bound = None
    if bound is not None and bound.index is not None:
        return bound.index
    current = torch.cuda.current_device()
    local = os.environ.get("LOCAL_RANK", "")
    if current == 0 and local.isdigit() and int(local) < torch.cuda.device_count():
        return int(local)
    return current
