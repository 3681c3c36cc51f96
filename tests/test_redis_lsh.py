"""Integration: near-dedup through a datasketch MinHashLSH stored in a real redis-server.

Starts ``redis-server --port <free> --save '' --daemonize no`` on 127.0.0.1, runs
``curate dedup --near --redis-url …`` and checks it finds the same clusters as the
in-memory index; then two "workers" share one index by basename.
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from curate import dedup, minhash as mh
from curate.cli import main as cli
from curate.example import Example, Source

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not installed (scripts/system-deps.sh installs it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def _corpus(n_base: int = 120, seed: int = 3) -> list[str]:
    rnd = random.Random(seed)
    vocab = [f"tok{i}" for i in range(4000)]
    out = []
    for _ in range(n_base):
        w = [rnd.choice(vocab) for _ in range(rnd.randint(80, 150))]
        out.append(" ".join(w))
        if rnd.random() < 0.5:  # planted near copy: 1-2 substitutions
            v = list(w)
            for _ in range(rnd.randint(1, 2)):
                v[rnd.randrange(len(v))] = rnd.choice(vocab)
            out.append(" ".join(v))
    return out


def _clusters(store) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for e in store.iter_records():
        c = e.signals.get("dup_cluster")
        if c:
            groups.setdefault(c, set()).add(e.id)
    return {frozenset(g) for g in groups.values()}


def test_redis_lsh_same_clusters_as_memory(store, workspace, redis_url):
    texts = _corpus()
    planted = len(texts) - 120
    store.add_examples([Example(messages=[{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}],
                                source=Source(kind="ticket", file="x", loc=str(i)), split="train")
                        for i, t in enumerate(texts)])
    assert cli(["dedup", "--near", "--shingle", "word", "--workspace", str(workspace)]) == 0
    mem = _clusters(store)
    assert len(mem) >= 0.9 * planted  # planted copies (Jaccard ≥ 0.85) found
    assert cli(["dedup", "--near", "--shingle", "word", "--redis-url", redis_url, "--workspace", str(workspace)]) == 0
    assert _clusters(store) == mem
    assert store.meta_get("dedup_counters")["params"]["redis"] is True
    import redis

    assert redis.Redis.from_url(redis_url).dbsize() > 0  # the index really lives in Redis


def test_two_workers_share_one_index(redis_url):
    """Worker A inserts its shard, worker B inserts its own and queries: B sees A's keys."""
    texts = _corpus(60, seed=9)
    a_rows = np.arange(0, len(texts), 2)  # worker A: even rows, worker B: odd rows
    b_rows = np.arange(1, len(texts), 2)
    sig, _ = mh.signatures_of(texts, "word")
    b, r = mh.lsh_params(0.8)
    cfg = mh.redis_storage_config(redis_url, "shared-test")
    lsh_a = mh.datasketch_lsh(b, r, 128, cfg)
    mh.datasketch_insert(lsh_a, [f"id{i}" for i in a_rows], sig[a_rows])
    lsh_b = mh.datasketch_lsh(b, r, 128, cfg)  # separate client object, same basename
    mh.datasketch_insert(lsh_b, [f"id{i}" for i in b_rows], sig[b_rows])
    found = mh.datasketch_query(lsh_b, sig)
    want = mh.lsh_candidates(sig, b, r)
    got = {(min(i, int(k[2:])), max(i, int(k[2:]))) for i, ks in enumerate(found)
           for k in (x.decode() if isinstance(x, bytes) else x for x in ks) if int(k[2:]) != i}
    assert got == {tuple(p) for p in want.tolist()}
    assert any((a % 2) != (c % 2) for a, c in got)  # pairs across the two workers' shards
