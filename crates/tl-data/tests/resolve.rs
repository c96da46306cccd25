//! A dataset argument is a path or a built-in name by one rule, and names what is wrong.

use tl_assets::{Cache, Registry};
use tl_data::{DatasetSource, dataset_source};

#[test]
fn a_path_must_look_like_one_and_a_bare_word_is_a_built_in() {
    let p = |s: &'static str| DatasetSource::Path(std::path::Path::new(s));
    assert_eq!(
        dataset_source("optdigits"),
        DatasetSource::Builtin("optdigits")
    );
    assert_eq!(
        dataset_source("sentiment-imdb"),
        DatasetSource::Builtin("sentiment-imdb")
    );
    assert_eq!(dataset_source("./optdigits"), p("./optdigits"));
    assert_eq!(dataset_source("data/optdigits"), p("data/optdigits"));
    assert_eq!(dataset_source("reviews.csv"), p("reviews.csv"));
    assert_eq!(dataset_source(".hidden"), p(".hidden"));
    assert_eq!(
        dataset_source("builtin:mnist"),
        DatasetSource::Builtin("mnist")
    );
    // A path that does not exist is not looked up as a built-in (and the reverse).
    let registry = Registry::builtin().unwrap();
    let cache = Cache::at(tempfile::tempdir().unwrap().path().join("c"));
    let table = tl_data::TableSettings::default();
    let e = tl_data::load_dataset(&registry, &cache, "./optdigits", &table)
        .unwrap_err()
        .to_string();
    assert!(e.contains("./optdigits: no such file or folder"), "{e}");
    let e = tl_data::load_dataset(&registry, &cache, "reviewz", &table)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a path needs a '/' or an extension"), "{e}");
}
