"""Distributed extraction on Ray: embed a Ray Dataset into a shared feature cache.

Each Ray actor opens the model once and embeds its batches through the content-addressed
feature cache in ``cache_dir`` (a folder every worker sees: NFS, EFS, Filestore, a shared
volume). Workers write immutable, atomically renamed Parquet shards, so any number of them
can write at once, a killed worker leaves no partial shard, and a retried batch finds what
its first attempt stored. Afterwards ``tl fit``, ``tl run`` or :class:`TextEmbedder` on any
machine with ``TL_HOME=cache_dir`` read the vectors as cache hits.

    import ray
    from transfer_learning.ray import embed_dataset

    ds = ray.data.read_csv("s3://bucket/reviews.csv")
    out = embed_dataset(ds, "all-minilm-l6-v2", "/shared/tl-cache", column="text",
                        concurrency=8, batch_size=256)
    out.write_parquet("/shared/keys")  # or .materialize(): the vectors are in the cache

``tl embed --ray`` prints this pipeline for a dataset.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np
import ray.data

from ._native import ImageEmbedder, TextEmbedder

__all__ = ["Embed", "embed_dataset"]

OUTPUTS = ("keys", "vectors", "both")


class Embed:
    """A callable class for ``Dataset.map_batches``: one model per actor, batches through
    the shared feature cache.

    ``column`` holds the texts (``modality="text"``) or image file paths
    (``modality="image"``). ``output`` chooses what each row gets back: ``"keys"`` (the
    cache key, 64 hex characters: small, the vectors stay in the cache), ``"vectors"`` (an
    ``embedding`` column of float32 arrays) or ``"both"``. ``threads`` is ONNX Runtime's
    intra-op threads per actor: give each actor as many CPUs as threads.
    """

    def __init__(
        self,
        model: str,
        cache_dir: str | os.PathLike[str],
        *,
        column: str = "text",
        modality: str = "text",
        threads: int = 1,
        batch_size: int = 32,
        output: str = "keys",
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if modality == "text":
            cls: Any = TextEmbedder
        elif modality == "image":
            cls = ImageEmbedder
        else:
            raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
        self.embedder = cls(
            model, cache_dir=cache_dir, threads=threads, batch_size=batch_size
        )
        self.column = column
        self.output = output

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.column not in batch:
            raise KeyError(
                f"column {self.column!r} not in the batch; it has {sorted(batch)}"
            )
        items = [str(v) for v in batch[self.column].tolist()]
        vectors = self.embedder.embed(items)
        out = dict(batch)
        if self.output in ("keys", "both"):
            out["key"] = np.array(self.embedder.keys(items), dtype=object)
        if self.output in ("vectors", "both"):
            out["embedding"] = vectors
        return out


def embed_dataset(
    ds: Any,
    model: str,
    cache_dir: str | os.PathLike[str],
    *,
    column: str = "text",
    modality: str = "text",
    concurrency: int = 2,
    batch_size: int = 256,
    threads: int = 1,
    output: str = "keys",
    inference_batch_size: int = 32,
    ray_remote_args: Optional[Dict[str, Any]] = None,
) -> Any:
    """``ds.map_batches(Embed, ...)`` with ``concurrency`` actors of ``threads`` CPUs each.

    ``batch_size`` rows go to an actor at a time (stored as shards of at most 256 rows);
    ``inference_batch_size`` rows per ONNX Runtime call. Ray Data restarts a dead actor and
    retries its batch (unlimited ``max_restarts`` and ``max_task_retries``, its default for
    actor pools); what the first attempt stored is found in the cache, so nothing is
    computed or stored twice. ``ray_remote_args`` go to the actors as they are.

    Size ``concurrency * threads`` below the cluster's CPUs: Ray Data's read tasks need
    CPUs too, and wait for ever when the actors hold them all. The result is lazy, as every
    Ray Dataset: consume it (``materialize()``, ``write_parquet``, ``iter_batches``).
    """
    return ds.map_batches(
        Embed,
        fn_constructor_kwargs={
            "model": model,
            "cache_dir": os.fspath(cache_dir),
            "column": column,
            "modality": modality,
            "threads": threads,
            "batch_size": inference_batch_size,
            "output": output,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=threads,
        **(ray_remote_args or {}),
    )
