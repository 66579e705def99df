"""Checkpoint -> compiled artifact sets with the TVM compiler: the Relax model, hand-written
TIR kernels and their CPU and CUDA schedules, the artifact cache, the job's preparer."""
