"""Window and run manifests, the saved plan, and what lies under a backfill's root.

A window's manifest is written last, only once all its objects are in place, so a
present manifest whose fingerprint matches this backfill's settings (and source
cluster) means the window is complete. Manifests hold no timestamps: a rerun over the
same data writes the same bytes. The saved plan (``_plan.json``) records the windows
and the settings behind them, so a re-plan can say what changed; everything under the
root outside the plan's window folders is "foreign" to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from es_backfill.config import BackfillConfig
from es_backfill.sink import MANIFEST_NAME, ObjectInfo, ObjectStore, window_prefix
from es_backfill.table import Type, from_saved, to_saved
from es_backfill.windows import Window

VERSION = 2  # 2: fingerprints cover the source cluster; window manifests prove their message ids
RUN_MANIFEST_NAME = "_run_manifest.json"
PLAN_NAME = "_plan.json"
LEASE_NAME = "_lease.json"  # see es_backfill.lease
TABLE_DDL_NAME = "_athena.sql"  # the table over the output (es_backfill.table), written by summarise
CLAIM_NAME = "_attempt.json"  # in a window's folder while an attempt writes it (es_backfill.lease)
# A window's folder, relative to the backfill's root: dt=YYYY-MM-DD/{start}_{end}/
WINDOW_FOLDER = re.compile(r"^dt=\d{4}-\d{2}-\d{2}/\d{8}T\d{6}Z_\d{8}T\d{6}Z/")


@dataclass(frozen=True)
class SavedPlan:
    """The plan an earlier run of a backfill saved: its fingerprint, the settings behind it, its windows."""

    fingerprint: str
    settings: dict[str, Any]
    windows: list[Window]
    table: dict[str, Type] | None = None  # the output's columns (es_backfill.table); None if planned before them

    def differences(self, config: BackfillConfig) -> list[str]:
        """What differs between this plan's settings and ``config``'s, e.g. ``window '1d' -> '6h'``."""
        if not self.settings:
            return ["it was planned by an older version of es-backfill"]
        now = config.shaping_settings()
        return [
            f"{name} {self.settings.get(name)!r} -> {now[name]!r}"
            if name not in {"messages", "related", "parts"}
            else f"{name} settings"
            for name in now
            if self.settings.get(name) != now[name]
        ]


class StalePlanError(RuntimeError):
    """A window of a plan that the backfill has replaced since: writing it would mix two plans."""


def window_folder(config: BackfillConfig, window: Window) -> str:
    """``{root}/dt=YYYY-MM-DD/{window key}/``: where the window's objects live."""
    return f"{window_prefix(config.root_prefix, window.day, window.key)}/"


def window_manifest_key(config: BackfillConfig, window: Window) -> str:
    return f"{window_folder(config, window)}{MANIFEST_NAME}"


def window_claim_key(config: BackfillConfig, window: Window) -> str:
    return f"{window_folder(config, window)}{CLAIM_NAME}"


def run_manifest_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{RUN_MANIFEST_NAME}"


def plan_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{PLAN_NAME}"


def table_ddl_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{TABLE_DDL_NAME}"


def lease_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{LEASE_NAME}"


def read_plan(store: ObjectStore, config: BackfillConfig) -> SavedPlan | None:
    """The plan saved under this backfill's root, whatever settings made it; None if there is none."""
    saved = read(store, plan_key(config))
    if saved is None or not isinstance(saved.get("windows"), list):
        return None
    settings = saved.get("settings") if saved.get("version") == VERSION else None
    table = saved.get("table")
    return SavedPlan(
        fingerprint=str(saved.get("fingerprint")),
        settings=settings if isinstance(settings, dict) else {},
        windows=[Window.from_dict(w) for w in saved["windows"]],
        table=from_saved(table) if isinstance(table, list) else None,
    )


def require_in_plan(store: ObjectStore, config: BackfillConfig, window: Window) -> SavedPlan | None:
    """The backfill's saved plan (if any); :class:`StalePlanError` if it was made with other settings or does
    not have ``window``: e.g. a task of an older run cleared after a ``force`` re-plan."""
    saved = read_plan(store, config)
    if saved is not None and (saved.fingerprint != config.fingerprint() or window not in saved.windows):
        raise StalePlanError(
            f"Window {window.label} is not in the current plan of backfill {config.backfill_name!r}, which was "
            "planned again since this run started; nothing was written. Trigger the backfill again (its plan "
            "task resumes the current plan) instead of clearing this run's tasks"
        )
    return saved


def write_plan(
    store: ObjectStore,
    config: BackfillConfig,
    windows: list[Window],
    source: dict[str, str],
    table: dict[str, Type] | None = None,
) -> None:
    """Save the plan; ``source`` names the engine, version and read strategy it was made with, ``table`` the
    output's columns."""
    # Resume and verify reuse these windows, so balanced windows stay put even if the data moves.
    body = {
        "version": VERSION,
        "fingerprint": config.fingerprint(),
        "settings": config.shaping_settings(),
        "source": source,
        "encryption": encryption_record(config),
        "windows": [w.to_dict() for w in windows],
        **({"table": to_saved(table)} if table is not None else {}),
    }
    store.put(plan_key(config), dumps(body))


def foreign_objects(store: ObjectStore, config: BackfillConfig, windows: list[Window]) -> list[str]:
    """Keys under the backfill's root that ``windows`` do not account for: everything but their folders,
    the plan, the run manifest, the table's DDL and the lease. Lists folder by folder, so the windows' own objects
    are never listed."""
    root = f"{config.root_prefix}/"
    own = {window_folder(config, w) for w in windows}
    days = {folder.rsplit("/", 2)[0] + "/" for folder in own}
    folders, keys = store.children(root)
    foreign = [
        key
        for key in keys
        if key not in {plan_key(config), run_manifest_key(config), table_ddl_key(config), lease_key(config)}
    ]
    for folder in folders:
        if folder not in days:
            foreign += [o["Key"] for o in store.list(folder)]
            continue
        inner_folders, inner_keys = store.children(folder)
        foreign += inner_keys
        for inner in inner_folders:
            if inner not in own:
                foreign += [o["Key"] for o in store.list(inner)]
    return foreign


def window_folder_of(config: BackfillConfig, key: str) -> str | None:
    """The window folder (``{root}/dt=.../{window key}/``, of any plan) that ``key`` lies in, if any."""
    root = f"{config.root_prefix}/"
    match = WINDOW_FOLDER.match(key[len(root) :]) if key.startswith(root) else None
    return root + match.group(0) if match else None


def build_window_manifest(
    config: BackfillConfig,
    window: Window,
    *,
    es_count: int,
    messages: int,
    dropped: int = 0,
    related: dict[str, int],
    objects: list[ObjectInfo],
    message_ids: dict[str, Any],
    misfits: list[list[str]] | None = None,
) -> dict[str, Any]:
    """``message_ids`` proves which messages the objects hold: how many distinct ids, and the SHA-256 of
    the ids in output order (each followed by a newline), which ``verify`` recomputes from the records.
    ``misfits`` are the fields the records hold that the table's types do not fit (:mod:`es_backfill.table`)."""
    return {
        "version": VERSION,
        "backfill_name": config.backfill_name,
        "fingerprint": config.fingerprint(),
        "window": window.to_dict(),
        "output_format": config.output_format,
        "query": config.query,
        "es_count": es_count,
        "messages": messages,
        **({"dropped": dropped} if dropped else {}),  # by the transform
        "related": related,
        "message_ids": message_ids,
        # Names relative to the window's folder: the manifest does not depend on where the backfill lives.
        "objects": [{**o.to_dict(), "key": o.key.rsplit(f"/{window.key}/", 1)[1]} for o in objects],
        "bytes": sum(o.bytes for o in objects),
        "encryption": encryption_record(config),
        **({"table_misfits": misfits} if misfits else {}),
    }


def encryption_record(config: BackfillConfig) -> dict[str, Any] | None:
    """How the run asked S3 to encrypt what it wrote (``None``: the bucket's default), for the manifests."""
    return config.encryption.to_dict() if config.encryption else None


def dumps(manifest: dict[str, Any]) -> bytes:
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def read(store: ObjectStore, key: str) -> dict[str, Any] | None:
    data = store.get(key)
    if data is None:
        return None
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def completeness_problem(manifest: dict[str, Any] | None, config: BackfillConfig, window: Window) -> str | None:
    """Why ``manifest`` does not prove ``window`` complete for this backfill, or None if it does."""
    if manifest is None:
        return "no manifest"
    if manifest.get("version") != VERSION:
        return f"manifest version {manifest.get('version')!r} is not {VERSION}"
    if manifest.get("fingerprint") != config.fingerprint():
        return "manifest was written with other settings or from another cluster (see the fingerprint in README)"
    if manifest.get("window", {}).get("key") != window.key:
        return "manifest belongs to another window"
    if (manifest.get("message_ids") or {}).get("distinct") != manifest.get("messages"):
        return "manifest does not prove its message ids distinct"
    if written_and_dropped(manifest) != manifest.get("es_count"):
        return (
            f"manifest counts differ: wrote {manifest.get('messages')} (dropped {manifest.get('dropped', 0)}), "
            f"Elasticsearch had {manifest.get('es_count')}"
        )
    return None


def written_and_dropped(counts: dict[str, Any]) -> int | None:
    """A window's messages written plus those the transform dropped: what reconciles with Elasticsearch's count."""
    messages = counts.get("messages")
    return messages + counts.get("dropped", 0) if isinstance(messages, int) else None
