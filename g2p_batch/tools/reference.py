"""The reference: the checkpoint in transformers, fed the way CharsiuG2P's own code feeds it.

Inputs are built with transformers' `ByT5Tokenizer` from `<lang>:word` text, with
`add_special_tokens=False` unless the checkpoint declares EOS-terminated inputs, and decoded with
`generate(num_beams=1, do_sample=False)` (`generate(num_beams=K, num_return_sequences=N)` for
n-best): never with the project's own encoder, so a wrong
convention on our side shows up as mismatches. Imports torch lazily: only `verify`, tests and
the benchmark use it.
"""

from __future__ import annotations

import os

import numpy as np


def charsiu_text(lang: str, word: str, space_after_colon: bool = False) -> str:
    """The model input as CharsiuG2P writes it (`'<' + lang + '>:' + word`; its README puts a
    space after the colon)."""
    return "<" + lang + ">:" + (" " if space_after_colon else "") + word


def greedy_generate(model, input_ids, max_new_tokens: int, min_new_tokens: int = 0):
    """transformers' greedy decoding as CharsiuG2P runs it (`num_beams=1, do_sample=False`),
    with PAD (0) as the padding that the attention mask hides: torch ids in, torch ids out
    (decoder start token first)."""
    import torch

    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=(input_ids != 0).long(), num_beams=1,
                              do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)


class Reference:
    def __init__(self, checkpoint_path, threads: int | None = None, device: str = "cpu"):
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")  # TVM's spinning workers slow torch 2-4x
        import torch
        import transformers

        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.tokenizer = transformers.ByT5Tokenizer()  # byte-level: nothing to download
        self.model = transformers.T5ForConditionalGeneration.from_pretrained(
            str(checkpoint_path), dtype=torch.float32).eval().to(device)
        # every call passes max_new_tokens; a checkpoint's own max_length (ours save 65) would make
        # generate() warn once per batch that it is ignored
        self.model.generation_config.max_length = transformers.GenerationConfig().max_length

    def input_ids(self, texts: list[str], input_eos: bool = False) -> np.ndarray:
        """[B, L] ids as CharsiuG2P makes them: `tokenizer(texts, padding=True,
        add_special_tokens=False)`; `input_eos` for checkpoints trained with EOS on the input."""
        enc = self.tokenizer(list(texts), padding=True, add_special_tokens=input_eos, return_tensors="np")
        return enc["input_ids"].astype(np.int64)

    def transcribe(self, texts: list[str], max_new_tokens: int, input_eos: bool = False) -> np.ndarray:
        """Generated ids for `texts` (see `input_ids`), [B, max_new_tokens], PAD-filled."""
        return self.generate(self.input_ids(texts, input_eos), max_new_tokens)

    def generate_raw(self, input_ids: np.ndarray, max_new_tokens: int, min_new_tokens: int = 0):
        """`greedy_generate` on the model's device, torch ids out (the bench times this)."""
        ids = self.torch.as_tensor(np.asarray(input_ids), dtype=self.torch.long, device=self.device)
        out = greedy_generate(self.model, ids, max_new_tokens, min_new_tokens)
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return out

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, min_new_tokens: int = 0) -> np.ndarray:
        """[B, T] generated ids (start token dropped), right-padded with PAD to max_new_tokens."""
        gen = self.generate_raw(input_ids, max_new_tokens, min_new_tokens)[:, 1:].cpu().numpy().astype(np.int32)
        full = np.zeros((gen.shape[0], max_new_tokens), np.int32)
        full[:, : gen.shape[1]] = gen
        return full

    def beams(self, input_ids: np.ndarray, max_new_tokens: int, num_beams: int, n_best: int,
              length_penalty: float = 1.0, min_new_tokens: int = 0) -> list[list[tuple[np.ndarray, float]]]:
        """Per row, its `n_best` (generated ids up to and including EOS, score) from
        `generate(num_beams, num_return_sequences=n_best, do_sample=False)`, best first;
        `min_new_tokens` for benchmarks that force the steps."""
        torch = self.torch
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=(ids != 0).long(), num_beams=num_beams,
                                      num_return_sequences=n_best, do_sample=False, length_penalty=length_penalty,
                                      max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, output_scores=True,
                                      return_dict_in_generate=True)
        seqs = out.sequences[:, 1:].cpu().numpy().astype(np.int32)
        scores = out.sequences_scores.float().cpu().numpy()
        lengths = (out.beam_indices >= 0).sum(dim=1).cpu().numpy()  # generated ids, EOS included
        return [[(seqs[j, :lengths[j]], float(scores[j])) for j in range(r * n_best, (r + 1) * n_best)]
                for r in range(len(input_ids))]
