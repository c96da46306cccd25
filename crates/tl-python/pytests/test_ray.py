"""Distributed extraction on a real local Ray cluster: a head on 127.0.0.1 and two worker
actors, each writing into one shared feature cache."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

import transfer_learning as tl
from conftest import MODEL, new_cache, run_tl, shard_rows

ray = pytest.importorskip("ray")
from transfer_learning.ray import Embed, embed_dataset  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """`ray start --head` on 127.0.0.1; the driver connects to it. Four logical CPUs on this
    2-core machine: two for the embedding actors and room for Ray Data's read tasks, which
    wait forever when the actors hold every CPU."""
    ray_bin = Path(sys.executable).with_name("ray")
    # Ray's socket paths must stay short: a temp folder of its own under /tmp.
    temp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")
    port = _free_port()
    # A HOME of its own: a ~/.ray/auth_token left by any earlier `ray.init()` would switch the
    # cluster to token authentication and lock this driver out.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HOME=temp)
    start = [
        str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
        "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats",
        f"--temp-dir={temp}", "--object-store-memory=300000000",
    ]
    subprocess.run(start, check=True, env=env, capture_output=True)
    try:
        ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield
    finally:
        ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def _reference(tl_home, tl_bin, reviews_csv, tmp_path):
    """Key -> vector of a single-process `tl embed` of the same data (its own cache)."""
    home = new_cache(tl_home, tmp_path / "single")
    run_tl(tl_bin, home, "embed", "--model", MODEL, "--dataset", reviews_csv)
    fingerprint = tl.TextEmbedder(MODEL, cache_dir=home).fingerprint
    return dict(shard_rows(home, fingerprint)[0]), fingerprint


def _check_cache(cache, fingerprint, reference, keys):
    """Every shard whole, no key stored twice with other bits, and every key present with the
    reference's bits."""
    rows, shards = shard_rows(cache, fingerprint)
    seen = {}
    for k, v in rows:
        if k in seen:
            assert np.array_equal(seen[k], v), f"key {k} stored twice with different vectors"
        seen[k] = v
    assert set(keys) <= set(seen)
    assert all(np.array_equal(seen[k], reference[k]) for k in keys)
    return rows, shards


def test_two_workers_fill_the_shared_cache_with_the_single_process_bits(
    cluster, tl_home, tl_bin, reviews, reviews_csv, tmp_path
):
    reference, fingerprint = _reference(tl_home, tl_bin, reviews_csv, tmp_path)
    cache = new_cache(tl_home, tmp_path / "shared")
    ds = ray.data.read_csv(str(reviews_csv))
    out = embed_dataset(ds, MODEL, cache, concurrency=2, batch_size=64, output="both")
    rows = out.take_all()
    assert len(rows) == len(reviews[0])
    for r in rows:
        assert np.array_equal(r["embedding"], reference[r["key"]])
    assert len({r["key"] for r in rows}) == len(set(reviews[0]))
    stored, _ = _check_cache(cache, fingerprint, reference, [r["key"] for r in rows])
    # Each row stored at most once: the one text that occurs twice in the data may be stored
    # by both actors at once (a harmless race: same key, same bits), nothing more.
    assert len(stored) <= len(reviews[0]), "rows stored more than once"
    # Any machine now reads them as hits: `tl embed` on the shared cache computes nothing.
    out = run_tl(tl_bin, cache, "embed", "--model", MODEL, "--dataset", reviews_csv)
    assert f"{len(reviews[0])} from the cache" in out and " 0 computed" in out, out


def test_a_killed_worker_is_retried_and_the_cache_ends_complete(
    cluster, tl_home, tl_bin, reviews, reviews_csv, tmp_path
):
    reference, fingerprint = _reference(tl_home, tl_bin, reviews_csv, tmp_path)
    cache = new_cache(tl_home, tmp_path / "shared")
    marker = tmp_path / "killed"

    class DiesOnce(Embed):
        """Stores its second batch, then its process dies before answering (once)."""

        calls = 0

        def __call__(self, batch):
            out = super().__call__(batch)
            DiesOnce.calls += 1
            if DiesOnce.calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return out

    ds = ray.data.read_csv(str(reviews_csv))
    out = ds.map_batches(
        DiesOnce,
        fn_constructor_kwargs={"model": MODEL, "cache_dir": str(cache)},
        batch_size=40,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
    )
    keys = [r["key"] for r in out.take_all()]
    assert marker.exists(), "no worker was killed"
    assert sorted(keys) == sorted(tl.TextEmbedder(MODEL, cache_dir=cache).keys(reviews[0]))
    stored, _ = _check_cache(cache, fingerprint, reference, keys)
    # A retried batch that stored its 40 rows again would exceed this.
    assert len(stored) <= len(reviews[0]), "a retried batch stored its rows again"


def test_two_concurrent_pipelines_over_overlapping_rows_leave_one_consistent_cache(
    cluster, tl_home, tl_bin, reviews, reviews_csv, tmp_path
):
    reference, fingerprint = _reference(tl_home, tl_bin, reviews_csv, tmp_path)
    cache = new_cache(tl_home, tmp_path / "shared")
    texts = reviews[0]
    parts = [texts[:200], texts[100:]]
    results, errors = [None, None], []

    def pipeline(i):
        try:
            ds = ray.data.from_items([{"text": t} for t in parts[i]])
            out = embed_dataset(ds, MODEL, cache, concurrency=1, batch_size=25, output="keys")
            results[i] = [r["key"] for r in out.take_all()]
        except Exception as e:  # surfaced below, with the thread's traceback
            errors.append(e)

    threads = [threading.Thread(target=pipeline, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    keys = results[0] + results[1]
    _check_cache(cache, fingerprint, reference, keys)
    x, found = tl.TextEmbedder(MODEL, cache_dir=cache).lookup(texts)
    assert found.all()
    assert not (cache / "features" / fingerprint / "quarantine").exists()


def test_tl_prints_a_pipeline_that_runs(cluster, tl_home, tl_bin, reviews, reviews_csv, tmp_path):
    cache = new_cache(tl_home, tmp_path / "shared")
    script = run_tl(
        tl_bin, cache, "embed", "--model", MODEL, "--dataset", reviews_csv,
        "--ray", "--workers", "2",
    )
    assert "map_batches" in script or "embed_dataset" in script
    path = tmp_path / "pipeline.py"
    path.write_text(script)
    env = dict(os.environ, TL_HOME=str(cache), RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    out = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    x, found = tl.TextEmbedder(MODEL, cache_dir=cache).lookup(reviews[0])
    assert found.all()


def test_the_example_script_embeds_a_table(cluster, tl_home, reviews, reviews_csv, tmp_path):
    cache = new_cache(tl_home, tmp_path / "shared")
    script = Path(__file__).parents[1] / "examples" / "ray_embed.py"
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    out = subprocess.run(
        [sys.executable, str(script), str(reviews_csv), "--model", MODEL, "--cache", str(cache),
         "--keys-out", str(tmp_path / "keys")],
        env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"embedded {len(reviews[0])} rows" in out.stdout
    emb = tl.TextEmbedder(MODEL, cache_dir=cache)
    assert emb.lookup(reviews[0])[1].all()
    keys = ray.data.read_parquet(str(tmp_path / "keys")).to_pandas()["key"]
    assert sorted(keys) == sorted(emb.keys(reviews[0]))
