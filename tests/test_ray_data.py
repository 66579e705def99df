"""The Ray Data stage in a real pipeline: read_parquet -> map_batches(Transcribe) ->
write_parquet on a local Ray, against `g2p-batch run` on the same input."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import ray

from g2p_batch import Transcribe, transcribe_stage
from g2p_batch.job.config import JobConfig
from g2p_batch.job.driver import run_job
from tests.lexicons import lexicon, write

pytest.importorskip("ray.data")


@pytest.mark.slow
def test_pipeline_rows_once_same_results_as_the_job(tmp_path):
    from g2p_batch.tools import checkpoints

    ck = str(checkpoints.make("micro", 0, tmp_path / "ck"))
    table = lexicon(120, seed=9)
    bad = pa.table({"id": [900, 901, 902], "word": [None, "a\x00b", "ok"], "lang": ["fra", "fra", "xx"]})
    table = pa.concat_tables([table, pa.table({c: bad.column(c) if c in bad.column_names else
                                               pa.nulls(3, table.schema.field(c).type) for c in table.column_names})])
    write(table, tmp_path / "in" / "words.parquet", row_group_size=40)
    common = dict(checkpoint=ck, lang_column="lang", batch_sizes=[8], input_buckets=[32, 64], max_output_len=16,
                  threads_per_actor=1, artifacts_dir=str(tmp_path / "art"), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "job"), num_cpu_actors=1, **common))
        # the defaults (2 threads an actor) on 2 CPUs: one actor of one thread, one CPU left to the
        # read and write tasks (a pool of both CPUs left them none, and the dataset hung)
        stage = transcribe_stage(**{**common, "threads_per_actor": 2})
        assert stage.batch_size == 16 * 8 and stage.actors == 1 and stage.num_cpus == 1
        (ray.data.read_parquet(str(tmp_path / "in"))
         .map_batches(Transcribe, **stage.map_batches_kwargs())
         .write_parquet(str(tmp_path / "pipe")))
    finally:
        ray.shutdown()
    pipe = ds.dataset(tmp_path / "pipe", format="parquet").to_table().sort_by("id")
    job = pq.read_table(tmp_path / "job").sort_by("id")
    assert pipe.column("id").to_pylist() == table.sort_by("id").column("id").to_pylist()   # each row once
    for column in ("word", "lang", "freq", "phonemes", "status", "score"):
        assert pipe.column(column).to_pylist() == job.column(column).to_pylist(), column
    statuses = dict(zip(pipe.column("id").to_pylist(), pipe.column("status").to_pylist()))
    assert [statuses[i] for i in (900, 901, 902)] == ["error"] * 3
