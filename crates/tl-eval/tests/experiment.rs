//! Experiment files and the runner on small data without a backbone (TF-IDF and raw pixels),
//! so every protocol is exercised quickly; bad experiment files name the key and line.

use std::path::Path;

use tl_assets::{Cache, Registry};
use tl_eval::{AdaptationExperiment, Experiment, Protocol, chosen_phrase, run, write_report};

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
            // The four feature-level methods, then the model-level ones a file adds.
            let kinds: Vec<&str> = a.methods.iter().map(|m| m.kind()).collect();
            assert!(
                kinds.starts_with(&["standardize", "coral", "subspace", "importance"]),
                "{}: {kinds:?}",
                p.display()
            );
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
        (
            format!("{ok}[[methods]]\nmethod = \"dann\"\nlambda = [-1]\n"),
            &[
                "methods[0]",
                "dann(lambda=-1, lr=default, epochs=2)",
                "lambda in [0, 10]",
            ],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"dann\"\nlambda = [0.1]\nepochs = 0\n"),
            &["methods[0]", "epochs=0"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"dann\"\nlambda = [1]\nresolution = 4\n"),
            &["methods[0]", "px=4", "resolution 8..=1024"],
        ),
        (
            format!(
                "{ok}[[methods]]\nmethod = \"simcse\"\nlearning_rate = [3e-5]\ntemperature = 2\n"
            ),
            &["methods[0]", "t=2"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"simcse\"\nlearning_rate = []\n"),
            &["methods[0] (simcse)", "at least one value"],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"simcse\"\nlr = [3e-5]\n"),
            &[
                "line 4",
                "unknown field `lr`",
                "expected one of `learning_rate`",
            ],
        ),
        (
            format!("{ok}[[methods]]\nmethod = \"adabn\"\nmomentum = 0.1\n"),
            &["unknown field `momentum`"],
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
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[search]\nfolds = 1\n",
            &["line 5", "search.folds", "at least 2"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[search]\nc = []\n",
            &["line 5", "search.c", "at least one value"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[search]\nk = [3, 4.5]\n",
            &["line 5", "search.k", "whole numbers, got 4.5"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[search]\nalpha = [-1.0]\n",
            &["line 5", "search.alpha", "positive, got -1"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[protocol]\nkind = \"cv\"\n[search]\nC = [1.0]\n",
            &["line 6", "unknown field `C`", "`c`, `alpha`, `k`"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\n[[heads]]\nkind = \"logistic\"\n[[heads]]\nkind = \"logistic\"\nc = 10.0\n[protocol]\nkind = \"cv\"\n",
            &[
                "logistic C=1 and logistic C=10 differ only in c",
                "search.enabled = false",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nlr = 1e-4\n",
            &["line 8", "unknown field `lr`", "`learning_rate`"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nstrategy = \"top\"\n",
            &["line 8", "strategy `top`", "top:N"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nlearning_rate = -1.0\n",
            &["line 6", "finetune (m)", "learning_rate"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nepochs = 0\n",
            &["line 6", "finetune (m)", "epochs"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nmax_length = 128\nresolution = 64\n",
            &[
                "line 6",
                "max_length is for text models and resolution for image models",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nhead = { kind = \"knn\" }\n",
            &[
                "line 6",
                "finetune.head applies to strategy = \"contrastive\"",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nfew_shot = \"sometimes\"\n",
            &["line 8", "sometimes", "`also`, `skip`, `only`"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"other\"\n",
            &["line 6, [[finetune]] #1: backbone other must also be in backbones"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\n[[finetune]]\nbackbone = \"m\"\nlearning_rate = 1e-4\n",
            &[
                "line 8, [[finetune]] #2: two tables are both named \"m tuned full\"",
                "name = ",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nfew_shot = \"only\"\n",
            &[
                "line 6, [[finetune]] #1",
                "few_shot = \"only\" but the experiment has no [few_shot] table",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nname = \"m\"\n",
            &["line 6, [[finetune]] #1: name \"m\" is already a system's name"],
        ),
        // A fine-tuning search: each bad key named, with the table's line.
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nsearch = { learning_rate = [1e-5, 2.0] }\n",
            &[
                "line 6",
                "finetune (m): search: learning_rate values must be in (0, 1], got 2",
            ],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nsearch = { learning_rate = [1e-5], rate = 3 }\n",
            &["line 8", "unknown field `rate`", "learning_rate"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nsearch = { epochs = [2] }\n",
            &["line 6", "search: nothing to search"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nstrategy = \"contrastive\"\nsearch = { epochs = [1, 2] }\n",
            &["line 6", "search applies to full, top:N and head"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nvalidation_fraction = 0.0\nsearch = { epochs = [1, 2] }\n",
            &["line 6", "set validation_fraction > 0"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nsearch = { epochs = [1, 2], eta = 1 }\n",
            &["line 6", "eta must be in 2..=10, got 1"],
        ),
        (
            "name = \"x\"\ndataset = \"d\"\nbackbones = [\"m\"]\n[protocol]\nkind = \"cv\"\n[[finetune]]\nbackbone = \"m\"\nsearch = { strategy = [\"full\", \"top\"] }\n",
            &["line 8", "strategy `top`"],
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
            "name = \"t\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 200\n[[heads]]\nkind = \"logistic\"\n[[heads]]\nkind = \"knn\"\nk = 3\n[[heads]]\nkind = \"logistic\"\nc = 10.0\n[search]\nenabled = false\n[protocol]\n{protocol}\n[few_shot]\nshots = [1, 4, 0]\nrepeats = 3\n",
            table.to_str().unwrap()
        );
        let exp = parse(&text).unwrap();
        let notes = std::sync::Mutex::new(Vec::new());
        let report = run(&exp, &registry, &cache, false, &|l: &str| {
            notes.lock().unwrap().push(l.to_string())
        })
        .unwrap();
        // Two logistic heads are told apart by their C everywhere; the lone knn keeps its kind.
        let heads: Vec<&str> = report.results.iter().map(|r| r.head.as_str()).collect();
        assert_eq!(heads, ["logistic C=1", "knn", "logistic C=10"]);
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
        // One confusion heatmap per result, the head in its name and title.
        for head in ["logistic_C_1", "knn", "logistic_C_10"] {
            assert!(
                files
                    .iter()
                    .any(|f| f.ends_with(format!("confusion_tfidf_{head}.png")))
            );
        }
        let svg = std::fs::read_to_string(out.join("confusion_tfidf_logistic_C_10.svg")).unwrap();
        assert!(
            svg.contains("Confusion matrix: tfidf / logistic C=10"),
            "{svg}"
        );
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
        assert!(csv.contains("\ntfidf,logistic C=10,"), "{csv}");
        for png in ["learning_curve.png", "confusion_tfidf_knn.png"] {
            // Each PNG is its SVG drawn at twice the size, text included: the title band
            // (the top 30 SVG units) carries ink, as it did not when PNGs had no font.
            let img = image::open(out.join(png)).unwrap().to_rgb8();
            let svg = std::fs::read_to_string(out.join(png.replace(".png", ".svg"))).unwrap();
            let attr = |name: &str| -> u32 {
                let at = svg.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let v = &svg[at..at + svg[at..].find('"').unwrap()];
                v.parse::<f64>().unwrap().ceil() as u32
            };
            assert_eq!(
                img.dimensions(),
                (2 * attr("width"), 2 * attr("height")),
                "{png}"
            );
            let title_ink = (0..60)
                .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
                .count();
            assert!(
                title_ink > 300,
                "{png}: the title is drawn ({title_ink} dark pixels)"
            );
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["schema_version"], 2);
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(md.contains("| tfidf | knn |"), "{md}");
        let svg = std::fs::read_to_string(out.join("confusion_tfidf_knn.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}

#[test]
fn the_nested_search_chooses_per_training_part_on_one_grid_for_every_system() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let registry = Registry::builtin().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    // Search on by default, with a single C value on the grid.
    let text = format!(
        "name = \"n\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 100\n[[heads]]\nkind = \"logistic\"\n[[heads]]\nkind = \"knn\"\n[search]\nfolds = 3\nc = [0.000001]\n[protocol]\nkind = \"cv\"\nfolds = 4\n",
        table.to_str().unwrap()
    );
    let exp = parse(&text).unwrap();
    assert!(exp.search.enabled);
    let notes = std::sync::Mutex::new(Vec::new());
    let report = run(&exp, &registry, &cache, false, &|l: &str| {
        notes.lock().unwrap().push(l.to_string())
    })
    .unwrap();
    let logistic = &report.results[0];
    let folds: Vec<usize> = logistic.chosen.iter().map(|c| c.fold).collect();
    assert_eq!(folds, [1, 2, 3, 4], "one choice per training part");
    assert!(logistic.chosen.iter().all(|c| c.param == "c"));
    // A single grid value is always extended (x10), at most twice.
    assert!(
        logistic
            .chosen
            .iter()
            .all(|c| [1e-6, 1e-5, 1e-4].contains(&c.value)),
        "{:?}",
        logistic.chosen
    );
    let edges = logistic.chosen.iter().filter(|c| c.edge.is_some()).count();
    assert_eq!(logistic.warnings.len(), edges, "{:?}", logistic.warnings);
    let knn = &report.results[1];
    assert_eq!(knn.chosen.len(), 4);
    assert!(
        knn.chosen.iter().all(|c| c.param == "k"),
        "{:?}",
        knn.chosen
    );
    let phrase = chosen_phrase(&logistic.chosen).unwrap();
    assert!(phrase.starts_with("c = "), "{phrase}");
    let notes = notes.into_inner().unwrap();
    assert!(
        notes
            .iter()
            .any(|l| l.starts_with("search    tfidf") && l.ends_with(&phrase)),
        "{notes:?}"
    );
    let out = dir.path().join("report");
    write_report(&report, &out).unwrap();
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("chosen by 3-fold cross-validation inside each training part"),
        "{md}"
    );
    assert!(
        md.contains(&format!("- tfidf / logistic: {phrase}")),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",chosen,peak_rss_mb"),
        "{csv}"
    );
    assert!(csv.contains(&phrase), "{csv}");
    // Turned off, the heads are fitted as written and nothing is chosen.
    let off = parse(&text.replace("[search]\n", "[search]\nenabled = false\n")).unwrap();
    let report = run(&off, &registry, &cache, false, &|_: &str| {}).unwrap();
    assert!(report.results.iter().all(|r| r.chosen.is_empty()));
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

/// A folder of dark and bright images of several sizes (the raw-pixels baseline's resize path).
fn dark_and_bright(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("shades");
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        (state >> 56) as u8
    };
    for (class, base) in [("dark", 10u8), ("bright", 180u8)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..20u32 {
            let (w, h) = (20 + i % 7, 24 + i % 5);
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                let v = base + next() % 60;
                image::Rgb([v, v.saturating_sub(5), v])
            });
            img.save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    root
}

#[test]
fn the_raw_pixels_baseline_tells_dark_from_bright_images() {
    // The raw-pixels baseline on image files used to feed 0..255 (documented as [0, 1]): on
    // this folder it scored chance.
    let dir = tempfile::tempdir().unwrap();
    let root = dark_and_bright(dir.path());
    let exp = parse(&format!(
        "name = \"shades\"\ndataset = {:?}\nbaseline = \"raw-pixels\"\nbootstrap = 100\n[protocol]\nkind = \"cv\"\nfolds = 4\n",
        root.to_str().unwrap()
    ))
    .unwrap();
    let report = run(
        &exp,
        &Registry::builtin().unwrap(),
        &Cache::at(dir.path().join("cache")),
        false,
        &|_: &str| {},
    )
    .unwrap();
    assert_eq!(report.results[0].system, "raw-pixels");
    assert_eq!(report.systems[0].dim, 32 * 32 * 3);
    assert!(
        report.results[0].accuracy.estimate >= 0.95,
        "{}",
        report.results[0].accuracy.estimate
    );
    // The summary does not say "shades on shades".
    let out = dir.path().join("report");
    write_report(&report, &out).unwrap();
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.starts_with("# shades\n"), "{}", &md[..40]);
}

#[test]
fn degenerate_settings_are_refused_before_or_instead_of_a_meaningless_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let head = format!(
        "name = \"t\"\ndataset = {:?}\nbaseline = \"tfidf\"\n",
        table.to_str().unwrap()
    );
    let cases: &[(&str, &str)] = &[
        (
            "backbones = [\"a\", \"b\", \"a\"]\n[protocol]\nkind = \"cv\"\n",
            "\"a\" is listed twice",
        ),
        (
            "[tfidf]\nmax_features = 0\n[protocol]\nkind = \"cv\"\n",
            "tfidf.max_features: 0",
        ),
        (
            "[subsample]\ntrain = 0\n[protocol]\nkind = \"cv\"\n",
            "subsample.train: 0 rows",
        ),
        (
            "[subsample]\ntest = 5\n[protocol]\nkind = \"cv\"\n",
            "subsample.test applies to",
        ),
    ];
    for (body, want) in cases {
        let e = parse(&format!("{head}{body}")).unwrap_err();
        assert!(e.contains(want), "{body}: {e}");
    }
    let registry = Registry::builtin().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    let run_err = |body: &str| {
        let exp = parse(&format!("{head}bootstrap = 50\n{body}")).unwrap();
        run(&exp, &registry, &cache, false, &|_: &str| {})
            .unwrap_err()
            .to_string()
    };
    // No term in min_df documents: the baseline would be a constant.
    let e = run_err("[tfidf]\nmin_df = 1000\n[protocol]\nkind = \"cv\"\nfolds = 3\n");
    assert!(e.contains("no term is in at least min_df = 1000"), "{e}");
    // k above every class: every draw is the whole pool.
    let e = run_err(
        "[protocol]\nkind = \"cv\"\nfolds = 3\n[few_shot]\nshots = [2, 500]\nrepeats = 2\n",
    );
    assert!(e.contains("k = 500 is not below any class"), "{e}");
    // A struct built in code goes through the same checks.
    let mut exp = parse(&format!("{head}[protocol]\nkind = \"cv\"\n")).unwrap();
    exp.heads.clear();
    let e = run(&exp, &registry, &cache, false, &|_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one head"), "{e}");
}

#[test]
fn a_head_that_stopped_early_is_named_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let exp = parse(&format!(
        "name = \"w\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 50\n[[heads]]\nkind = \"logistic\"\nmax_iter = 1\n[protocol]\nkind = \"cv\"\nfolds = 3\n",
        table.to_str().unwrap()
    ))
    .unwrap();
    let notes = std::sync::Mutex::new(Vec::new());
    let report = run(
        &exp,
        &Registry::builtin().unwrap(),
        &Cache::at(dir.path().join("cache")),
        false,
        &|l: &str| notes.lock().unwrap().push(l.to_string()),
    )
    .unwrap();
    let r = &report.results[0];
    assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
    assert!(r.warnings[0].starts_with("fold 1: logistic regression did not converge"));
    assert!(
        notes
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("warning   tfidf logistic: 3 of 3 fits"))
    );
    let out = dir.path().join("report");
    write_report(&report, &out).unwrap();
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("**Warnings**") && md.contains("- tfidf / logistic: 3 fits"),
        "{md}"
    );
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(json.contains("did not converge"));
}

#[test]
fn remembered_fits_give_what_fitting_gives_and_change_with_what_they_depend_on() {
    let dir = tempfile::tempdir().unwrap();
    let table = write_table(dir.path());
    let registry = Registry::builtin().unwrap();
    let file = |c: f64| {
        format!(
            "name = \"t\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 200\n[[heads]]\nkind = \"logistic\"\nc = {c:?}\n[search]\nfolds = 3\nc = [0.1, 1.0]\n[protocol]\nkind = \"cv\"\nfolds = 5\n[few_shot]\nshots = [1, 4]\nrepeats = 2\n",
            table.to_str().unwrap()
        )
    };
    let go = |cache: &Cache, c: f64| {
        let notes = std::sync::Mutex::new(Vec::new());
        let report = run(
            &parse(&file(c)).unwrap(),
            &registry,
            cache,
            false,
            &|l: &str| notes.lock().unwrap().push(l.to_string()),
        )
        .unwrap();
        let remembered = notes
            .into_inner()
            .unwrap()
            .into_iter()
            .find(|l| l.starts_with("fits "));
        (report, remembered)
    };
    // What a report says, less the time it took.
    let said = |r: &tl_eval::RunReport| {
        let mut v = serde_json::to_value(&r.results).unwrap();
        for x in v.as_array_mut().unwrap() {
            x.as_object_mut().unwrap().remove("fit_seconds");
        }
        (
            v,
            r.results
                .iter()
                .map(|x| x.predictions.clone())
                .collect::<Vec<_>>(),
            serde_json::to_value(&r.few_shot).unwrap(),
        )
    };
    let cache = Cache::at(dir.path().join("cache"));
    let (first, note) = go(&cache, 1.0);
    assert_eq!(note, None, "nothing to remember on a first run");
    let (second, note) = go(&cache, 1.0);
    assert_eq!(said(&first), said(&second));
    // 5 protocol folds + 2 shots x 2 draws.
    assert!(
        note.as_deref()
            .is_some_and(|n| n.contains("9 of 9 head fits remembered")),
        "{note:?}"
    );
    // Another C for the head: nothing remembered applies.
    let (_, note) = go(&cache, 10.0);
    assert_eq!(note, None);
    // Damaged files are fitted again, with the same outcome, and rewritten.
    let fits = dir.path().join("cache/features/.fits");
    let mut damaged = 0;
    for sub in std::fs::read_dir(&fits).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 18, "one file per fit of the two files");
    let (third, note) = go(&cache, 1.0);
    assert_eq!(note, None, "every damaged file is a miss");
    assert_eq!(said(&first), said(&third));
    assert!(go(&cache, 1.0).1.is_some_and(|n| n.contains("9 of 9")));
    // A changed label changes the fits whose training rows hold it: the run with remembered
    // fits says exactly what a run from an empty cache says.
    let text = std::fs::read_to_string(&table).unwrap();
    std::fs::write(&table, text.replacen(",pos\n", ",neg\n", 1)).unwrap();
    let (changed, note) = go(&cache, 1.0);
    let (fresh, _) = go(&Cache::at(dir.path().join("other")), 1.0);
    assert_eq!(said(&changed), said(&fresh));
    assert!(
        !note.as_deref().is_some_and(|n| n.contains("9 of 9")),
        "{note:?}"
    );
}
