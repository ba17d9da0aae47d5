"""`x @ W^T` on SmolLM2's shapes at training and prefill row counts (512, 1024), f32, 2 threads:
OpenBLAS's cblas_sgemm (what Tempering calls), oneDNN's dnnl_sgemm (Debian's libdnnl2, which PyTorch's
CPU matmuls build on) and torch.matmul, each called on the same arrays; prints GFLOP/s, the median
of repeated calls. The lead it measures for issue 23: where oneDNN beats OpenBLAS per shape.

    apt-get install libdnnl2; OMP_NUM_THREADS=2 /work/pyref/venv/bin/python scripts/bench/gemm_libs.py
"""
import ctypes, time, statistics, os, sys
import numpy as np
os.environ.setdefault("OMP_NUM_THREADS", "2")
import torch
torch.set_num_threads(2)
ob = ctypes.CDLL("libopenblas.so.0")
ob.openblas_set_num_threads(2)
dn = ctypes.CDLL("libdnnl.so.2")
c_float_p = ctypes.POINTER(ctypes.c_float)
dn.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, c_float_p, ctypes.c_int64, c_float_p, ctypes.c_int64, ctypes.c_float, c_float_p, ctypes.c_int64]
ob.cblas_sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, c_float_p, ctypes.c_int, c_float_p, ctypes.c_int, ctypes.c_float, c_float_p, ctypes.c_int]
def p(a): return a.ctypes.data_as(c_float_p)
def med(f, reps):
    f(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
print(f"{'M':>5} {'K':>5} {'N':>6} {'openblas':>9} {'onednn':>9} {'torch':>9}")
for m in [512, 1024]:
    for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]:
        x = np.random.rand(m, k).astype(np.float32); w = np.random.rand(n, k).astype(np.float32); c = np.zeros((m, n), np.float32)
        fl = 2 * m * n * k / 1e9
        reps = max(3, int(20 / fl))
        t_ob = med(lambda: ob.cblas_sgemm(101, 111, 112, m, n, k, 1.0, p(x), k, p(w), k, 0.0, p(c), n), reps)
        t_dn = med(lambda: dn.dnnl_sgemm(b'N', b'T', m, n, k, 1.0, p(x), k, p(w), k, 0.0, p(c), n), reps)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        t_pt = med(lambda: torch.matmul(xt, wt.t()), reps)
        print(f"{m:>5} {k:>5} {n:>6} {fl/t_ob:>9.1f} {fl/t_dn:>9.1f} {fl/t_pt:>9.1f}", flush=True)
