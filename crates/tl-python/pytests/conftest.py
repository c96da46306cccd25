"""Fixtures of the Python package's tests: the checkout's cache (models fetched by
`cargo xtask test`), the `tl` binary, real review texts, and caches of their own."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

MODEL = "paraphrase-minilm-l3-v2"


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests with `cargo xtask pytest`")
    return Path(value)


@pytest.fixture(scope="session")
def tl_home():
    return _env("TL_HOME")


@pytest.fixture(scope="session")
def tl_bin():
    return _env("TL_BIN")


@pytest.fixture(scope="session")
def reviews(tl_home):
    """300 Amazon review sentences with their labels (sentiment@5.0.2, fetched by xtask)."""
    rows = json.loads((tl_home / "datasets" / "sentiment-amazon" / "amazon.json").read_text())
    rows = [r for r in rows if r["text"].strip()][:300]
    return [r["text"] for r in rows], ["pos" if r["class"] == 1 else "neg" for r in rows]


@pytest.fixture(scope="session")
def reviews_csv(reviews, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(*reviews))
    return path


def new_cache(tl_home, root):
    """An empty feature cache that shares the checkout's fetched runtime and models, so
    nothing is downloaded again."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("runtime", "models", "downloads", "datasets"):
        if (tl_home / sub).exists() and not (root / sub).exists():
            (root / sub).symlink_to(tl_home / sub)
    return root


@pytest.fixture
def cache(tl_home, tmp_path):
    return new_cache(tl_home, tmp_path / "cache")


def run_tl(tl_bin, home, *args):
    """Runs `tl` with TL_HOME=home; returns stdout, failing with its stderr."""
    env = dict(os.environ, TL_HOME=str(home))
    out = subprocess.run([str(tl_bin), *map(str, args)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"tl {' '.join(map(str, args))} failed:\n{out.stderr}"
    return out.stdout


def shard_rows(cache_root, fingerprint):
    """Every (key, vector) row of every shard of one model, after checking that each shard is
    whole: its bytes hash to its name, and no temporary file is left beside it."""
    import blake3
    import pyarrow.parquet as pq

    folder = cache_root / "features" / fingerprint / "shards"
    leftovers = [p.name for p in folder.iterdir() if not p.name.startswith("shard-")]
    assert not leftovers, f"files other than shards in {folder}: {leftovers}"
    shards = sorted(folder.glob("shard-*.parquet"))
    rows = []
    for s in shards:
        digest = blake3.blake3(s.read_bytes()).hexdigest()
        assert s.name == f"shard-{digest}.parquet", f"{s.name} is partial or damaged"
        t = pq.read_table(s)
        for k, v in zip(t.column("key").to_pylist(), t.column("embedding").to_numpy(zero_copy_only=False)):
            rows.append((k, v))
    return rows, shards
