"""Half-open UTC time windows: parse durations, split a range, balance by counts, name.

A window ``[start, end)`` is the unit of work, retry and resume. Its ``key`` names
its folder in S3 and its ``label`` names its mapped task in the Airflow UI; both
depend only on its bounds.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_DURATION = re.compile(r"\s*(\d{1,9})\s*([smhd])\s*")  # whole-string (fullmatch); 9 digits: no overflow
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class WindowError(ValueError):
    """A window size or range that cannot be split as asked."""


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """A path-safe name, e.g. ``20240301T000000Z_20240302T000000Z``."""
        return f"{self.start:%Y%m%dT%H%M%SZ}_{self.end:%Y%m%dT%H%M%SZ}"

    @property
    def label(self) -> str:
        """What the Airflow UI shows for the mapped task, e.g. ``2024-03-01 00:00 → 2024-03-02 00:00``."""
        fmt = "%Y-%m-%d %H:%M:%S" if self.start.second or self.end.second else "%Y-%m-%d %H:%M"
        return f"{self.start:{fmt}} → {self.end:{fmt}}"

    @property
    def day(self) -> str:
        return f"{self.start:%Y-%m-%d}"

    def to_dict(self) -> dict[str, Any]:
        """The small, JSON-safe form passed between tasks through XCom."""
        return {"start": iso(self.start), "end": iso(self.end), "key": self.key, "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        return cls(parse_instant(data["start"]), parse_instant(data["end"]))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """A date or date-time, read as UTC when it has no offset, returned in UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, AttributeError, OverflowError) as err:  # OverflowError: an offset past year 1 or 9999
        raise WindowError(f"{text!r} is not a date or date-time; use e.g. 2024-03-01 or 2024-03-01T06:00:00Z") from err


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``6h`` or ``1d`` as a timedelta."""
    match = _DURATION.fullmatch(text or "")
    if not match or int(match.group(1)) == 0:
        raise WindowError(f"window {text!r} is not a positive duration like 1d, 6h, 15m or 30s")
    try:
        return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError as err:  # more days than a timedelta holds
        raise WindowError(f"window {text!r} is longer than any range") from err


def format_duration(seconds: int) -> str:
    """The shortest readable duration covering at least ``seconds``: 90 -> ``2m``, 5000 -> ``2h``."""
    for unit, size in (("s", 1), ("m", 60), ("h", 3600)):
        if seconds < size * (60 if unit != "h" else 24):
            return f"{math.ceil(seconds / size)}{unit}"
    return f"{math.ceil(seconds / 86400)}d"


def split(start: datetime, end: datetime, step: timedelta, *, max_windows: int) -> list[Window]:
    """Consecutive windows of ``step`` covering [start, end); the last one may be shorter."""
    if end <= start:
        raise WindowError(f"end ({iso(end)}) must be after start ({iso(start)}); the range is [start, end)")
    count = math.ceil((end - start) / step)
    if count > max_windows:
        needed = math.ceil((end - start).total_seconds() / max_windows)
        raise WindowError(
            f"window {format_duration(int(step.total_seconds()))} splits the range into {count} windows, "
            f"more than the mapping limit of {max_windows} ([core] max_map_length); "
            f"use a window of at least {format_duration(needed)}"
        )
    bounds = [start + step * i for i in range(count)] + [end]
    return [Window(a, b) for a, b in itertools.pairwise(bounds)]


def balance(buckets: Sequence[tuple[datetime, int]], start: datetime, end: datetime, windows: int) -> list[Window]:
    """Merge consecutive histogram buckets into about ``windows`` windows of similar document counts.

    ``buckets`` are ``(bucket start, doc count)`` in time order, as a date_histogram returns them;
    the result still covers exactly [start, end), cut only at bucket boundaries.
    """
    total = sum(count for _, count in buckets)
    if windows <= 1 or total == 0:
        return [Window(start, end)]
    target = total / windows
    cuts: list[datetime] = []
    running = 0
    for bucket_start, count in buckets:
        if running >= target * (len(cuts) + 1) and start < bucket_start < end and len(cuts) < windows - 1:
            cuts.append(bucket_start)
        running += count
    bounds = [start, *cuts, end]
    return [Window(a, b) for a, b in itertools.pairwise(bounds)]
