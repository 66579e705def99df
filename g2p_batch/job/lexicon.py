"""Users' own lexicons: entries that win over the model (`lexicon` in JobConfig).

A TSV file holds `lang<TAB>word<TAB>pron` lines; a Parquet file `lang`, `word` and `pron`
string columns; local paths or URIs, several files allowed (a later file's entry wins). Read
once, on the driver, before any work: a malformed line stops the job naming the file and line.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import InputError

__all__ = ["entries", "read_lexicons"]

COLUMNS = ("lang", "word", "pron")


def read_lexicons(locations: list[str]) -> pa.Table:
    """All entries of all files, in order, as a (lang, word, pron) table."""
    tables = [_read(loc) for loc in locations]
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in COLUMNS})


def entries(table: pa.Table):
    """(lang, word, pron) tuples, in order."""
    return zip(*(table.column(c).to_pylist() for c in COLUMNS))


def _read(location: str) -> pa.Table:
    try:
        fs, path = storage.resolve(location)
        with fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"lexicon {location}: cannot read it ({storage.explain(exc)})") from exc
    if data[:4] == b"PAR1":
        table = pq.read_table(pa.BufferReader(data))
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise InputError(f"lexicon {location}: has no column(s) {missing} (columns: {table.column_names}); "
                             "a Parquet lexicon holds lang, word and pron string columns")
        table = table.select(list(COLUMNS))
        try:
            table = table.cast(pa.schema([(c, pa.string()) for c in COLUMNS]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"lexicon {location}: lang, word and pron must be strings ({exc})") from exc
        for c in COLUMNS:
            empty = [i for i, v in enumerate(table.column(c).to_pylist()) if v is None or not v.strip()]
            if empty:
                raise InputError(f"lexicon {location}, row {empty[0]}: {c} is empty ({len(empty)} such rows); "
                                 "every entry needs a lang, a word and a pron")
        return table
    columns: dict[str, list[str]] = {c: [] for c in COLUMNS}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"lexicon {location}: not UTF-8 text ({exc}); save it as UTF-8") from exc
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise InputError(f"lexicon {location}, line {n}: expected lang<TAB>word<TAB>pron, got {line!r}")
        for c, value in zip(COLUMNS, fields):
            columns[c].append(value.strip())
    return pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()})
