"""The servers ``make demo`` and ``make servers`` start: one engine and one S3 server on 127.0.0.1.

``DEMO_ENGINE`` (``engine:version``, any pair of :data:`include.dev.servers.elasticsearch.ENGINES`) picks the
engine; without it Elasticsearch 9.5.4 runs, or the cluster at ``ES_URL`` is used. ``S3_ENDPOINT_URL`` likewise
replaces the S3 server (moto) with one of yours.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from include.dev.servers.elasticsearch import RunningCluster, running_elasticsearch, running_engine
from include.dev.servers.s3 import RunningS3, running_s3


@contextlib.contextmanager
def running_local_servers() -> Iterator[tuple[RunningCluster, RunningS3]]:
    """Yield the engine ``DEMO_ENGINE`` names (or the default, or ``ES_URL``) and the S3 server; stop both after."""
    chosen = os.environ.get("DEMO_ENGINE", "")
    engine = running_engine(*chosen.split(":", 1)) if chosen else running_elasticsearch()
    with engine as cluster, running_s3() as s3:
        yield cluster, s3
