"""FAISS on the GPU: exact and IVF indexes answer as on the CPU (skipped without a device)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from musecl_store.search.index import IndexOptions, RegionIndex, Stamp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a CUDA device"),
]


@pytest.mark.parametrize("shard_above", [10**9, 0])  # replicas, then shards (on several GPUs)
def test_exact_search_on_the_gpus_equals_the_cpu(tmp_path: Path, shard_above: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 64)).astype(np.float32)
    faiss.normalize_L2(x)
    ids = np.arange(len(x), dtype=np.int64) * 7
    index = RegionIndex._new_index("flat", x, IndexOptions())
    index.add_with_ids(x, ids)
    stamp = Stamp(1, "fused", 1, len(x), 64, "flat", 1)
    gpu = RegionIndex(tmp_path, index, stamp, IndexOptions(gpu_shard_above=shard_above))
    cpu = RegionIndex(tmp_path, index, stamp, IndexOptions(use_gpu=False))
    assert gpu.on_gpu and not cpu.on_gpu
    q = rng.standard_normal((500, 64)).astype(np.float32)
    gs, gi = gpu.search_snapshot(q, 10)
    cs, ci = cpu.search_snapshot(q, 10)
    assert np.mean(gi == ci) > 0.999  # ties may order differently
    assert np.allclose(gs, cs, atol=1e-4)
