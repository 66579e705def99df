"""Everything the job leaves in the output directory, each piece written atomically.

- one `<shard>.parquet` per input shard: the input columns unchanged plus the four below;
- `_manifest.json`: the shards committed so far, rewritten after each one, so a killed job
  resumes from it (a shard counts as done only when its file's checksum matches);
- `_report.json`: totals, throughput and failures at the end.
The bookkeeping files start with '_' so `pyarrow.parquet.read_table(output_dir)` (and Spark,
and Hive) skip them and read the directory as one table.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage

__all__ = [
    "CHECK_COLUMNS", "MANIFEST", "OUTPUT_COLUMNS", "REPORT", "Manifest", "output_table", "write_json",
    "write_shard",
]

MANIFEST = "_manifest.json"
REPORT = "_report.json"
OUTPUT_COLUMNS = {"phonemes": pa.string(), "status": pa.string(), "error": pa.string(),
                  "score": pa.float32()}


CHECK_COLUMNS = {"per": pa.float32(), "match": pa.bool_()}  # check mode (reference_column)
# beam search: (phonemes, score) best first; phonemes is candidates[0]
CANDIDATES = pa.list_(pa.struct([("phonemes", pa.string()), ("score", pa.float32())]))


def output_table(table: pa.Table, results, checks: list[tuple[float, bool] | None] | None = None,
                 candidates: bool = False) -> pa.Table:
    """`table` with the transcription columns appended; `results` are RowResults in row order;
    `checks` (check mode): per row (PER, matches a variant), or None where it was not checked;
    `candidates` (beam search): the n-best column, on every shard of such a job alike."""
    if len(results) != table.num_rows:
        raise ValueError(f"{len(results)} results for {table.num_rows} rows")
    columns = {
        "phonemes": [r.phonemes for r in results],
        "status": [r.status for r in results],
        "error": [r.error for r in results],
        "score": [r.score for r in results],
    }
    extra = dict(CHECK_COLUMNS) if checks is not None else {}
    if candidates:
        columns["candidates"] = [None if r.candidates is None else
                                 [{"phonemes": p, "score": s} for p, s in r.candidates] for r in results]
        extra["candidates"] = CANDIDATES
    if checks is not None:
        columns["per"] = [c[0] if c else None for c in checks]
        columns["match"] = [c[1] if c else None for c in checks]
    for name, typ in {**OUTPUT_COLUMNS, **extra}.items():
        table = table.append_column(pa.field(name, typ), pa.array(columns[name], type=typ))
    return table


def write_shard(table: pa.Table, output: str, name: str) -> tuple[str, int]:
    """Write `table` as `output/name` atomically; returns (sha256 of the file, its size).

    The file is built in memory first: the checksum then costs no second read, and a shard is
    small (rows_per_shard rows) by construction.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    fs, base = storage.resolve(output)
    storage.atomic_write(fs, base, name, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def write_json(output: str, name: str, obj: dict) -> None:
    fs, base = storage.resolve(output)
    storage.atomic_write(fs, base, name, json.dumps(obj, indent=1, sort_keys=True).encode())


@dataclass
class Manifest:
    """The committed shards of one output directory, and the settings that produced them."""

    output: str
    fingerprint: str                        # hash of the settings that change the output
    info: dict = field(default_factory=dict)  # checkpoint, artifact hashes, settings
    shards: dict[str, dict] = field(default_factory=dict)
    # overwrite: an earlier run's shard files. They and its manifest stay, as the output, until
    # this run commits its first shard: a run that fails to start loses nothing. Those this
    # run's plan does not name go then; those it names are overwritten as their shards commit
    # (`drop_stale` removes the rest once no actor can still be writing them).
    replaces: list[str] | None = None
    stale: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, output: str) -> "Manifest | None":
        fs, base = storage.resolve(output)
        path = storage.join(base, MANIFEST)
        try:
            with fs.open_input_stream(path) as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{output}/{MANIFEST} is unreadable ({exc}); delete it (and the "
                             "shard files) or set overwrite: true") from exc
        return cls(output, raw.get("fingerprint", ""), raw.get("info", {}), raw.get("shards", {}))

    def is_committed(self, shard) -> bool:
        """Recorded here, and the file on disk is the one recorded (same sha256)."""
        entry = self.shards.get(shard.id)
        if entry is None:
            return False
        fs, base = storage.resolve(self.output)
        return storage.file_sha256(fs, storage.join(base, entry["file"])) == entry["sha256"]

    def commit(self, shard, rows_out: int, sha256: str, actor: str, statuses: dict[str, int],
               languages: dict[str, dict[str, int]] | None = None, check: dict | None = None) -> None:
        self.shards[shard.id] = {
            "file": shard.name, "source": shard.source, "first_row": shard.first_row,
            "rows_in": shard.num_rows, "rows_out": rows_out, "sha256": sha256,
            "statuses": dict(statuses), "languages": languages or {}, "actor": actor,
            "committed_at": time.time(),
        }
        if check:
            self.shards[shard.id]["check"] = check
        if self.replaces is not None:
            self._remove_replaced()
        self.save()

    def totals(self) -> dict[str, int]:
        """Rows by status over every committed shard, this run's and earlier runs'."""
        out: dict[str, int] = {}
        for entry in self.shards.values():
            for status, n in entry.get("statuses", {}).items():
                out[status] = out.get(status, 0) + n
        return dict(sorted(out.items()))

    def totals_by_language(self) -> dict[str, dict[str, int]]:
        """Rows by language and status over every committed shard."""
        out: dict[str, dict[str, int]] = {}
        for entry in self.shards.values():
            for lang, statuses in entry.get("languages", {}).items():
                mine = out.setdefault(lang, {})
                for status, n in statuses.items():
                    mine[status] = mine.get(status, 0) + n
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def check_summary(self, worst: int) -> dict:
        """Check mode over every committed shard: PER and WER per language (as CharsiuG2P
        reports them), their mean over languages, and the `worst` rows of each language."""
        langs: dict[str, dict] = {}
        for entry in self.shards.values():
            for lang, s in entry.get("check", {}).items():
                t = langs.setdefault(lang, {"n": 0, "per_sum": 0.0, "wrong": 0, "worst": []})
                t["n"] += s["n"]
                t["per_sum"] += s["per_sum"]
                t["wrong"] += s["wrong"]
                t["worst"] += s["worst"]
        out = {lang: {"rows": t["n"], "per": t["per_sum"] / t["n"], "wer": t["wrong"] / t["n"],
                      "worst": sorted(t["worst"], key=lambda w: -w["per"])[:worst]}
               for lang, t in sorted(langs.items()) if t["n"]}
        overall = {"languages": len(out), "rows": sum(v["rows"] for v in out.values())}
        if out:
            overall.update(per=sum(v["per"] for v in out.values()) / len(out),
                           wer=sum(v["wer"] for v in out.values()) / len(out))
        return {"overall": overall, "languages": out}

    def save(self) -> None:
        if self.replaces is not None:    # the earlier run's manifest is still the commit point
            return
        write_json(self.output, MANIFEST, {
            "version": 2, "fingerprint": self.fingerprint, "info": self.info,
            "shards": self.shards})

    def _remove_replaced(self) -> None:
        """The earlier run's files that this run's plan does not name, and its report."""
        self._delete([n for n in self.replaces if n not in self.stale] + [REPORT])
        self.replaces = None

    def drop_stale(self) -> None:
        """After the run: the earlier run's files under names whose new shard did not commit."""
        if self.replaces is None:
            committed = {e["file"] for e in self.shards.values()}
            self._delete(sorted(self.stale - committed))
            self.stale = set()

    def _delete(self, names) -> None:
        fs, base = storage.resolve(self.output)
        for name in names:
            try:
                fs.delete_file(storage.join(base, name))
            except FileNotFoundError:
                pass
