"""The least work any exact float64-Gram implementation in Python + numpy does, as one process:
the ceiling `bench_vs_gradience.py` compares lorascope and its goals with.

    python benchmarks/_minimal.py audit A [--procs] [--float32]
    python benchmarks/_minimal.py merge-audit A B [--procs]
    python benchmarks/_minimal.py compress A OUT_FILE      (rank 16, bf16 out)

No validation, no metrics beyond σ, no output but one number: read the safetensors header, and for
each layer read the bf16 bytes, widen them to float64 one ≈1 MiB block at a time, the Gram products
(`syrk`; for merge-audit the stacked pair), a Cholesky root and the r×r eigenvalues, on two worker
threads with one BLAS thread each (`--procs`: two forked processes instead).  compress adds the
r×r eigenvectors, the two thin float32 products that give the rank-16 factors, their bf16 rounding
and one write of a safetensors file.  `--float32`: the Gram products in float32 (bf16 values are exact
there, the sums are not): what the one precision lever left would give, NOT an exact pipeline
(it breaks the 1e-6 accuracy bound on trained adapters).  The interpreter start
and `import numpy` are included: every Python tool pays them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a reference script may; lorascope uses threadpoolctl

import json  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402

BLOCK = 1 << 17  # float64 elements widened at once (1 MiB)
FLOAT32 = "--float32" in sys.argv


class Source:
    def __init__(self, folder: str):
        self.fd = os.open(os.path.join(folder, "adapter_model.safetensors"), os.O_RDONLY)
        (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
        self.header = json.loads(os.pread(self.fd, n, 8))
        self.header.pop("__metadata__", None)
        self.start = 8 + n

    def raw(self, key: str) -> np.ndarray:
        e = self.header[key]
        lo, hi = e["data_offsets"]
        buf = np.empty((hi - lo) // 2, np.uint16)
        os.preadv(self.fd, [memoryview(buf).cast("B")], self.start + lo)
        return buf.reshape(e["shape"])

    def pairs(self) -> list[tuple[str, str]]:
        return [(k, k.replace("lora_A", "lora_B")) for k in sorted(self.header) if "lora_A" in k]


def gram(xs: list[np.ndarray], rows: bool) -> np.ndarray:
    """Gram of the row-stacked (rows) or column-stacked bf16 matrices, float64."""
    r = sum(x.shape[0 if rows else 1] for x in xs)
    length = xs[0].shape[1 if rows else 0]
    step = max(64, BLOCK // r)
    u4, f8, g = np.empty(r * step, np.uint32), np.empty(r * step), np.zeros((r, r))
    for j in range(0, length, step):
        w = min(step, length - j)
        u = u4[: r * w].reshape((r, w) if rows else (w, r))
        at = 0
        for x in xs:
            k = x.shape[0 if rows else 1]
            if rows:
                np.copyto(u[at : at + k], x[:, j : j + w])
            else:
                np.copyto(u[:, at : at + k], x[j : j + w])
            at += k
        u <<= 16  # bf16 bits -> float32 bits
        if FLOAT32:
            f = u.view(np.float32)
        else:
            f = f8[: r * w].reshape(u.shape)
            np.copyto(f, u.view(np.float32))
        g += f @ f.T if rows else f.T @ f
    return g


def one(sources: list[Source], pair: tuple[str, str]) -> float:
    ga = gram([s.raw(pair[0]) for s in sources], rows=True)
    gb = gram([s.raw(pair[1]) for s in sources], rows=False)
    total, r = 0.0, ga.shape[0] // len(sources)
    for i in range(len(sources)):
        sl = slice(i * r, (i + 1) * r)
        low = np.linalg.cholesky(ga[sl, sl] + 1e-300 * np.eye(r))
        total += float(np.linalg.eigvalsh(low.T @ gb[sl, sl] @ low).sum())
    return total


def truncate(source: Source, pair: tuple[str, str], k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Rank-k factors (down (k, n), up (m, k)) as bf16 bit patterns (uint16)."""
    a, b = source.raw(pair[0]), source.raw(pair[1])
    ga, gb = gram([a], rows=True), gram([b], rows=False)
    low = np.linalg.cholesky(ga + 1e-300 * np.eye(ga.shape[0]))
    s2, w = np.linalg.eigh(low.T @ gb @ low)
    s2, w = s2[::-1][:k], w[:, ::-1][:, :k]
    lk = low @ w  # (r, k)
    p, r = (lk / np.sqrt(s2)).astype(np.float32), ((lk.T @ gb) / np.sqrt(s2)[:, None]).astype(np.float32)
    a32 = (a.astype(np.uint32) << 16).view(np.float32)
    b32 = (b.astype(np.uint32) << 16).view(np.float32)
    return bf16(r @ a32), bf16(b32 @ p)  # Vᵀ·Σ^½… (the split does not change the cost)


def bf16(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def compress(source: Source, out: str) -> None:
    pairs = source.pairs()
    with ThreadPoolExecutor(2) as pool:
        factors = list(pool.map(lambda p: truncate(source, p), pairs))
    header, blobs, at = {}, [], 0
    for (ka, kb), (down, up) in zip(pairs, factors, strict=True):
        for key, x in ((ka, down), (kb, up)):
            header[key] = {"dtype": "BF16", "shape": list(x.shape), "data_offsets": [at, at + x.nbytes]}
            blobs.append(x)
            at += x.nbytes
    head = json.dumps(header).encode()
    with open(out + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for x in blobs:
            f.write(memoryview(x).cast("B"))
    os.replace(out + ".tmp", out)


def main() -> None:
    args = [a for a in sys.argv[2:] if not a.startswith("--")]
    if sys.argv[1] == "compress":
        compress(Source(args[0]), args[1])
        return
    sources = [Source(p) for p in args]
    pairs = sources[0].pairs()
    if "--procs" in sys.argv:
        pids = []
        for w in range(2):
            pid = os.fork()
            if pid == 0:
                for p in pairs[w::2]:
                    one(sources, p)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        print(len(pairs))
        return
    with ThreadPoolExecutor(2) as pool:
        print(sum(pool.map(lambda p: one(sources, p), pairs)))


if __name__ == "__main__":
    main()
