"""The common shape of every list command: filters, keyword, paging, count.

CloudStack's `count` is the number of matching objects before paging, so a
client can fetch page after page until it has `count` items (the `cs` package
does exactly that); this helper computes both in one read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tandem.mgmt.commands import Call
from tandem.mgmt.db import Cursor
from tandem.mgmt.envelopes import ListResult


@dataclass
class Query:
    """A SELECT plus the WHERE terms that the call's parameters add to it."""

    select: str
    #: ends with a unique column: LIMIT over a sort with ties is not stable in MariaDB,
    #: and pages of rows sharing a name overlapped (some rows twice, others never)
    order: str
    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, term: str, *args: Any) -> Query:
        self.where.append(term)
        self.args.extend(args)
        return self

    def filters(self, call: Call, columns: dict[str, str], keyword: tuple[str, ...] = ()) -> Query:
        """Equality filters from parameters named in `columns`, and `keyword`."""
        for param, column in columns.items():
            if param in call.params:
                self.add(f"{column} = %s", call.params[param])
        kw = call.params.get("keyword")
        if kw and keyword:
            self.add("(" + " OR ".join(f"{c} LIKE %s" for c in keyword) + ")",
                     *[f"%{_like_escape(kw)}%"] * len(keyword))
        return self

    def sql(self) -> str:
        return self.select + (" WHERE " + " AND ".join(self.where) if self.where else "")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def run_list(call: Call, query: Query, item: str,
                   view: Callable[[dict[str, Any]], dict[str, Any]]) -> ListResult:
    offset, limit = call.paging()

    def read(cur: Cursor) -> tuple[list[dict[str, Any]], int]:
        sql = query.sql()
        cur.execute(f"SELECT COUNT(*) AS n FROM ({sql}) q", query.args)
        count = int(cur.fetchone()["n"])
        page = f" ORDER BY {query.order}" + (f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit else "")
        cur.execute(sql + page, query.args)
        return list(cur.fetchall()), count

    rows, count = await call.server.db.read(read)
    return ListResult(item, [view(r) for r in rows], count)
