"""The T5 checkpoint as this project lays it out, in numpy: finding and reading checkpoints
and their metadata, the named architectures, tensor shapes, and weights -> params."""
