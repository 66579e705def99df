"""g2p-batch: CharsiuG2P ByT5 grapheme-to-phoneme transcription, compiled with Apache TVM and
run as a Ray batch job (Parquet in, Parquet out)."""

__version__ = "0.1.0"
