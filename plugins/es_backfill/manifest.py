"""Window and run manifests: what was written, with counts, sizes and checksums.

A window's manifest is written last, only once all its objects are in place, so a
present manifest that matches this backfill's settings means the window is complete.
Manifests hold no timestamps: a rerun over the same data writes the same bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from es_backfill.config import BackfillConfig
from es_backfill.sink import MANIFEST_NAME, ObjectInfo, ObjectStore, window_prefix
from es_backfill.windows import Window

VERSION = 1
RUN_MANIFEST_NAME = "_run_manifest.json"
PLAN_NAME = "_plan.json"


def window_manifest_key(config: BackfillConfig, window: Window) -> str:
    return f"{window_prefix(config.root_prefix, window.day, window.key)}/{MANIFEST_NAME}"


def run_manifest_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{RUN_MANIFEST_NAME}"


def plan_key(config: BackfillConfig) -> str:
    return f"{config.root_prefix}/{PLAN_NAME}"


def read_plan(store: ObjectStore, config: BackfillConfig) -> list[Window] | None:
    """The windows an earlier run of this backfill planned, if its settings were the same."""
    saved = read(store, plan_key(config))
    if saved is None or saved.get("version") != VERSION or saved.get("fingerprint") != config.fingerprint():
        return None
    return [Window.from_dict(w) for w in saved["windows"]]


def write_plan(store: ObjectStore, config: BackfillConfig, windows: list[Window]) -> None:
    # Resume and verify reuse these windows, so balanced windows stay put even if the data moves.
    body = {"version": VERSION, "fingerprint": config.fingerprint(), "windows": [w.to_dict() for w in windows]}
    store.put(plan_key(config), dumps(body))


def build_window_manifest(
    config: BackfillConfig,
    window: Window,
    *,
    es_count: int,
    messages: int,
    related: dict[str, int],
    objects: list[ObjectInfo],
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "backfill_name": config.backfill_name,
        "fingerprint": config.fingerprint(),
        "window": window.to_dict(),
        "output_format": config.output_format,
        "query": config.query,
        "es_count": es_count,
        "messages": messages,
        "related": related,
        # Names relative to the window's folder: the manifest does not depend on where the backfill lives.
        "objects": [{**o.to_dict(), "key": o.key.rsplit(f"/{window.key}/", 1)[1]} for o in objects],
        "bytes": sum(o.bytes for o in objects),
    }


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
        return "manifest was written with other settings (query, format, window or source)"
    if manifest.get("window", {}).get("key") != window.key:
        return "manifest belongs to another window"
    if manifest.get("messages") != manifest.get("es_count"):
        return f"manifest counts differ: wrote {manifest.get('messages')}, Elasticsearch had {manifest.get('es_count')}"
    return None
