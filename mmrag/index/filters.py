"""Metadata filters shared by the vector stores: validation, exact matching, SQLite translation.

A filter is ``{"key": value}`` or ``{"key": [v1, v2]}`` (any of); several keys are AND-ed.
Values are matched by JSON type and value: ``1`` matches ``1.0`` but not ``true`` or ``"1"``;
``None`` matches JSON ``null`` (a missing key matches nothing). Keys are non-empty strings without
double quotes, backslashes or NUL; values are str, number, bool or None (or a list of them).

* :func:`check_filter` validates a filter (the errors every backend raises);
* :func:`matches` applies it to one metadata dict in Python (backends whose own filter language
  only selects a superset, e.g. Milvus, check every hit with it);
* :func:`filter_sql` translates it to a SQLite ``WHERE`` clause over ``items.metadata`` (JSON
  text), with :func:`key_expr` the literal expression an expression index is built on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_filter", "check_key", "filter_sql", "filter_values", "json_equal", "key_expr", "matches"]

_ANY_OF = (list, tuple, set, frozenset)


def filter_values(value: Any) -> list[Any]:
    """The alternatives of one filter entry: a list (tuple, set) value, or the value alone."""
    return list(value) if isinstance(value, _ANY_OF) else [value]


def check_key(key: Any) -> None:
    if not isinstance(key, str) or not key or any(c in key for c in "\"\\\x00"):
        raise ValueError(f"filter keys must be non-empty strings without double quotes or backslashes, got {key!r}")


def _bad_value(key: Any, v: Any) -> ValueError:
    return ValueError(
        f"filter value for {key!r} must be a str, number, bool, None or a list of them; got {type(v).__name__}"
    )


def check_filter(filter: dict[str, Any]) -> None:
    """Raise ValueError for the first bad key or value (in the filter's order)."""
    for key, value in filter.items():
        check_key(key)
        for v in filter_values(value):
            if v is not None and not isinstance(v, (str, bool, int, float, np.bool_, np.integer, np.floating)):
                raise _bad_value(key, v)


def json_equal(got: Any, want: Any) -> bool:
    """Whether the stored JSON value ``got`` equals the filter value ``want`` (JSON-typed)."""
    if want is None:
        return got is None
    if isinstance(want, (bool, np.bool_)):
        return isinstance(got, bool) and got == bool(want)
    if isinstance(want, (int, float, np.integer, np.floating)):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want
    if isinstance(want, str):
        return isinstance(got, str) and got == want
    return False


def matches(meta: dict[str, Any], filter: dict[str, Any]) -> bool:
    """Exact JSON-typed filter semantics (as :func:`filter_sql`): 1 matches 1.0 but not true or "1"."""
    for key, value in filter.items():
        values = filter_values(value)
        if key not in meta:
            return False
        got = meta[key]
        if not any(json_equal(got, v) for v in values):
            return False
    return True


# ----------------------------------------------------------------------------- SQLite

def key_expr(key: Any) -> str:
    """The SQL expression for metadata ``key``; written literally so an expression index applies."""
    check_key(key)
    path = "$.\"" + key + "\""
    return "json_extract(metadata, '" + path.replace("'", "''") + "')"


def filter_sql(filter: dict[str, Any], coarse: bool = False) -> tuple[str, list[Any]]:
    """``{"key": value | [values]}`` -> a WHERE clause over ``items.metadata`` and its params.
    ``coarse``: values only, no JSON type checks -- answered from the expression indexes alone
    (a superset, used to estimate how selective a filter is). Validates as :func:`check_filter`."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filter.items():
        ex = key_expr(key)
        ty = ex.replace("json_extract(", "json_type(", 1)
        if coarse:
            ty = None
        values = filter_values(value)
        alts: list[str] = []
        for v in values:
            if v is None:
                alts.append(f"({ex} IS NULL AND {ty} = 'null')" if ty else f"{ex} IS NULL")
            elif isinstance(v, (bool, np.bool_)):
                alts.append(f"({ex} = ? AND {ty} = ?)" if ty else f"{ex} = ?")
                params += [int(bool(v)), "true" if v else "false"] if ty else [int(bool(v))]
            elif isinstance(v, (int, float, np.integer, np.floating)):
                alts.append(f"({ex} = ? AND {ty} IN ('integer', 'real'))" if ty else f"{ex} = ?")
                params.append(v.item() if isinstance(v, np.generic) else v)
            elif isinstance(v, str):
                alts.append(f"({ex} = ? AND {ty} = 'text')" if ty else f"{ex} = ?")
                params.append(v)
            else:
                raise _bad_value(key, v)
        clauses.append("(" + " OR ".join(alts) + ")" if alts else "0")
    return (" AND ".join(clauses) if clauses else "1"), params
