"""The package as a Python user meets it: embedders, the cache, classifiers, selection,
experiments, and every error as a Python exception with the `tl` command's message."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import transfer_learning as tl
from conftest import MODEL, new_cache, run_tl, shard_rows


def test_embed_matches_the_tl_command_bit_for_bit(tl_home, tl_bin, reviews, reviews_csv, cache, tmp_path):
    texts, _ = reviews
    emb = tl.TextEmbedder(MODEL, cache_dir=cache)
    x = emb.embed(texts)
    assert x.shape == (len(texts), 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # The array wraps the Rust buffer (no copy) and is writable like any other.
    assert not x.flags.owndata and x.flags.c_contiguous and x.flags.writeable
    # `tl embed` in another process, another cache, its own batches: the same bits.
    home = new_cache(tl_home, tmp_path / "cli")
    run_tl(tl_bin, home, "embed", "--model", MODEL, "--dataset", reviews_csv, "--threads", "1")
    rows, _ = shard_rows(home, emb.fingerprint)
    cli = dict(rows)
    keys = emb.keys(texts)
    assert set(keys) == set(cli)
    assert all(np.array_equal(cli[k], x[i]) for i, k in enumerate(keys))


def test_the_cache_answers_repeats_and_lookup_computes_nothing(reviews, cache):
    texts, _ = reviews
    emb = tl.TextEmbedder(MODEL, cache_dir=cache)
    first, stats = emb.embed_cached(texts[:50])
    assert (stats["hits"], stats["computed"]) == (0, 50)
    again, stats = emb.embed_cached(texts[:60])
    assert (stats["hits"], stats["computed"]) == (50, 10)
    assert np.array_equal(first, again[:50])
    x, found = emb.lookup(texts[55:70])
    assert found.tolist() == [True] * 5 + [False] * 10
    assert np.array_equal(x[:5], again[55:60]) and np.isnan(x[5:]).all()
    info = {d["fingerprint"]: d for d in tl.FeatureCache(cache).info()}
    assert info[emb.fingerprint]["rows"] == 60 and info[emb.fingerprint]["model"] == MODEL
    keys = emb.keys(["a", "b", "a"])
    assert keys[0] == keys[2] != keys[1] and all(len(k) == 64 for k in keys)
    uncached = tl.TextEmbedder(MODEL, cache_dir=cache, cache_features=False)
    assert np.array_equal(uncached.embed(texts[:50]), first)
    with pytest.raises(tl.TransferLearningError, match="cache_features = false"):
        uncached.lookup(texts[:1])


def test_classifier_fits_predicts_and_round_trips_through_tl_predict(tl_bin, tl_home, reviews, cache, tmp_path):
    texts, labels = reviews
    emb = tl.TextEmbedder(MODEL, cache_dir=cache)
    x = emb.embed(texts)
    clf = tl.Classifier.fit(x[:200], labels[:200], embedder=emb)
    assert clf.labels == ["neg", "pos"] and clf.head == "logistic C=1"
    predicted = clf.predict(x[200:])
    accuracy = np.mean([p == t for p, t in zip(predicted, labels[200:])])
    assert accuracy > 0.75, accuracy  # this model on Amazon reviews: ~0.8
    proba = clf.predict_proba(x[200:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert [clf.labels[i] for i in proba.argmax(axis=1)] == predicted
    # float64 and list input are converted; another head and its parameter.
    assert clf.predict(x[200:].astype(np.float64).tolist()) == predicted
    knn = tl.Classifier.fit(x[:200], labels[:200], head="knn", param=3)
    assert knn.head.startswith("knn k=3")
    path = tmp_path / "clf.json"
    clf.save(path)
    loaded = tl.Classifier.load(path)
    assert loaded.predict(x[200:]) == predicted
    # The saved file is the one `tl predict` reads.
    home = new_cache(tl_home, tmp_path / "cli")
    out = run_tl(tl_bin, home, "predict", "--classifier", path, "--text", texts[200], "--text", texts[201])
    assert [line.split(",")[1] for line in out.strip().splitlines()[1:]] == predicted[:2], out


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: tl.TextEmbedder("no-such-model", cache_dir=c), 'unknown asset "no-such-model"'),
        (lambda c: tl.ImageEmbedder(MODEL, cache_dir=c), "is a text model: open it with TextEmbedder"),
        (lambda c: tl.TextEmbedder(MODEL, cache_dir=c, threads=0), "threads must be in 1..=256, got 0"),
        (lambda c: tl.TextEmbedder(MODEL, cache_dir=c, batch_size=0), "batch_size must be in 1..=4096"),
        (lambda c: tl.ImageEmbedder("efficientnet-lite0", cache_dir=c).embed([c / "missing.png"]), "missing.png"),
        (lambda c: tl.Classifier.fit(np.zeros((3, 4)), ["a", "b"]), "3 feature rows but 2 labels"),
        (lambda c: tl.Classifier.fit(np.zeros(4), ["a"]), r"2-d array \(one row per example\), got shape \[4\]"),
        (lambda c: tl.Classifier.fit(np.zeros((2, 4)), ["a", "b"], head="forest"), "unknown head `forest`"),
        (lambda c: tl.Classifier.fit(np.zeros((2, 4)), ["a", "b"], head="centroid", param=1), "no main hyperparameter"),
        (lambda c: tl.Classifier.fit(np.eye(2), ["a", "b"], param=-1), "c must be a positive number, got -1"),
        (lambda c: tl.Classifier.load(c / "nope.json"), "nope.json"),
        (lambda c: tl.Classifier.fit(np.eye(2), ["a", "b"], embedder="x"), "must be a TextEmbedder"),
        (lambda c: tl.select(["no-such-data"], [MODEL], cache_dir=c), "no-such-data"),
        (lambda c: tl.select(["sentiment-amazon"], [], cache_dir=c), "name at least one model"),
    ],
)
def test_errors_are_python_exceptions_with_the_tl_message(cache, call, message):
    with pytest.raises(tl.TransferLearningError, match=message):
        call(cache)


def test_a_damaged_classifier_file_is_named(cache):
    bad = cache / "broken.json"
    bad.write_text('{"format_version": 1, "config": ')
    with pytest.raises(tl.TransferLearningError, match="broken.json"):
        tl.Classifier.load(bad)


def test_an_image_model_embeds_files(tl_home, cache):
    images = sorted((tl_home / "datasets" / "imagenet-sanity").rglob("*.jp*g"))[:4]
    if not images:
        pytest.skip("imagenet-sanity images not fetched")
    emb = tl.ImageEmbedder("efficientnet-lite0", cache_dir=cache)
    x = emb.embed(images)
    assert x.shape == (len(images), emb.dim) and np.isfinite(x).all()
    assert np.array_equal(emb.embed(images[1:2])[0], x[1])
    assert emb.lookup(images)[1].all()


def test_select_ranks_models_like_tl_select(reviews_csv, cache):
    (d,) = tl.select([str(reviews_csv)], [MODEL, "all-minilm-l6-v2"], limit=120, folds=3, cache_dir=cache)
    assert d["rows"] == 120 and d["classes"] == 2
    assert [c["backbone"] for c in d["candidates"]] == [MODEL, "all-minilm-l6-v2"]
    for c in d["candidates"]:
        assert 0.5 < c["cv_accuracy"] <= 1.0
        assert all(isinstance(s, float) for s in c["scores"][:3])
    assert {p["pick"] for p in d["picks"]} <= {MODEL, "all-minilm-l6-v2"}
    # The no-pretraining baseline under the same cross-validation.
    assert d["baseline"]["name"] == "tfidf"
    assert 0.5 < d["baseline"]["cv_accuracy"] <= 1.0


def test_run_experiment_returns_and_writes_the_report(reviews_csv, cache, tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text(
        f'name = "tiny"\ndataset = "{reviews_csv}"\nbackbones = ["{MODEL}"]\n'
        'baseline = "tfidf"\nprotocol = { kind = "cv", folds = 3 }\n'
    )
    out = tmp_path / "report"
    report = tl.run_experiment(exp, out_dir=out, cache_dir=cache, verbose=False)
    assert json.loads((out / "report.json").read_text()) == report
    (c,) = report["comparisons"]
    assert MODEL in c["verdict"] and "tfidf" in c["verdict"]
    assert (out / "summary.md").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nfolds = 5\n')
    with pytest.raises(tl.TransferLearningError, match="bad.toml"):
        tl.run_experiment(bad, cache_dir=cache, verbose=False)


def test_the_readme_snippet_runs_in_a_fresh_interpreter(cache):
    snippet = f"""
import transfer_learning as tl
emb = tl.TextEmbedder("{MODEL}", cache_dir=r"{cache}")
clf = tl.Classifier.fit(emb.embed(["loved it", "great fun", "awful", "a waste"]), ["pos", "pos", "neg", "neg"])
print(clf.predict(emb.embed(["what a great film", "awful and dull"])))
"""
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['pos', 'neg']"
