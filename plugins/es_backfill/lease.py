"""One run owns a backfill's output at a time: a lease object written with S3's conditional writes.

``{s3_prefix}/{backfill_name}/_lease.json`` names the DAG run that owns the output, when that run
started, its last heartbeat and until when the lease holds. ``plan`` takes it with
``If-None-Match: *`` (S3 writes the object only if none exists, atomically), so of two runs of the
same backfill only one gets it; the other is refused, naming the holder. Every change after that is
an ``If-Match`` on the ETag read, so a lease that two runs try to take over at once goes to one of
them. The holder's ``extract`` tasks renew it as they write (a cleared task of the holding run keeps
working), ``summarise`` releases it, and a lease whose holder died expires ``LEASE_TTL`` after its last
heartbeat; ``force_lease`` takes it over at once. Backfills with other names or prefixes have other
leases and run side by side.

Within the run, each attempt at a window claims it: ``_attempt.json`` in the window's folder holds a token
only that attempt knows (and its run and try number), written with a conditional write once the window's checks
pass and before the attempt takes the lease or writes anything else. An attempt does not claim a window that a
later try of its run has claimed (it was given up before it began). Before every object it commits, before it
deletes what an earlier attempt left and before its manifest, an attempt checks that the claim is still its own,
and stops with :class:`AttemptSuperseded` if a later attempt (Airflow's retry, or the task cleared) has claimed
the window since: a worker Airflow gave up on (paused, cut off from the scheduler) that wakes up writes nothing
over the retry's output, and takes no lease its run has released. The claim is deleted just before the manifest
is written, only if it is still unchanged (``If-Match``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from es_backfill.config import BackfillConfig, ConfigError
from es_backfill.manifest import lease_key
from es_backfill.sink import ObjectStore, PreconditionFailed
from es_backfill.windows import iso

log = logging.getLogger(__name__)

LEASE_TTL = timedelta(hours=1)
HEARTBEAT_EVERY = timedelta(minutes=5)  # how often a long window renews the lease
MAX_RACES = 20  # conditional writes lost in a row to other writers (the run's own tasks renew it too)


class LeaseHeld(RuntimeError):
    """Another live run owns this backfill's output."""


class AttemptSuperseded(RuntimeError):
    """A later attempt at the same window has claimed it: this one must write nothing more."""


@dataclass(frozen=True)
class Holder:
    """The DAG run that wants the lease, and which try of a window's task is writing (``None`` outside one)."""

    run_id: str
    run_started: str  # ISO 8601, as the run reports it
    try_number: int | None = None

    @classmethod
    def of(cls, dag_run: Any, ti: Any = None) -> Holder:
        """The holder for an Airflow DAG run (a task's ``dag_run``), and for its task instance ``ti`` if given."""
        started = iso(dag_run.start_date) if dag_run.start_date else ""
        return cls(dag_run.run_id, started, ti.try_number if ti is not None else None)


class Heartbeat:
    """Renews ``holder``'s lease at most every ``HEARTBEAT_EVERY`` while a window runs (``beat``), and at once
    with ``now``: a window renews it before it writes anything and before it commits its manifest; ``confirm``
    checks it before each object is committed. Once the window is claimed (``claim``), each of these also checks
    that no later attempt has claimed it since."""

    CONFIRM_EVERY_S = 1.0

    def __init__(self, store: ObjectStore, config: BackfillConfig, holder: Holder | None, claim_key: str = "") -> None:
        self.store, self.config, self.holder, self.claim_key = store, config, holder, claim_key
        self._next = 0.0
        self._confirmed = -self.CONFIRM_EVERY_S
        self._lock = threading.Lock()
        self._token = ""
        self._etag = ""

    def now(self) -> None:
        if self.holder is not None:
            self._require_claim()  # first: a superseded attempt must not take a lease its run has released
            hold(self.store, self.config, self.holder)
            self._next = time.monotonic() + HEARTBEAT_EVERY.total_seconds()

    def claim(self) -> None:
        """Claim the window for this attempt (a later claim, by a retry, supersedes it). Raises
        :class:`AttemptSuperseded` instead if a later try of the same run has claimed it already: Airflow gave
        this attempt up before it got here. Conditional, so of two attempts claiming at once one wins and the
        other reads its claim."""
        if self.holder is None or not self.claim_key:
            return
        token = uuid.uuid4().hex
        body = orjson.dumps({"run_id": self.holder.run_id, "try_number": self.holder.try_number, "token": token,
                             "claimed": iso(datetime.now(UTC))})  # fmt: skip
        for attempt in range(MAX_RACES):
            current = self.store.get_with_etag(self.claim_key)
            if current is not None and self._is_later_try(claim := _read_claim(current[0])):
                raise self._superseded(claim)
            try:
                self._etag = self.store.put_conditional(
                    self.claim_key, body, if_none_match=current is None, if_match=current[1] if current else None
                )
            except PreconditionFailed:
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
                continue
            self._token = token
            return
        raise AttemptSuperseded(f"could not claim {self.claim_key}: it kept changing ({MAX_RACES} tries)")

    def withdraw(self) -> None:
        """Drop this attempt's claim without writing the window (another attempt finished it): only if the claim
        is unchanged, so a later attempt's claim stays."""
        if self._token:
            self._token = ""
            with contextlib.suppress(PreconditionFailed):
                self.store.delete_conditional(self.claim_key, if_match=self._etag)

    def finish(self) -> None:
        """Just before the manifest: the claim still this attempt's, the lease renewed, then the claim removed, on
        condition that it is unchanged (a later attempt claiming after the check keeps its claim, and this one
        stops)."""
        self.now()
        if self._token:
            try:
                self.store.delete_conditional(self.claim_key, if_match=self._etag)
            except PreconditionFailed as err:
                raise self._superseded(_read_claim(self.store.get(self.claim_key))) from err
            self._token = ""

    def _is_later_try(self, claim: dict[str, Any]) -> bool:
        assert self.holder is not None
        mine, theirs = self.holder.try_number, claim.get("try_number")
        return (claim.get("run_id") == self.holder.run_id and isinstance(mine, int) and isinstance(theirs, int)
                and theirs > mine)  # fmt: skip

    def _require_claim(self) -> None:
        if not self._token:
            return
        claim = _read_claim(self.store.get(self.claim_key))
        if claim.get("token") != self._token:
            raise self._superseded(claim)

    def _superseded(self, claim: dict[str, Any]) -> AttemptSuperseded:
        assert self.holder is not None  # a window is only claimed with a holder
        by = (f"try {claim.get('try_number')} of run {claim.get('run_id')!r} claimed it at {claim.get('claimed')}"
              if claim else "its claim is gone (a later attempt finished it)")  # fmt: skip
        return AttemptSuperseded(
            f"{self.claim_key.rsplit('/', 1)[0]}: try {self.holder.try_number} stops writing, because {by}. Airflow "
            "gave this attempt up (its worker stopped heartbeating) or the task was cleared; the later attempt "
            "writes the window"
        )

    def beat(self) -> None:
        if self.holder is not None and time.monotonic() >= self._next:
            self.now()

    def confirm(self) -> None:
        """Before an object becomes visible: :class:`LeaseHeld` if another run took the lease over. Reads the
        lease at most every ``CONFIRM_EVERY_S`` (a window of one object per message commits many)."""
        if self.holder is None:
            return
        with self._lock:  # the uploading threads of one window ask together
            if time.monotonic() - self._confirmed >= self.CONFIRM_EVERY_S:
                self.now()
                self._confirmed = time.monotonic()


def hold(store: ObjectStore, config: BackfillConfig, holder: Holder, *, force: bool = False) -> dict[str, Any]:
    """Take the lease for ``holder``, or renew it if ``holder`` has it; raise :class:`LeaseHeld` if another
    run has it and it has not expired (``force`` takes it over anyway). Returns the lease as it stands.

    A lease ``holder`` renewed less than ``HEARTBEAT_EVERY`` ago is left as it is: the many tasks of one run
    that start together read it, and only one of them writes."""
    key = lease_key(config)
    for attempt in range(MAX_RACES):
        now = datetime.now(UTC)
        body = {
            "backfill_name": config.backfill_name,
            "run_id": holder.run_id,
            "run_started": holder.run_started,
            "heartbeat": iso(now),
            "expires": iso(now + LEASE_TTL),
        }
        current = store.get_with_etag(key)
        try:
            if current is None:
                store.put_conditional(key, orjson.dumps(body), if_none_match=True)
                log.info("Took the lease of %s for run %s", config.root_prefix, holder.run_id)
                return body
            data, etag = current
            lease, expires = _parse(data)
            if lease.get("run_id") == holder.run_id:
                if expires - now > LEASE_TTL - HEARTBEAT_EVERY:
                    return lease  # fresh: renewed by this run a moment ago
            elif expires > now and not force:
                raise LeaseHeld(_held_message(config, lease))
            else:
                log.warning(
                    "Taking over the lease of %s from run %s (%s)",
                    config.root_prefix, lease.get("run_id"), "force_lease" if expires > now else "expired",
                )  # fmt: skip
            store.put_conditional(key, orjson.dumps(body), if_match=etag)
            return body
        except PreconditionFailed:
            # Another writer changed it between our read and our write (often a task of this very run):
            # read it again, after a short random pause so that racing writers spread out.
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
    raise LeaseHeld(f"could not take the lease of {config.root_prefix}: it kept changing ({MAX_RACES} tries)")


def require_conditional_writes(store: ObjectStore, config: BackfillConfig) -> None:
    """ConfigError unless the bucket's S3 refuses a second ``If-None-Match: *`` write of one key: an S3 (or
    S3-compatible server) that ignores it would give the lease to two runs. One probe object, deleted again."""
    key = f"{config.root_prefix}/_conditional-write-probe-{uuid.uuid4().hex}.json"
    store.put_conditional(key, b"{}", if_none_match=True)
    try:
        store.put_conditional(key, b"{}", if_none_match=True)
    except PreconditionFailed:
        return
    finally:
        store.delete([key])
    raise ConfigError(
        [
            f"s3://{config.s3_bucket} accepted a second If-None-Match: * write of one key, so its S3 cannot keep two "
            "runs of a backfill apart (the lease relies on conditional writes, which Amazon S3 honours): use Amazon "
            "S3 or a compatible server that honours If-None-Match and If-Match"
        ]
    )


def _parse(data: bytes) -> tuple[dict[str, Any], datetime]:
    """The lease and its expiry; one that cannot be read (emptied or edited by hand) counts as expired."""
    try:
        lease = orjson.loads(data)
        expires = datetime.fromisoformat(lease["expires"])
        if expires.tzinfo is None:
            raise ValueError("no time zone")
        return lease, expires
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        log.warning("The lease cannot be read (%s): taking it as expired", err)
        return {}, datetime.min.replace(tzinfo=UTC)


def _read_claim(data: bytes | None) -> dict[str, Any]:
    try:
        claim = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {}
    return claim if isinstance(claim, dict) else {}


def release(store: ObjectStore, config: BackfillConfig, holder: Holder) -> bool:
    """Drop the lease if ``holder`` has it (``If-Match``, so a lease taken over meanwhile stays)."""
    current = store.get_with_etag(lease_key(config))
    if current is None or _parse(current[0])[0].get("run_id") != holder.run_id:
        return False
    try:
        store.delete_conditional(lease_key(config), if_match=current[1])
    except PreconditionFailed:
        return False
    log.info("Released the lease of %s", config.root_prefix)
    return True


def _held_message(config: BackfillConfig, lease: dict[str, Any]) -> str:
    return (
        f"another run owns the output of backfill {config.backfill_name!r} (s3://{config.s3_bucket}/"
        f"{config.root_prefix}/): run {lease.get('run_id')!r}, started {lease.get('run_started')}, last heartbeat "
        f"{lease.get('heartbeat')}, lease valid until {lease.get('expires')}. Wait for that run to finish (its "
        "summarise task releases the lease), or, once you have checked it is dead, trigger again with "
        '"force_lease": true. To run another backfill beside it, use another backfill_name or s3_prefix.'
    )
