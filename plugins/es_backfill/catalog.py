"""The backfill's table in the AWS Glue Data Catalog, when the run names a ``glue_database``.

``plan`` checks that the database exists and that no table of another backfill has the name this one's
table takes (:meth:`GlueCatalog.problem`): a run that would collide fails before it writes anything.
``summarise`` then creates the table, or updates it if this backfill registered it before
(:meth:`GlueCatalog.register`). A table is this backfill's if its ``es_backfill.location`` property is the
backfill's root (``_athena.sql`` sets it too, so a table made from it is); any other table of that name is
left as it is, and the run fails naming it, after its manifest is written. The client is the Amazon
provider's ``GlueCatalogHook`` on the run's AWS connection (see ``hooks``); it needs ``glue:GetDatabase``,
``glue:GetTable``, ``glue:CreateTable`` and ``glue:UpdateTable`` on the catalog, the database and its tables.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.config import Config

from es_backfill.table import OWNER, AthenaTable

log = logging.getLogger(__name__)

GLUE_CLIENT_CONFIG = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"})


class CatalogConflict(RuntimeError):
    """The Glue table this backfill's table would be is another backfill's (or not es-backfill's at all)."""


class GlueCatalog:
    """One Glue database, through a boto3 Glue client."""

    def __init__(self, client: Any, database: str) -> None:
        self.client, self.database = client, database

    def problem(self, name: str, location: str) -> str | None:
        """Why the table ``name`` reading ``location`` cannot be registered, or None."""
        try:
            self.client.get_database(Name=self.database)
        except self.client.exceptions.EntityNotFoundException:
            return (f"glue_database {self.database!r} does not exist in the Glue Data Catalog: create it (aws glue "
                    f"create-database --database-input Name={self.database}) or leave glue_database empty")  # fmt: skip
        table = self._table(name)
        return None if table is None else self._conflict(table, location)

    def register(self, table: AthenaTable) -> str:
        """Create ``table`` in the database, or update it if it is this backfill's; "created" or "updated".
        Raises :class:`CatalogConflict` if a table of that name reads something else."""
        table_input = table.glue_input()
        existing = self._table(table.name)
        if existing is None:
            try:
                self.client.create_table(DatabaseName=self.database, TableInput=table_input)
                log.info("Created the Glue table %s.%s over %s", self.database, table.name, table.location)
                return "created"
            except self.client.exceptions.AlreadyExistsException:
                existing = self._table(table.name)  # made since (another backfill's run, past its plan's check)
                if existing is None:
                    raise
        conflict = self._conflict(existing, table.location)
        if conflict:
            raise CatalogConflict(conflict)
        self.client.update_table(DatabaseName=self.database, TableInput=table_input)
        log.info("Updated the Glue table %s.%s over %s", self.database, table.name, table.location)
        return "updated"

    def _table(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.get_table(DatabaseName=self.database, Name=name)["Table"]
        except self.client.exceptions.EntityNotFoundException:
            return None

    def _conflict(self, table: dict[str, Any], location: str) -> str | None:
        owner = table.get("Parameters", {}).get(OWNER)
        if owner == location:
            return None
        reads = table.get("StorageDescriptor", {}).get("Location", "?")
        whose = f"backfill {owner}" if owner else "not es-backfill's"
        return (
            f"Glue table {self.database}.{table['Name']} exists and is {whose} (it reads {reads}): it is left as it "
            f"is. Use another backfill_name (the table is named after it) or another glue_database, or drop that "
            "table if it is no longer needed"
        )
