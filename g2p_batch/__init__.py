"""g2p-batch: CharsiuG2P ByT5 grapheme-to-phoneme transcription, compiled with Apache TVM and
run as a Ray batch job (Parquet in, Parquet out). The layers, top to bottom: cli, tools, job,
compile, runtime, model, decode (README.md, "Layout")."""

__version__ = "0.1.0"
__all__ = ["__version__"]
