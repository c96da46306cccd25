"""Scaling of distributed extraction on one machine: one process with N intra-op threads
against Ray pipelines of 1..N actors with one thread each, on the same texts, every
configuration into a fresh feature cache (so every vector is computed), side by side.

    TL_HOME=.tl-cache python crates/tl-python/examples/scale.py [--model M] [--rows N]

It starts its own local Ray cluster (N + 1 logical CPUs: the actors and Ray Data's reader),
checks that every configuration stores the same bits, and prints a Markdown table; the
README's "Scale out" figures come from it.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

import transfer_learning as tl
from transfer_learning.ray import embed_dataset


def fresh_cache(home: Path, root: Path) -> Path:
    """An empty feature cache sharing `home`'s fetched runtime and models."""
    root.mkdir(parents=True)
    for sub in ("runtime", "models", "downloads", "datasets"):
        if (home / sub).exists():
            (root / sub).symlink_to(home / sub)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--dataset", default="sentiment")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    home = Path(os.environ.get("TL_HOME", ".tl-cache")).resolve()
    texts = tl.load_dataset(a.dataset, cache_dir=home)["items"][: a.rows]
    work = Path(tempfile.mkdtemp(prefix="tlscale", dir="/tmp"))
    ray.init(num_cpus=a.cores + 1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _temp_dir=str(work / "ray"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    reference = None
    rows = []

    def record(name, seconds, cache):
        nonlocal reference
        emb = tl.TextEmbedder(a.model, cache_dir=cache)
        x, found = emb.lookup(texts)
        assert found.all(), f"{name}: {int((~found).sum())} texts missing from the cache"
        if reference is None:
            reference = x
        same = bool(np.array_equal(x, reference))
        rows.append((name, seconds, same))

    for r in range(a.repeats):
        cache = fresh_cache(home, work / f"single-{r}")
        emb = tl.TextEmbedder(a.model, cache_dir=cache, threads=a.cores)
        emb.embed(texts[:8])  # the model loaded and warm, as a Ray actor's is after start
        shutil.rmtree(cache / "features")
        t = time.perf_counter()
        emb.embed(texts)
        record(f"one process, {a.cores} threads", time.perf_counter() - t, cache)
        for workers in range(1, a.cores + 1):
            cache = fresh_cache(home, work / f"ray-{workers}-{r}")
            ds = ray.data.from_items([{"text": s} for s in texts])
            t = time.perf_counter()
            out = embed_dataset(ds, a.model, cache, concurrency=workers, threads=1,
                                batch_size=256).materialize()
            seconds = time.perf_counter() - t
            assert out.count() == len(texts)
            record(f"Ray, {workers} actor{'s' if workers > 1 else ''} x 1 thread", seconds, cache)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    best = {}
    for name, s, same in rows:
        b = best.get(name)
        best[name] = (min(s, b[0]) if b else s, same and (b[1] if b else True))
    base = best[f"one process, {a.cores} threads"][0]
    print(f"\n{len(texts)} texts of {a.dataset}, {a.model}, best of {a.repeats}, "
          f"each into an empty cache (actor start-up included for Ray)\n")
    print("| configuration | seconds | texts/s | vs one process | same bits |")
    print("|---|---|---|---|---|")
    for name, (s, same) in best.items():
        print(f"| {name} | {s:.2f} | {len(texts) / s:.0f} | {base / s:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
