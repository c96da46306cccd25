//! Experiment files and the runner on small data without a backbone (TF-IDF and raw pixels),
//! so every protocol is exercised quickly; bad experiment files name the key and line.

use std::path::Path;

use tl_assets::{Cache, Registry};
use tl_eval::{AdaptationExperiment, Experiment, Protocol, run, write_report};

fn parse(text: &str) -> Result<Experiment, String> {
    Experiment::from_toml(text, Path::new("exp.toml")).map_err(|e| e.to_string())
}

#[test]
fn defaults_and_every_shipped_experiment_parse() {
    let e = parse("name = \"x\"\ndataset = \"sentiment\"\nbackbones = [\"all-minilm-l6-v2\"]\n[protocol]\nkind = \"cv\"\n").unwrap();
    assert_eq!(e.protocol, Protocol::Cv { folds: 10 });
    assert_eq!(e.heads.len(), 1);
    assert_eq!(e.bootstrap, 1000);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        // experiments/ also holds scripts (finetune-sentiment.sh); the experiment files are TOML.
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if AdaptationExperiment::is_adaptation(&text) {
            let a = AdaptationExperiment::from_toml(&text, &p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.methods.len(), 4, "{}", p.display());
        } else {
            Experiment::load(&p).unwrap_or_else(|e| panic!("{e}"));
        }
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn bad_adaptation_files_name_the_problem() {
    let ok = "name = \"a\"\nbackbones = [\"m\"]\npairs = [{ source = \"s\", target = \"t\" }]\n";
    let a = AdaptationExperiment::from_toml(ok, Path::new("a.toml")).unwrap();
    assert_eq!(a.methods.len(), 4);
    assert_eq!(a.bound_folds, 10);
    let cases = [
        (
            format!("{ok}[[methods]]\nmethod = \"magic\"\n"),
            &["line 5", "magic"][..],
        ),
        (
            format!("bootstrap = 1000000000000\n{ok}"),
            &["bootstrap", "at most 100000"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"coral\"\neps_scale = [0]\n"),
            &["methods[0]", "coral(eps_scale=0)"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"coral\"\neps_scale = []\n"),
            &["methods[0]", "at least one value"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"subspace\"\ndims = [0]\n"),
            &["subspace(dims=0)"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"importance\"\nc = [1]\nclip = 1\n"),
            &["clip"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"coral\"\neps = [1]\n"),
            &["unknown field `eps`"],
        ),
        (format!("{ok}bound_folds = 1\n"), &["bound_folds"]),
        (
            format!("{ok}validation_fraction = 1.5\n"),
            &["validation_fraction"],
        ),
        (
            format!("{ok}[head]\nkind = \"knn\"\n"),
            &["importance weighting needs a head"],
        ),
        (
            "name = \"a\"\nbackbones = [\"m\"]\npairs = [{ source = \"s\", target = \"s\" }]\n"
                .to_string(),
            &["pairs[0]", "both `s`"],
        ),
        (
            "name = \"a\"\nbackbones = []\npairs = [{ source = \"s\", target = \"t\" }]\n"
                .to_string(),
            &["backbones"],
        ),
    ];
    for (text, wanted) in cases {
        let e = AdaptationExperiment::from_toml(&text, Path::new("a.toml"))
            .expect_err(&text)
            .to_string();
        assert!(e.starts_with("a.toml"), "{e}");
        for w in wanted {
            assert!(e.contains(w), "{w:?} not in {e:?} for\n{text}");
        }
    }
}

#[test]
fn bad_experiment_files_name_the_key_and_line() {
    let cases = [
        (
            "name = \"x\"\ndataset = \"d\"\nbackbone = [\"m\"]\n[protocol]\nkind = \"cv\"\n",
            &["line 3", "unknown field `backbone`"][..],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"kfold\"\n",
            &["line 5", "kfold"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\nfolds = \"ten\"\n",
            &["line 6", "folds"],
        ),
        (
            "name = \"x\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n",
            &["missing field `dataset`"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[[heads]]\nkind = \"logistic\"\nC = 1.0\n[protocol]\nkind = \"cv\"\n",
            &["line 4", "[[heads]]", "unknown field `C`"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[[heads]]\nkind = \"logistic\"\nc = -1.0\n[protocol]\nkind = \"cv\"\n",
            &["heads", "c must be a positive"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\nfolds = 1\n",
            &["protocol.folds", "at least 2"],
        ),
        (
            "name = \"a b\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n",
            &["name \"a b\""],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbaseline = \"none\"\n[protocol]\nkind = \"cv\"\n",
            &["nothing to evaluate"],
        ),
        // Unbounded numbers are refused before any work (they aborted after the results).
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\nbootstrap = 1000000000000\n[protocol]\nkind = \"cv\"\n",
            &["bootstrap", "at most 100000"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[few_shot]\nshots = [1]\nrepeats = 1000000000000\n",
            &["few_shot.repeats", "at most 1000"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\nbatch_size = 100000\n[protocol]\nkind = \"cv\"\n",
            &["batch_size", "1..=4096"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"holdout\"\ntest_fraction = 1.5\n",
            &["test_fraction"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[few_shot]\nshots = []\n",
            &["few_shot"],
        ),
        ("name = \"x\"\ndataset = [\"d\"\n", &["line 2"]),
    ];
    for (text, wants) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with("exp.toml: "), "{e}");
        for w in wants {
            assert!(e.contains(w), "expected {w:?} in: {e}");
        }
    }
}

fn write_table(dir: &Path) -> std::path::PathBuf {
    // Two classes told apart by their words; enough rows for 5-fold CV.
    let mut csv = String::from("text,label\n");
    let good = ["great", "excellent", "love", "perfect", "wonderful"];
    let bad = ["awful", "broken", "hate", "terrible", "refund"];
    for i in 0..60 {
        let (w, l) = if i % 2 == 0 {
            (good, "pos")
        } else {
            (bad, "neg")
        };
        csv.push_str(&format!(
            "this phone is {} and {} overall item {i},{l}\n",
            w[i % 5],
            w[(i / 5) % 5]
        ));
    }
    let p = dir.join("reviews.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

#[test]
fn tfidf_only_experiment_runs_every_protocol_and_writes_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let registry = Registry::builtin().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    for protocol in [
        "kind = \"cv\"\nfolds = 5",
        "kind = \"holdout\"\ntest_fraction = 0.25",
    ] {
        let text = format!(
            "name = \"t\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 200\n[[heads]]\nkind = \"logistic\"\n[[heads]]\nkind = \"knn\"\nk = 3\n[protocol]\n{protocol}\n[few_shot]\nshots = [1, 4, 0]\nrepeats = 3\n",
            table.to_str().unwrap()
        );
        let exp = parse(&text).unwrap();
        let notes = std::sync::Mutex::new(Vec::new());
        let report = run(&exp, &registry, &cache, false, &|l: &str| {
            notes.lock().unwrap().push(l.to_string())
        })
        .unwrap();
        assert_eq!(report.results.len(), 2);
        for r in &report.results {
            assert!(
                r.accuracy.estimate > 0.9,
                "{}: {}",
                r.head,
                r.accuracy.estimate
            );
            assert!(
                r.accuracy.low <= r.accuracy.estimate && r.accuracy.estimate <= r.accuracy.high
            );
            assert_eq!(r.metrics.n, report.test_rows);
        }
        assert!(report.comparisons.is_empty(), "no backbone to compare");
        assert_eq!(report.few_shot.len(), 3);
        let out = dir.path().join("report");
        let files = write_report(&report, &out).unwrap();
        assert!(files.iter().any(|f| f.ends_with("learning_curve.svg")));
        for png in ["learning_curve.png", "confusion_tfidf.png"] {
            let img = image::open(out.join(png)).unwrap();
            assert!(img.width() > 100 && img.height() > 100, "{png}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["schema_version"], 1);
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(md.contains("| tfidf | knn |"), "{md}");
        let svg = std::fs::read_to_string(out.join("confusion_tfidf.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}

#[test]
fn bad_settings_for_the_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let registry = Registry::builtin().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    let quiet = |_: &str| {};
    let exp = parse(&format!(
        "name = \"t\"\ndataset = {:?}\nbaseline = \"raw-pixels\"\n[protocol]\nkind = \"cv\"\n",
        table.to_str().unwrap()
    ))
    .unwrap();
    let e = run(&exp, &registry, &cache, false, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("raw-pixels baseline on a text dataset"), "{e}");
    let exp = parse(&format!(
        "name = \"t\"\ndataset = {:?}\n[protocol]\nkind = \"split\"\n",
        table.to_str().unwrap()
    ))
    .unwrap();
    let e = run(&exp, &registry, &cache, false, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train"), "{e}");
    let exp =
        parse("name = \"t\"\ndataset = \"no-such-set\"\n[protocol]\nkind = \"cv\"\n").unwrap();
    let e = run(&exp, &registry, &cache, false, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither a file nor a known dataset"), "{e}");
}
