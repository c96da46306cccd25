"""Embed a table's text column (or a column of image paths) on a Ray cluster, into a shared
feature cache; afterwards `tl fit`, `tl run` or `transfer_learning` on any machine with
TL_HOME=<cache> read the vectors as cache hits.

    python ray_embed.py reviews.parquet --column text --cache /shared/tl-cache --workers 8
    RAY_ADDRESS=ray://head:10001 python ray_embed.py s3://bucket/photos.csv --column path \\
        --model efficientnet-lite0 --modality image --cache /mnt/efs/tl --workers 32

`tl embed --dataset <data> --ray` prints the same pipeline for one dataset.
"""

import argparse
import time

import ray

from transfer_learning.ray import embed_dataset

READERS = {
    ".csv": ray.data.read_csv,
    ".parquet": ray.data.read_parquet,
    ".jsonl": ray.data.read_json,
    ".json": ray.data.read_json,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="a .csv, .parquet or .jsonl file or folder (local, s3://, gs://)")
    p.add_argument("--column", default="text", help="column of texts or image paths")
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--modality", choices=["text", "image"], default="text")
    p.add_argument("--cache", required=True, help="the shared cache folder (TL_HOME)")
    p.add_argument("--workers", type=int, default=2, help="actors")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per actor")
    p.add_argument("--batch-size", type=int, default=256, help="rows per actor call")
    p.add_argument("--keys-out", help="also write each row with its cache key to this Parquet folder")
    a = p.parse_args()
    suffix = next((s for s in READERS if a.input.rstrip("/").endswith(s)), ".parquet")
    ray.init()
    ds = READERS[suffix](a.input)
    out = embed_dataset(ds, a.model, a.cache, column=a.column, modality=a.modality,
                        concurrency=a.workers, threads=a.threads, batch_size=a.batch_size)
    t = time.perf_counter()
    if a.keys_out:
        out.write_parquet(a.keys_out)
        n = ray.data.read_parquet(a.keys_out).count()
    else:
        n = out.materialize().count()
    s = time.perf_counter() - t
    print(f"embedded {n} rows with {a.model} into {a.cache} in {s:.1f}s ({n / s:.0f} rows/s)")


if __name__ == "__main__":
    main()
