//! The built-in datasets load with the counts SOURCES.md publishes. Needs
//! `cargo xtask fetch` (run by `cargo xtask test`).

use std::time::Instant;

use tl_assets::{Cache, Registry};
use tl_data::{Item, load_builtin};

fn load(name: &str) -> tl_data::Dataset {
    let r = Registry::builtin().unwrap();
    load_builtin(r.get(name).unwrap(), &Cache::from_env()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn twenty_newsgroups() {
    let t = Instant::now();
    let ds = load("20newsgroups");
    eprintln!("20newsgroups loaded in {:.3}s", t.elapsed().as_secs_f64());
    assert_eq!(ds.split("train").unwrap().len(), 11_293);
    assert_eq!(ds.split("test").unwrap().len(), 7_528);
    assert_eq!(ds.n_classes(), 20);
    assert_eq!(ds.label_names[0], "alt.atheism");
    assert_eq!(ds.label_names[19], "talk.religion.misc");
    let Item::Text(first) = &ds.items[0] else {
        panic!()
    };
    assert!(
        first.starts_with("alt atheism faq atheist resources"),
        "{first:.40}"
    );
}

#[test]
fn sentiment_domains() {
    for d in ["amazon", "imdb", "yelp"] {
        let ds = load(&format!("sentiment-{d}"));
        assert_eq!(ds.len(), 1000, "{d}: the trailing blank record is dropped");
        assert_eq!(ds.class_counts(ds.split("all").unwrap()), [500, 500]);
        assert_eq!(ds.label_names, ["negative", "positive"]);
        assert!(ds.domains.as_ref().unwrap().iter().all(|x| x == d));
    }
    let amazon = load("sentiment-amazon");
    assert_eq!(
        amazon.items[0],
        Item::Text(
            "So there is no way for me to plug it in here in the US unless I go by a converter."
                .into()
        )
    );
    assert_eq!(amazon.labels[..2], [0, 1]);
}

#[test]
fn mnist_and_optdigits() {
    let m = load("mnist");
    assert_eq!(m.split("train").unwrap().len(), 60_000);
    assert_eq!(m.split("test").unwrap().len(), 10_000);
    let train = m.split("train").unwrap();
    let first: Vec<usize> = train[..5].iter().map(|&i| m.labels[i]).collect();
    assert_eq!(first, [5, 0, 4, 1, 9]);
    let Item::Pixels(p) = &m.items[0] else {
        panic!()
    };
    assert_eq!(
        (p.width, p.height, p.channels, p.data.len()),
        (28, 28, 1, 784)
    );

    let d = load("optdigits");
    assert_eq!(d.len(), 1_797);
    assert_eq!(d.n_classes(), 10);
    assert_eq!(d.labels[..3], [0, 1, 2]);
    let Item::Pixels(p) = &d.items[0] else {
        panic!()
    };
    // First sklearn digit, row 0: 0 0 5 13 9 1 0 0 (scaled from 0..16 to 0..255).
    assert_eq!(p.data[..8], [0, 0, 80, 207, 143, 16, 0, 0]);
}

#[test]
fn imagenet_sanity() {
    let s = load("imagenet-sanity");
    assert_eq!(s.len(), 23);
    let names: Vec<&str> = s.label_names.iter().map(String::as_str).collect();
    assert!(
        names.contains(&"coffee") && names.contains(&"609"),
        "{names:?}"
    );
}

#[test]
fn summary_describes_the_data() {
    let s = load("sentiment-yelp").summary();
    let text = s.to_string();
    assert!(
        text.contains("dataset sentiment-yelp: 1000 items, 2 classes"),
        "{text}"
    );
    assert!(text.contains("negative") && text.contains("500"), "{text}");
    assert!(text.contains("text length (characters)"), "{text}");
    let m = load("optdigits").summary().to_string();
    assert!(m.contains("images 8x8: 1797"), "{m}");
}

#[test]
fn a_manifest_split_with_the_wrong_number_of_files_is_an_error_not_a_panic() {
    // An IDX split needs two files (images, labels); the loader used to index `files[1]`.
    let text = r#"name = "one-file"
kind = "dataset"
description = "d"
licence = "MIT"
attribution = "a"
[[files]]
path = "images.idx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[files.sources]]
type = "url"
url = "http://127.0.0.1:9/images.idx"
[dataset]
format = "idx"
[dataset.splits]
train = ["images.idx"]
"#;
    let m = tl_assets::Manifest::parse("one-file.toml", text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let e = load_builtin(&m, &cache).unwrap_err().to_string();
    assert!(
        e.contains("dataset.splits.train") && e.contains("two (images, then labels)"),
        "{e}"
    );
}
