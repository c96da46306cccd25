"""Transfer learning in a few lines, with Rust inside.

Embed texts or images with a pretrained ONNX backbone (fetched and verified on first use),
keep every vector in a content-addressed feature cache, fit a classifier on the vectors,
rank backbones before training, and run whole experiments with before/after verdicts.

    >>> import transfer_learning as tl
    >>> emb = tl.TextEmbedder("all-minilm-l6-v2")
    >>> x = emb.embed(["A delight", "Loved it", "Dull", "A waste of time"])
    >>> clf = tl.Classifier.fit(x, ["pos", "pos", "neg", "neg"])
    >>> clf.predict(emb.embed(["What a wonderful film"]))
    ['pos']

Files go to ``$TL_HOME`` if set, else the platform cache folder; every class and function
takes ``cache_dir=`` to pick another (a shared filesystem, for many workers). Failures raise
:class:`TransferLearningError` with the message the ``tl`` command prints.
For many machines, :mod:`transfer_learning.ray` embeds a Ray Dataset into the shared cache.
"""

from ._native import (
    Classifier,
    FeatureCache,
    ImageEmbedder,
    TextEmbedder,
    TransferLearningError,
    __version__,
    load_dataset,
    run_experiment,
    select,
)

__all__ = [
    "Classifier",
    "FeatureCache",
    "ImageEmbedder",
    "TextEmbedder",
    "TransferLearningError",
    "__version__",
    "load_dataset",
    "run_experiment",
    "select",
]
