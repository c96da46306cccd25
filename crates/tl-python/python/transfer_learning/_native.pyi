"""Type stubs of the native module (re-exported by ``transfer_learning``)."""

from os import PathLike
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, PathLike[str]]

__version__: str

class TransferLearningError(Exception):
    """Every failure of transfer-learning-rs; the message names the model, file, row or
    field concerned."""

class TextEmbedder:
    """A text encoder: strings in, one float32 row per text out, through the feature cache."""

    def __init__(
        self,
        model: str,
        *,
        cache_dir: Optional[_Path] = None,
        cache_features: bool = True,
        progress: bool = False,
        threads: Optional[int] = None,
        batch_size: int = 32,
    ) -> None: ...
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text, in order."""
    def embed_cached(
        self, texts: Sequence[str]
    ) -> Tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """``embed``, with what the cache answered: ``(vectors, {"hits", "computed", ...})``."""
    def keys(self, texts: Sequence[str]) -> list[str]:
        """Each text's feature-cache key (64 hex characters, the shards' ``key`` column)."""
    def lookup(
        self, texts: Sequence[str]
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Cached vectors only, computing nothing: ``(vectors, found)``; NaN rows where not found."""
    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def dim(self) -> int: ...

class ImageEmbedder:
    """An image encoder: image file paths in, one pooled float32 row per image out."""

    def __init__(
        self,
        model: str,
        *,
        cache_dir: Optional[_Path] = None,
        cache_features: bool = True,
        progress: bool = False,
        threads: Optional[int] = None,
        batch_size: int = 32,
    ) -> None: ...
    def embed(self, paths: Sequence[_Path]) -> npt.NDArray[np.float32]:
        """One row per image file, in order."""
    def embed_cached(
        self, paths: Sequence[_Path]
    ) -> Tuple[npt.NDArray[np.float32], dict[str, Any]]: ...
    def keys(self, paths: Sequence[_Path]) -> list[str]: ...
    def lookup(
        self, paths: Sequence[_Path]
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]: ...
    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def dim(self) -> int: ...

class Classifier:
    """A classifier on feature vectors that speaks in labels."""

    @staticmethod
    def fit(
        features: npt.ArrayLike,
        labels: Sequence[str],
        *,
        head: str = "logistic",
        param: Optional[float] = None,
        seed: int = 0,
        embedder: Union[TextEmbedder, ImageEmbedder, None] = None,
    ) -> "Classifier":
        """Fits ``head`` (logistic, linear-svm, knn, centroid, ridge); ``param`` is its C, k or
        alpha. ``embedder`` (the one that made the features) records the model, so that
        ``tl predict`` finds it."""
    def predict(self, features: npt.ArrayLike) -> list[str]: ...
    def predict_proba(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def head(self) -> str: ...
    def save(self, path: _Path) -> None: ...
    @staticmethod
    def load(path: _Path) -> "Classifier": ...

class FeatureCache:
    """The feature cache of a cache folder."""

    def __init__(self, cache_dir: Optional[_Path] = None) -> None: ...
    @property
    def root(self) -> Path: ...
    def info(self) -> list[dict[str, Any]]:
        """One dict per model: model, fingerprint, dim, rows, shards, bytes, dir."""
    def compact(self) -> Tuple[int, int]:
        """Merges small shards; shard counts before and after."""

def select(
    datasets: Sequence[str],
    models: Sequence[str],
    *,
    limit: Optional[int] = None,
    folds: int = 5,
    cache_dir: Optional[_Path] = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Ranks models on each dataset before training any head (as ``tl select``), next to
    the no-pretraining baseline (``baseline``: TF-IDF or raw pixels) under the same
    cross-validation."""

def run_experiment(
    path: _Path,
    *,
    out_dir: Optional[_Path] = None,
    cache_dir: Optional[_Path] = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Runs an experiment file; returns its report (``report.json``) as a dict."""

def load_dataset(
    dataset: str,
    *,
    cache_dir: Optional[_Path] = None,
    text_column: str = "text",
    label_column: str = "label",
    split_column: Optional[str] = None,
) -> dict[str, Any]:
    """A dataset as every ``tl`` command loads it: ``name``, ``modality``, ``items`` (texts
    or image paths), ``labels``, ``label_names``, ``splits``."""
