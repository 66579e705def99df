"""Time the CUDA dense kernels under each candidate tile: dlight's stock matmul and the `Gemm`
tiles `g2p_batch.compile.cuda_rules.pick_tile` chooses among (the measurements behind it).

    python tests/gpu/dense_variants.py build DIR     # here: cross-compile one library per tile
    python tests/gpu/dense_variants.py run DIR       # on the GPU node: check and time every kernel

The shapes are tiny_8's: the encoder's dense layers over packed tokens (rows = 16*m, given at
run time) and the decoder's at batch 1024 and 4096. Each kernel is checked against numpy
before it is timed, so a tile that computes garbage cannot win.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# (K, N, residual) of tiny_8's dense layers: qkv, o, wi (gated), wo, cross_kv, q_cross, lm_head
LAYERS = [(256, 1152, False), (384, 256, True), (256, 2048, False), (1024, 256, True), (256, 3072, False),
          (256, 384, False)]
ENC_TOKENS = 18432  # about 1,024 words of the test split (18 ids each)
DEC_ROWS = (1024, 4096)


@dataclass(frozen=True)
class Tile:
    """dlight Matmul knobs: x runs over rows (M), y over output columns (N)."""
    block_x: int
    block_y: int
    micro_x: int
    micro_y: int
    k: int = 16
    vector: int = 4

    @property
    def name(self) -> str:
        return f"t{self.block_x}x{self.block_y}_m{self.micro_x}x{self.micro_y}_k{self.k}_vec{self.vector}"

    def rule(self):
        from tvm.s_tir import dlight as dl
        config = dl.gpu.Matmul.Config(block_size_x=self.block_x, block_size_y=self.block_y, vthread_x=1,
                                      vthread_y=1, micro_size_x=self.micro_x, micro_size_y=self.micro_y,
                                      micro_size_k=self.k, vector_size=self.vector, unroll=256,
                                      use_shared=True, storage_align=True, inner_x=False)

        class Fixed(dl.gpu.Matmul):
            def get_configs(self, target):
                return config
        return Fixed()


STOCK = Tile(8, 16, 4, 4, k=16, vector=2)  # dlight's own CUDA config: 32 x 64


def candidates():
    from g2p_batch.compile import cuda_rules as C
    return [STOCK, C.GEMM_128, C.GEMM_128x64, C.GEMM_64, C.GEMM_32x64,
            C.Gemm(16, 16, 8, 1, 4, k=16, pipeline=True), C.Gemm(16, 16, 8, 2, 4, k=8, pipeline=True),
            C.Gemm(16, 16, 8, 1, 4, k=8), C.Gemm(16, 16, 4, 1, 4, k=16), C.Gemm(8, 16, 4, 1, 4, k=16)]


def _rule(tile):
    from g2p_batch.compile import cuda_rules
    return tile.rule() if isinstance(tile, Tile) else cuda_rules.GemmMatmul(lambda rows, cols: tile)


def kernels():
    for K_, N, res in LAYERS:
        yield None, K_, N, res
        for M in DEC_ROWS:
            if N != 3072:  # cross_kv runs in the encoder only
                yield M, K_, N, res


def kname(M, K_, N, res):
    return f"dense_{'n' if M is None else M}x{K_}x{N}" + ("_res" if res else "")


def build(out: Path) -> None:
    import tvm
    from tvm.s_tir import dlight as dl

    from g2p_batch.compile import kernels as K
    from g2p_batch.runtime import targets

    out.mkdir(parents=True, exist_ok=True)
    tgt = tvm.target.Target(targets.cuda_target(), host=targets.cpu_target())
    built = []
    for tile in candidates():  # the kernels made anew per tile: given one module twice,
        # ApplyDefaultSchedule gives the second tile the first one's schedule
        funcs = {kname(*k): K.dense(k[0], k[1], k[2], K.KernelTarget("gpu"), residual=k[3]).with_attr(
            "global_symbol", kname(*k)) for k in kernels()}
        mod = tvm.IRModule(funcs)
        t0 = time.perf_counter()
        try:
            with tgt:
                mod = dl.ApplyDefaultSchedule(_rule(tile))(mod)
            lib = tvm.compile(mod, tgt)
            lib.export_library(str(out / f"{tile.name}.so"))
            built.append(tile.name)
            print(f"{tile.name}: built in {time.perf_counter() - t0:.1f}s", flush=True)
        except Exception as e:  # a tile dlight cannot apply is reported, not fatal
            print(f"{tile.name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
    (out / "tiles.json").write_text(json.dumps({"built": built, "stock": STOCK.name}))


def run(out: Path) -> None:
    import numpy as np
    import tvm

    from g2p_batch.runtime.cuda import register_cuda_jit

    register_cuda_jit()
    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    results = []
    tiles = json.loads((out / "tiles.json").read_text())
    for name in tiles["built"]:
        t0 = time.perf_counter()
        lib = tvm.runtime.load_module(str(out / f"{name}.so"))
        for M, K_, N, res in kernels():
            rows = ENC_TOKENS if M is None else M
            x = rng.standard_normal((rows, K_), dtype=np.float32)
            w = (rng.standard_normal((N, K_), dtype=np.float32) / np.sqrt(K_)).astype(np.float32)
            r = rng.standard_normal((rows, N), dtype=np.float32)
            args = [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev)] + ([tvm.runtime.tensor(r, dev)] if res else [])
            if M is None:
                args.append(rows // 16)
            y = tvm.runtime.tensor(np.zeros((rows, N), np.float32), dev)
            kn = kname(M, K_, N, res)
            try:
                lib[kn](*args, y)
                dev.sync()
                want = x @ w.T + (r if res else 0)
                err = float(np.abs(y.numpy() - want).max())
                ok = err < 1e-3 * max(1.0, float(np.abs(want).max()))
                sec = lib.time_evaluator(kn, dev, number=20, repeat=3)(*args, y).mean
            except Exception as e:
                print(f"{name} {kn}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            tflops = 2 * rows * K_ * N / sec / 1e12
            results.append(dict(tile=name, kernel=kn, rows=rows, K=K_, N=N, us=sec * 1e6, tflops=tflops,
                                max_err=err, ok=ok))
            print(f"{name:32s} {kn:24s} {sec * 1e6:9.1f} us {tflops:6.2f} TFLOP/s {'ok' if ok else 'WRONG'} "
                  f"err {err:.1e}", flush=True)
        print(f"{name}: load+run {time.perf_counter() - t0:.1f}s", flush=True)
    best = {}
    for r in results:
        if r["ok"] and (r["kernel"] not in best or r["us"] < best[r["kernel"]]["us"]):
            best[r["kernel"]] = r
    print("\nbest tile per kernel:")
    for kn, r in best.items():
        stock = next((s for s in results if s["kernel"] == kn and s["tile"] == tiles["stock"]), None)
        gain = f" ({stock['us'] / r['us']:.2f}x stock)" if stock else ""
        print(f"  {kn:24s} {r['tile']:32s} {r['tflops']:6.2f} TFLOP/s{gain}")
    (Path(sys.argv[3]) if len(sys.argv) > 3 else out / "dense_variants.json").write_text(
        json.dumps(results, indent=1))


if __name__ == "__main__":
    {"build": build, "run": run}[sys.argv[1]](Path(sys.argv[2]))
