"""Rows -> engine calls -> row results, in pure Python and numpy: the tokenizer, the engine
contract, batching onto compiled shapes, and the Transcriber. Testable without TVM or Ray."""
