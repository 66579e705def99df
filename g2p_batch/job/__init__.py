"""The Ray batch job: plan shards from Parquet footers, feed them to actors, write each output
shard once and commit it in the manifest. Engines come in by import path, never by import."""
