"""The reference: transformers `generate(num_beams=1, do_sample=False)` on the same padded
batches. Imports torch lazily: only `verify`, tests and the benchmark use it."""

from __future__ import annotations

import os

import numpy as np


class Reference:
    def __init__(self, checkpoint_path, threads: int | None = None):
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")  # TVM's spinning workers slow torch 2-4x
        import torch
        import transformers

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = transformers.T5ForConditionalGeneration.from_pretrained(
            str(checkpoint_path), dtype=torch.float32).eval()
        # every call passes max_new_tokens; a checkpoint's own max_length (ours save 65) would make
        # generate() warn once per batch that it is ignored
        self.model.generation_config.max_length = transformers.GenerationConfig().max_length

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, min_new_tokens: int = 0) -> np.ndarray:
        """[B, T] generated ids (start token dropped), right-padded with PAD to max_new_tokens."""
        torch = self.torch
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=(ids != 0).long(), num_beams=1,
                                      do_sample=False, max_new_tokens=max_new_tokens,
                                      min_new_tokens=min_new_tokens)
        gen = out[:, 1:].numpy().astype(np.int32)
        full = np.zeros((gen.shape[0], max_new_tokens), np.int32)
        full[:, : gen.shape[1]] = gen
        return full
