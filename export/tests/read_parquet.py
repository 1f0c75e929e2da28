#!/usr/bin/env python3
"""Reads Parquet files written by `shardline export` with pyarrow and prints
them as JSON for the tests to compare with PostgreSQL's own rendering.

    read_parquet.py FILE_OR_DIR [--hive]

Values are rendered to text the way the tests render the source's values
in SQL: integers and booleans as PostgreSQL prints them, floats as the hex
of their IEEE double (exact), decimals in plain notation at their scale,
dates as days and timestamps as microseconds since 1970-01-01, uuids in
their canonical form, bytes as hex, lists as [a,b,null].

Output: {"files": [{"path", "rows", "row_groups": [rows...], "partition"}],
         "columns": [{"name", "type", "logical", "pg_type"}], "rows": [[...]]}
"""
import json
import os
import struct
import sys
import uuid

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def render(v, t):
    if v is None:
        return None
    if pa.types.is_list(t):
        return "[" + ",".join("null" if e is None else render(e, t.value_type) for e in v) + "]"
    if isinstance(v, str):
        return v
    if pa.types.is_boolean(t):
        return "true" if v else "false"
    if pa.types.is_floating(t):
        if v != v:
            return "NaN"
        return struct.pack(">d", float(v)).hex()
    if pa.types.is_decimal(t):
        return format(v, "f")
    if pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t):
        return str(v)  # cast to an integer before rendering
    if pa.types.is_fixed_size_binary(t) or isinstance(t, pa.ExtensionType) or isinstance(v, uuid.UUID):
        return str(v if isinstance(v, uuid.UUID) else uuid.UUID(bytes=bytes(v)))
    if pa.types.is_binary(t):
        return bytes(v).hex()
    return str(v)


def prepare(col):
    """Casts temporal columns to integers, so no Python datetime range limits apply."""
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_time(t):
        return col.cast(pa.int64()), t
    if pa.types.is_date(t):
        return col.cast(pa.int32()), t
    if pa.types.is_list(t) and pa.types.is_timestamp(t.value_type):
        return col.cast(pa.list_(pa.int64())), t
    return col, t


def files_of(root):
    if os.path.isfile(root):
        return [root]
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(("_", ".")))
        out += [os.path.join(d, n) for n in sorted(names) if n.endswith(".parquet")]
    return out


def main():
    root = sys.argv[1]
    hive = "--hive" in sys.argv
    files = []
    for f in files_of(root):
        pf = pq.ParquetFile(f)
        md = pf.metadata
        files.append({
            "path": os.path.relpath(f, root) if os.path.isdir(root) else f,
            "rows": md.num_rows,
            "row_groups": [md.row_group(i).num_rows for i in range(md.num_row_groups)],
            "format_version": md.format_version,
            "compression": sorted({md.row_group(i).column(j).compression
                                   for i in range(md.num_row_groups)
                                   for j in range(md.num_columns)}),
        })
    if hive:
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    elif os.path.isdir(root):
        table = pa.concat_tables([pq.read_table(f) for f in files_of(root)]) if files else pa.table({})
    else:
        table = pq.read_table(root)
    first = pq.ParquetFile(files_of(root)[0]).schema if files else None
    columns = []
    for i, field in enumerate(table.schema):
        logical = None
        if first is not None:
            for j in range(len(first)):
                c = first.column(j)
                if c.path.split(".")[0] == field.name:
                    logical = str(c.logical_type)
                    break
        meta = field.metadata or {}
        columns.append({
            "name": field.name,
            "type": str(field.type),
            "logical": logical,
            "pg_type": meta.get(b"shardline.pg_type", b"").decode() or None,
        })
    cols = [prepare(table.column(i).combine_chunks() if table.num_rows else table.column(i))
            for i in range(table.num_columns)]
    lists = [c.to_pylist() for c, _ in cols]
    rows = [[render(lists[c][r], cols[c][1]) for c in range(len(cols))] for r in range(table.num_rows)]
    json.dump({"files": files, "columns": columns, "rows": rows}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
