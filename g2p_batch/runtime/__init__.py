"""Loading and running compiled artifact sets with the TVM runtime: the manifest format, the
greedy KV-cache engine, the actors' loader. Never imports torch, transformers or the compiler."""
