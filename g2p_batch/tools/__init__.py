"""On top of the rest: the transformers reference, verify, the benchmark, training, metrics and
lexicon files. These may import torch and transformers."""
