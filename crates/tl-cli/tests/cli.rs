//! The real `tl` binary on small data: output, exit codes, bad arguments.

use std::process::Command;

/// Links every fetched asset of the workspace cache (and its downloads, helper virtualenv
/// and tools) into `home`, one link per asset, so a test's `TL_HOME` has the models and
/// data without a download while its feature store, locks, manifests and any model a test
/// exports stay its own.
fn link_assets(home: &std::path::Path) {
    let shared = tl_assets::Cache::from_env();
    for kind in ["runtime", "models", "datasets"] {
        std::fs::create_dir_all(home.join(kind)).unwrap();
        let Ok(entries) = std::fs::read_dir(shared.root().join(kind)) else {
            continue;
        };
        for e in entries.flatten() {
            let link = home.join(kind).join(e.file_name());
            if std::fs::symlink_metadata(&link).is_err() {
                let _ = std::os::unix::fs::symlink(e.path(), &link);
            }
        }
    }
    for d in ["downloads", "venv", "tools"] {
        let link = home.join(d);
        if shared.root().join(d).exists() && std::fs::symlink_metadata(&link).is_err() {
            let _ = std::os::unix::fs::symlink(shared.root().join(d), &link);
        }
    }
}

/// The `TL_HOME` of this test binary: its own folder under cargo's target/tmp, so the CLI
/// tests never write into the workspace cache (features, stamps, locks).
fn test_home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let home = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tl-cli-home");
        std::fs::create_dir_all(&home).unwrap();
        link_assets(&home);
        home
    })
}

/// `tl` with this binary's test home.
fn tl_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tl"));
    c.env("TL_HOME", test_home());
    c
}

fn tl(args: &[&str]) -> (i32, String, String) {
    let out = tl_cmd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn data_info_on_a_user_table() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("reviews.csv");
    std::fs::write(&p, "review,stars\ngood,5\nbad,1\ngreat,5\n").unwrap();
    let (code, out, err) = tl(&[
        "data",
        "info",
        p.to_str().unwrap(),
        "--text-column",
        "review",
        "--label-column",
        "stars",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dataset reviews: 3 items, 2 classes"), "{out}");
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.csv");
    std::fs::write(&p, "text,label\na,1\nb,2,3\n").unwrap();
    let (code, _, err) = tl(&["data", "info", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("r.csv:line 3") && err.contains("3 fields"),
        "{err}"
    );

    let (code, _, err) = tl(&["data", "info", "no-such-dataset"]);
    assert_eq!(code, 2, "an unknown dataset name is a bad argument");
    assert!(
        err.contains("neither a file nor a known dataset") && err.contains("20newsgroups"),
        "{err}"
    );

    let (code, _, err) = tl(&["embed", "--batch-size", "many"]);
    assert_eq!(code, 2, "clap usage errors exit 2");
    assert!(err.contains("--batch-size"), "{err}");

    let (code, _, err) = tl(&["embed", "--model", "mnist"]);
    assert_eq!(code, 2, "asking for a dataset as a model is a usage error");
    assert!(
        err.contains("mnist is a Dataset asset, not a model"),
        "{err}"
    );
}

#[test]
fn help_has_examples() {
    let (code, out, _) = tl(&["embed", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("tl embed --model"),
        "{out}"
    );
}

fn reviews(dir: &std::path::Path) -> std::path::PathBuf {
    let good = ["great", "excellent", "love it", "perfect", "wonderful"];
    let bad = ["awful", "broken", "hate it", "terrible", "want a refund"];
    let mut csv = String::from("text,label\n");
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 {
            (good, "pos")
        } else {
            (bad, "neg")
        };
        csv.push_str(&format!(
            "\"the blender is {}, {} (order {i})\",{l}\n",
            w[i % 5],
            w[(i / 5) % 5]
        ));
    }
    let p = dir.join("reviews.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

/// A target domain for `reviews`: 20 kettle reviews, same labels.
fn kettles(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("target.csv");
    let mut csv = String::from("text,label\n");
    for i in 0..20 {
        let (w, l) = if i % 2 == 0 {
            ("superb", "pos")
        } else {
            ("dreadful", "neg")
        };
        csv.push_str(&format!("\"a {w} kettle, number {i}\",{l}\n"));
    }
    std::fs::write(&p, csv).unwrap();
    p
}

#[test]
fn run_writes_a_report_and_rejects_bad_experiment_files() {
    let d = tempfile::tempdir().unwrap();
    let table = reviews(d.path());
    let exp = d.path().join("exp.toml");
    std::fs::write(
        &exp,
        format!(
            "name = \"small\"\ndataset = {:?}\nbaseline = \"tfidf\"\nbootstrap = 100\n[protocol]\nkind = \"cv\"\nfolds = 4\n",
            table.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = d.path().join("report");
    let (code, stdout, err) = tl(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("result    tfidf") && stdout.contains("summary.md"),
        "{stdout}"
    );
    assert!(out.join("report.json").is_file() && out.join("results.csv").is_file());

    std::fs::write(
        &exp,
        "name = \"x\"\ndataset = \"sentiment\"\n[protocol]\nkind = \"cv\"\nfolds = \"ten\"\n",
    )
    .unwrap();
    let (code, _, err) = tl(&["run", exp.to_str().unwrap()]);
    assert_eq!(code, 2, "an invalid experiment file is a usage error");
    assert!(
        err.contains("exp.toml") && err.contains("line 5") && err.contains("folds"),
        "{err}"
    );

    let (code, _, err) = tl(&["run", d.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn fit_predict_eval_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let table = reviews(d.path());
    let model = d.path().join("head.json");
    let (t, m) = (table.to_str().unwrap(), model.to_str().unwrap());
    let (code, out, err) = tl(&[
        "fit",
        "--dataset",
        t,
        "--head",
        "logistic",
        "--search",
        "--out",
        m,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("chosen    c =") && out.contains("saved"),
        "{out}"
    );

    let (code, out, err) = tl(&[
        "predict",
        "--classifier",
        m,
        "--text",
        "I love this blender, it is perfect",
        "--text",
        "broken and terrible, refund please",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "row,label,probability");
    assert!(
        lines[1].starts_with("0,pos,") && lines[2].starts_with("1,neg,"),
        "{out}"
    );

    let (code, out, err) = tl(&[
        "eval",
        "--classifier",
        m,
        "--dataset",
        t,
        "--bootstrap",
        "50",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accuracy  100.00%"), "{out}");

    // Features of another backbone: refused, not silently mispredicted.
    let (code, _, err) = tl(&[
        "predict",
        "--classifier",
        m,
        "--model",
        "paraphrase-minilm-l3-v2",
        "--text",
        "x",
    ]);
    assert_eq!(code, 2, "a wrong --model is a usage error");
    assert!(
        err.contains("was trained on all-minilm-l6-v2 (384-d), not on paraphrase-minilm-l3-v2")
            && err.contains("--model all-minilm-l6-v2"),
        "names, not hashes: {err}"
    );

    // A dataset whose labels the head never saw.
    let other = d.path().join("other.csv");
    std::fs::write(&other, "text,label\nfine,meh\nok,pos\n").unwrap();
    let (code, _, err) = tl(&[
        "eval",
        "--classifier",
        m,
        "--dataset",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("row 0: label `meh`"), "{err}");

    let (code, _, err) = tl(&["fit", "--dataset", t, "--head", "forest", "--out", m]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown head `forest`"), "{err}");
    let (code, _, err) = tl(&["fit", "--dataset", t]);
    assert_eq!(code, 2);
    assert!(err.contains("--out"), "{err}");
    let (code, _, err) = tl(&[
        "predict",
        "--classifier",
        d.path().join("nope.json").to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("nope.json"), "{err}");
}

#[test]
fn cache_info_and_export() {
    let d = tempfile::tempdir().unwrap();
    let table = reviews(d.path());
    let out = d.path().join("features.parquet");
    let (code, stdout, err) = tl(&[
        "cache",
        "export",
        "--dataset",
        table.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("exported 40 rows x 384 features"),
        "{stdout}"
    );
    assert!(out.is_file());
    let (code, stdout, err) = tl(&["cache", "info"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("all-minilm-l6-v2"), "{stdout}");
    let (code, _, err) = tl(&[
        "cache",
        "export",
        "--dataset",
        table.to_str().unwrap(),
        "--out",
        "x.xlsx",
    ]);
    assert_eq!(
        code, 2,
        "a bad --out is a usage error, found before any work"
    );
    assert!(err.contains("use .parquet or .csv"), "{err}");
}

#[test]
fn adapt_compares_methods_and_rejects_bad_pairs() {
    let d = tempfile::tempdir().unwrap();
    let source = reviews(d.path());
    let target = kettles(d.path());
    let (s, t) = (source.to_str().unwrap(), target.to_str().unwrap());
    let folder = d.path().join("adapt-report");
    let (code, out, err) = tl(&[
        "adapt",
        "--source",
        s,
        "--target",
        t,
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The folder holds what the console showed, through the one report writer.
    let summary = std::fs::read_to_string(folder.join("summary.md")).unwrap();
    assert!(
        out.contains(summary.trim()),
        "summary.md is the printed report"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["schema_version"], 1);
    let csv = std::fs::read_to_string(folder.join("results.csv")).unwrap();
    assert!(csv.starts_with("backbone,source,target,method,"), "{csv}");
    assert_eq!(
        csv.lines().count(),
        1 + json["pairs"][0]["methods"].as_array().unwrap().len(),
        "{csv}"
    );
    for line in [
        "| source-only |",
        "| standardize |",
        "| coral | coral(eps_scale=",
        "| subspace | subspace(dims=",
        "| importance | importance(c=",
        "| rv-selected |",
        "Target-supervised bound:",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    let (code, _, err) = tl(&[
        "adapt",
        "--source",
        s,
        "--target",
        t,
        "--methods",
        "coral,magic",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown method `magic`"), "{err}");
    let other = d.path().join("other.csv");
    std::fs::write(&other, "text,label\nfine,meh\nok,pos\n").unwrap();
    let (code, _, err) = tl(&["adapt", "--source", s, "--target", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("row 0: label `meh` never occurs in the source"),
        "{err}"
    );
}

/// Model-level adaptation through `tl adapt`: DANN and SimCSE tune the encoder itself
/// (every candidate, chosen by reverse validation like the feature-level methods), AdaBN
/// re-estimates an image network's BatchNorm statistics on the target, DANN tunes an
/// image network too, and a method of the other modality is refused by name.
#[test]
fn adapt_tunes_the_backbone_itself_with_dann_simcse_and_adabn() {
    let d = tempfile::tempdir().unwrap();
    let source = reviews(d.path());
    let target = kettles(d.path());
    let (s, t) = (source.to_str().unwrap(), target.to_str().unwrap());
    let folder = d.path().join("model-level");
    let (code, out, err) = tl(&[
        "adapt",
        "--source",
        s,
        "--target",
        t,
        "--methods",
        "dann,simcse",
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("dann(lambda=0.1, lr=default, epochs=2) (trains the backbone)"),
        "{err}"
    );
    for line in [
        "| dann | dann(lambda=",
        "| simcse | simcse(lr=",
        "| rv-selected |",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("report.json")).unwrap())
            .unwrap();
    let methods = json["pairs"][0]["methods"].as_array().unwrap();
    let dann = methods.iter().find(|m| m["method"] == "dann").unwrap();
    assert_eq!(dann["candidates"].as_array().unwrap().len(), 3, "{dann}");
    let simcse = methods.iter().find(|m| m["method"] == "simcse").unwrap();
    assert_eq!(simcse["chosen"]["method"], "simcse");
    for m in [dann, simcse] {
        let acc = m["accuracy"]["estimate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{m}");
    }
    let (code, _, err) = tl(&["adapt", "--source", s, "--target", t, "--methods", "adabn"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("adabn re-estimates BatchNorm statistics of image networks; all-minilm-l6-v2 is a text model"),
        "{err}"
    );
    // AdaBN on digits: the target's statistics replace the source's, and the run says
    // what it did per pair.
    let home = finetune_home();
    let (code, out, err) = tl_in(
        home.path(),
        &[
            "adapt",
            "--model",
            "mobilenetv2",
            "--source",
            "optdigits",
            "--target",
            "mnist",
            "--methods",
            "adabn",
            "--limit",
            "60",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("| adabn | adabn |"), "{out}");
    assert!(out.contains("(60 source rows, 60 target rows)"), "{out}");
    // DANN trains the image network itself on labelled source and unlabelled target
    // digits, every lambda of its grid.
    let (code, out, err) = tl_in(
        home.path(),
        &[
            "adapt",
            "--model",
            "mobilenetv2",
            "--source",
            "optdigits",
            "--target",
            "mnist",
            "--methods",
            "dann",
            "--limit",
            "60",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("dann(lambda=1, lr=default, epochs=2) (trains the backbone)"),
        "{err}"
    );
    assert!(out.contains("| dann | dann(lambda="), "{out}");
    let (code, _, err) = tl_in(
        home.path(),
        &[
            "adapt",
            "--model",
            "mobilenetv2",
            "--source",
            "optdigits",
            "--target",
            "mnist",
            "--methods",
            "simcse",
            "--limit",
            "20",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "simcse adapts text encoders; mobilenetv2 is an image model (use dann or adabn)"
        ),
        "{err}"
    );
}

/// A cache of its own for `tl finetune` (it writes models and manifests), with the
/// workspace cache's assets linked in so nothing is downloaded twice.
fn finetune_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    link_assets(home.path());
    home
}

fn tl_in(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tl"))
        .env("TL_HOME", home)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn finetune_exports_a_model_every_command_can_use() {
    let home = finetune_home();
    let h = home.path();
    let data = h.join("reviews.csv");
    let mut csv = String::from("text,label\n");
    let good = [
        "great phone",
        "works well",
        "love it",
        "excellent value",
        "very happy",
        "superb sound",
    ];
    let bad = [
        "broke in a week",
        "awful battery",
        "waste of money",
        "stopped working",
        "very poor",
        "terrible screen",
    ];
    for i in 0..4 {
        for (g, b) in good.iter().zip(&bad) {
            csv += &format!("{g} {i},pos\n{b} {i},neg\n");
        }
    }
    std::fs::write(&data, csv).unwrap();
    let d = data.to_str().unwrap();
    let (code, out, err) = tl_in(
        h,
        &[
            "finetune",
            "--dataset",
            d,
            "--name",
            "cli-tuned",
            "--epochs",
            "2",
            "--lr",
            "1e-4",
            "--test-fraction",
            "0.25",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("data      reviews: 36 train / 12 test rows"),
        "{out}"
    );
    assert!(
        out.contains("before    all-minilm-l6-v2 frozen + logistic"),
        "{out}"
    );
    assert!(
        out.contains("verdict   fine-tuned cli-tuned:")
            && (out.contains("fine-tuning helps")
                || out.contains("fine-tuning hurts")
                || out.contains("no clear difference")),
        "{out}"
    );
    assert!(out.contains("ONNX Runtime matches the engine"), "{out}");
    for f in [
        "models/cli-tuned/model.onnx",
        "models/cli-tuned/tokenizer.json",
        "manifests/cli-tuned.toml",
    ] {
        assert!(h.join(f).is_file(), "{f}");
    }
    let run = h.join("finetune/cli-tuned");
    for f in [
        "log.jsonl",
        "checkpoint.safetensors",
        "classifier.json",
        "report.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // The tuned model by name, like any other: raw-text prediction with its head, and
    // extraction through the feature cache.
    let clf = run.join("classifier.json");
    let (code, out, err) = tl_in(
        h,
        &[
            "predict",
            "--model",
            "cli-tuned",
            "--classifier",
            clf.to_str().unwrap(),
            "--text",
            "love it, great value",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("row,label,probability\n0,"), "{out}");
    let (code, _, err) = tl_in(h, &["embed", "--model", "cli-tuned", "--dataset", d]);
    assert_eq!(code, 0, "{err}");

    // The name is taken now; resuming a finished run trains nothing more.
    let (code, _, err) = tl_in(h, &["finetune", "--dataset", d, "--name", "cli-tuned"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, out, err) = tl_in(
        h,
        &[
            "finetune",
            "--dataset",
            d,
            "--name",
            "cli-tuned",
            "--epochs",
            "2",
            "--lr",
            "1e-4",
            "--test-fraction",
            "0.25",
            "--resume",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("epoch ").count(),
        2,
        "the two logged epochs are reported again: {out}"
    );
}

#[test]
fn run_with_finetune_tables_trains_per_fold_and_reports_three_levels() {
    let h = finetune_home();
    let h = h.path();
    let table = reviews(h);
    let exp = h.join("ft.toml");
    std::fs::write(
        &exp,
        format!(
            "name = \"ft\"\ndataset = {:?}\nbackbones = [\"all-minilm-l6-v2\"]\nbaseline = \"tfidf\"\nbootstrap = 100\n[search]\nenabled = false\n[protocol]\nkind = \"cv\"\nfolds = 2\n[few_shot]\nshots = [4]\nrepeats = 2\ntest_fraction = 0.5\n[[finetune]]\nbackbone = \"all-minilm-l6-v2\"\nstrategy = \"top:1\"\nepochs = 2\nlearning_rate = 1e-4\nvalidation_fraction = 0.25\nfew_shot = \"skip\"\n[[finetune]]\nname = \"pairs\"\nbackbone = \"all-minilm-l6-v2\"\nstrategy = \"contrastive\"\nepochs = 1\npairs_per_item = 2\nfew_shot = \"only\"\n",
            table.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = h.join("report");
    let (code, stdout, err) = tl_in(
        h,
        &["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    let tuned = "all-minilm-l6-v2 tuned top:1";
    for want in [
        format!("estimate  {tuned}: about"),
        format!("cost      {tuned}: cross-validation trains 2 models"),
        "estimate  pairs: about".to_string(),
        format!("epoch     {tuned} fold 2: epoch 2: loss"),
        format!("levels    {tuned}: fine-tuning"),
        "few-shot  k=4, 2 draws: pairs:".to_string(),
    ] {
        assert!(stdout.contains(&want), "{want:?} not in\n{stdout}");
    }
    // The estimate is printed before any fold trains.
    assert!(stdout.find("estimate").unwrap() < stdout.find("epoch     ").unwrap());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    let r = results.iter().find(|r| r["system"] == tuned).unwrap();
    assert!(r["head_spec"].is_null(), "its own linear layer");
    let folds = r["tuning"]["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 2, "one model per training part");
    for f in folds {
        // 20 training rows per fold, a quarter of them held out for validation.
        assert_eq!(
            f["train_rows"].as_u64().unwrap() + f["validation_rows"].as_u64().unwrap(),
            20
        );
        assert!(f["validation_rows"].as_u64().unwrap() > 0);
        assert_eq!(f["epochs"].as_array().unwrap().len(), 2);
    }
    assert!(r["tuning"]["estimated_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        results.iter().all(|r| r["system"] != "pairs"),
        "few_shot = only: not under the protocol"
    );
    assert_eq!(json["levels"].as_array().unwrap().len(), 1);
    assert_eq!(json["few_shot_comparisons"][0]["system"], "pairs");
    assert_eq!(json["few_shot_comparisons"][0]["draws"], 2);
    let csv = std::fs::read_to_string(out.join("training.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    let png = std::fs::read(out.join("training_all-minilm-l6-v2_tuned_top_1.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Fine-tuning") && summary.contains("over frozen features"));
}

#[test]
fn tune_searches_by_successive_halving_and_compares_with_the_fixed_default() {
    let h = finetune_home();
    let h = h.path();
    let table = reviews(h);
    let out = h.join("tune");
    let args = [
        "tune",
        "--dataset",
        table.to_str().unwrap(),
        "--learning-rates",
        "1e-4,1e-3",
        "--batch-sizes",
        "8",
        "--epochs",
        "1,2",
        "--strategies",
        "full,top:1",
        "--configurations",
        "4",
        "--test-fraction",
        "0.5",
        "--validation-fraction",
        "0.25",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, stdout, err) = tl_in(h, &args);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let searched = "all-minilm-l6-v2-full-searched";
    for want in [
        format!("estimate  {searched}: about"),
        format!("search    {searched} rung 1/1 #1: "),
        format!("search    {searched} rung 1: 1 continue"),
        format!("search    {searched} final #"),
        format!("verdict   {searched}: "),
        "the search took".to_string(),
    ] {
        assert!(stdout.contains(&want), "{want:?} not in\n{stdout}");
    }
    let file = std::fs::read_to_string(out.join("experiment.toml")).unwrap();
    assert!(
        file.contains("search = { learning_rate = [1e-4, 1e-3]"),
        "{file}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let vs_fixed = json["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "search")
        .expect("a comparison with the fixed default");
    assert_eq!(vs_fixed["baseline"], "all-minilm-l6-v2-full-fixed");
    assert!(vs_fixed["time_ratio"].as_f64().unwrap() > 0.0);
    let r = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["system"] == searched)
        .unwrap();
    let search = &r["tuning"]["folds"][0]["search"];
    let trials = search["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let units: u64 = trials.iter().map(|t| t["units"].as_u64().unwrap()).sum();
    assert_eq!(units, search["trained_units"].as_u64().unwrap());
    assert!(search["cost_in_runs"].as_f64().unwrap() <= 3.0);
    let finished: Vec<usize> = (0..4)
        .filter(|&i| trials[i]["stopped_at"].is_null())
        .collect();
    assert_eq!(finished, [search["chosen"].as_u64().unwrap() as usize]);
    // The chosen configuration's epochs are the system's training log.
    let chosen_epochs = trials[finished[0]]["config"]["epochs"].as_u64().unwrap();
    let logged = r["tuning"]["folds"][0]["epochs"].as_array().unwrap().len() as u64;
    assert_eq!(logged, chosen_epochs);
    let csv = std::fs::read_to_string(out.join("search.csv")).unwrap();
    assert!(csv.starts_with("system,fold,configuration,learning_rate"));
    assert_eq!(csv.lines().count(), 1 + 4 + 1, "{csv}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("### Search: {searched}")),
        "{summary}"
    );
    // Bad arguments are usage errors that name the flag.
    let (code, _, err) = tl_in(h, &["tune", "--strategies", "full,top"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--strategies") && err.contains("top"), "{err}");
    let (code, _, err) = tl_in(h, &["tune", "--resolution", "64"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--resolution applies to image models"),
        "{err}"
    );
}

#[test]
fn finetune_trains_an_image_network_that_tl_predict_uses_on_image_files() {
    let home = finetune_home();
    let h = home.path();
    let args = [
        "finetune",
        "--model",
        "mobilenetv2",
        "--dataset",
        "optdigits",
        "--name",
        "cli-digits",
        "--train-rows",
        "200",
        "--test-rows",
        "100",
        "--resolution",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
    ];
    let (code, out, err) = tl_in(h, &args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("before    mobilenetv2 frozen + logistic"),
        "{out}"
    );
    assert!(out.contains("32 px, BatchNorm frozen"), "{out}");
    assert!(out.contains("images/s"), "{out}");
    assert!(out.contains("verdict   fine-tuned cli-digits:"), "{out}");
    assert!(out.contains("ONNX Runtime matches the engine"), "{out}");
    let manifest = std::fs::read_to_string(h.join("manifests/cli-digits.toml")).unwrap();
    assert!(
        manifest.contains("modality = \"image\"") && manifest.contains("size = 32"),
        "{manifest}"
    );
    assert!(
        manifest.contains("architecture = \"mobilenetv2\""),
        "{manifest}"
    );
    // The tuned network classifies image files through ONNX Runtime with its own head.
    let clf = h.join("finetune/cli-digits/classifier.json");
    let photo = h.join("datasets/imagenet-sanity/coffee.png");
    let (code, out, err) = tl_in(
        h,
        &[
            "predict",
            "--classifier",
            clf.to_str().unwrap(),
            "--image",
            photo.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("row,label,probability\n0,"), "{out}");
    // Image-only and text-only settings are refused for the other kind, before any work.
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--resolution", "64"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--resolution applies to image models"),
        "{err}"
    );
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "mobilenetv2",
            "--name",
            "x",
            "--max-length",
            "64",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-length applies to text models"), "{err}");
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "mobilenetv2",
            "--name",
            "x",
            "--strategy",
            "contrastive",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("for text encoders"), "{err}");
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "mobilenetv2",
            "--name",
            "x",
            "--augment",
            "spin=3",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--augment spin=3"), "{err}");
    // An empty folder and a one-class folder are refused with what was expected.
    let empty = h.join("no-photos");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "mobilenetv2",
            "--dataset",
            &format!("{}/", empty.display()),
            "--name",
            "x",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no class folders"), "{err}");
    let one = h.join("one-class/a");
    std::fs::create_dir_all(&one).unwrap();
    for f in ["1.png", "2.png"] {
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tl-backbone/tests/fixtures/one-pixel.png"
            ),
            one.join(f),
        )
        .unwrap();
    }
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "mobilenetv2",
            "--dataset",
            &format!("{}/", h.join("one-class").display()),
            "--name",
            "x",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("a classifier needs at least two classes"),
        "{err}"
    );
    // open-nsfw is frozen only.
    let (code, _, err) = tl_in(
        h,
        &[
            "finetune",
            "--model",
            "open-nsfw",
            "--dataset",
            "optdigits",
            "--name",
            "x",
            "--train-rows",
            "20",
            "--test-rows",
            "20",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("frozen only"), "{err}");
}

#[test]
fn finetune_refuses_bad_settings() {
    let home = finetune_home();
    let h = home.path();
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--strategy", "top:x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("top:N"), "{err}");
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--lr", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("learning_rate"), "{err}");
    let (code, _, err) = tl_in(h, &["finetune", "--name", "all-minilm-l6-v2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("built-in"), "{err}");
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--head", "knn"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("contrastive"), "{err}");
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--head", "forest"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = tl_in(h, &["finetune", "--name", "x", "--shots", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--shots"), "{err}");
}

#[test]
fn cache_gc_refuses_a_number_of_days_that_overflows() {
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = tl_in(
        home.path(),
        &["cache", "gc", "--days", &u64::MAX.to_string(), "--dry-run"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--days") && err.contains("too large"), "{err}");
    let (code, out, err) = tl_in(
        home.path(),
        &["cache", "gc", "--days", "100000000", "--dry-run"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing unused"), "{out}");
}

/// A second `tl run` takes its head fits from the cache and says so; `tl cache info` counts
/// them and `tl cache gc` deletes the unused ones, after which the run fits again.
#[test]
fn remembered_fits_are_listed_and_collected_by_the_cache_commands() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mut csv = String::from("text,label\n");
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 {
            ("great", "pos")
        } else {
            ("awful", "neg")
        };
        csv.push_str(&format!("a {w} phone number {i},{l}\n"));
    }
    std::fs::write(h.join("reviews.csv"), csv).unwrap();
    let exp = h.join("exp.toml");
    let data = h.join("reviews.csv");
    std::fs::write(
        &exp,
        format!("name = \"t\"\ndataset = {data:?}\nbaseline = \"tfidf\"\nbootstrap = 100\n[[heads]]\nkind = \"logistic\"\n[search]\nfolds = 2\nc = [1.0]\n[protocol]\nkind = \"cv\"\nfolds = 4\n"),
    )
    .unwrap();
    let run = || {
        let (code, out, err) = tl_in(
            h,
            &[
                "run",
                exp.to_str().unwrap(),
                "--out",
                h.join("r").to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
        format!("{out}{err}")
    };
    assert!(!run().contains("remembered"));
    let second = run();
    assert!(second.contains("4 of 4 head fits remembered"), "{second}");
    let (code, out, err) = tl_in(h, &["cache", "info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("remembered head fits: 4 files"), "{out}");
    assert!(!out.contains("/.fits"), "not listed as a backbone: {out}");
    let (code, out, err) = tl_in(h, &["cache", "gc", "--days", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing unused"), "just used: {out}");
    let (code, out, err) = tl_in(h, &["cache", "gc", "--days", "0", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would delete 4 remembered head fits"), "{out}");
    let (code, out, err) = tl_in(h, &["cache", "gc", "--days", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 4 remembered head fits"), "{out}");
    assert!(!run().contains("remembered"));
}

/// Output to a reader that went away ends quietly with 0 (as `tl ... | head -1`); a
/// stdout that cannot be written (a full disk) is exit 1 with a message. Both panicked
/// before. (A closed descriptor cannot be told apart: Rust's runtime reopens a closed
/// stdout on /dev/null before `main`.)
#[test]
fn stdout_failures_follow_unix_conventions() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("reviews.csv");
    std::fs::write(&p, "text,label\ngood,pos\nbad,neg\ngreat,pos\n").unwrap();
    let args = ["data", "info", p.to_str().unwrap()];

    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // the reader is gone before tl writes a byte
    let out = tl_cmd().args(args).stdout(writer).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = tl_cmd().args(args).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing the output to stdout") && !err.contains("panicked"),
        "{err}"
    );
}

/// Unbounded numbers are refused up front with exit 2 (`--threads 2048` turned 0.4 s into
/// minutes; `--limit 0` exited 0 having done nothing).
#[test]
fn embed_refuses_out_of_range_numbers() {
    for (args, needle) in [
        (&["embed", "--threads", "2048"][..], "--threads"),
        (&["embed", "--threads", "0"], "--threads"),
        (&["embed", "--batch-size", "0"], "--batch-size"),
        (&["embed", "--limit", "0"], "--limit"),
    ] {
        let (code, _, err) = tl(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Runs `tl` with `TL_HOME=cache` mounted read-only (a mount namespace of its own, so the
/// real cache is untouched and root cannot write either). None where this machine cannot
/// make a read-only mount (no `unshare`, no privilege): the test then says so.
fn tl_read_only(cache: &std::path::Path, args: &[&str]) -> Option<(i32, String, String)> {
    let script = r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 97
touch "$0/.tl-probe" 2>/dev/null && { rm -f "$0/.tl-probe"; exit 98; }
exec "$@""#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .arg(cache)
        .arg(env!("CARGO_BIN_EXE_tl"))
        .args(args)
        .env("TL_HOME", cache)
        .output()
        .ok()?;
    match out.status.code() {
        Some(97) | Some(98) => None,
        code => Some((
            code.unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
    }
}

#[test]
fn a_read_only_cache_serves_every_reading_command() {
    // Every command used to write a lock or a last-used stamp first, so a shared or
    // container cache mounted read-only was unusable, even for `tl data info`.
    let cache = tl_assets::Cache::from_env();
    let d = tempfile::tempdir().unwrap();
    let table = reviews(d.path());
    // A sentence no run has seen, so the embed below computes (and cannot store) one row.
    let nonce = format!(
        "a review written at {} ns,pos\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut text = std::fs::read_to_string(&table).unwrap();
    text.push_str(&nonce);
    std::fs::write(&table, text).unwrap();
    let t = table.to_str().unwrap();
    let exp = d.path().join("exp.toml");
    std::fs::write(
        &exp,
        format!("name = \"ro\"\ndataset = {t:?}\nbaseline = \"tfidf\"\nbootstrap = 50\n[protocol]\nkind = \"cv\"\nfolds = 3\n"),
    )
    .unwrap();
    let out = d.path().join("report");
    let runs: &[(&[&str], &str)] = &[
        (
            &["data", "info", "sentiment-amazon"],
            "dataset sentiment-amazon",
        ),
        (
            &["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()],
            "summary.md",
        ),
        // New features are computed and returned, not stored.
        (
            &["embed", "--model", "all-minilm-l6-v2", "--dataset", t],
            "1 computed",
        ),
        // Rows or "is empty": either way it names the features folder (empty on a fresh clone,
        // where no test stores features in the workspace cache).
        (&["cache", "info"], "/features"),
    ];
    for (args, want) in runs {
        let Some((code, stdout, err)) = tl_read_only(cache.root(), args) else {
            eprintln!("skipped: this machine cannot mount a folder read-only (unshare -m)");
            return;
        };
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            stdout.contains(want) || err.contains(want),
            "{args:?}: {stdout}\n{err}"
        );
        assert!(!err.contains(".tmp-"), "no temporary file is named: {err}");
    }
}

#[test]
fn outputs_are_checked_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let table = reviews(d.path());
    let t = table.to_str().unwrap();
    let exp = d.path().join("exp.toml");
    std::fs::write(
        &exp,
        format!("name = \"o\"\ndataset = {t:?}\nbaseline = \"tfidf\"\n[protocol]\nkind = \"cv\"\n"),
    )
    .unwrap();
    // --out naming an existing file: refused at once, before the run (exit 2).
    let file = d.path().join("taken.txt");
    std::fs::write(&file, "x").unwrap();
    let (code, stdout, err) = tl(&[
        "run",
        exp.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists and is not a folder"), "{err}");
    assert!(!stdout.contains("result"), "nothing ran: {stdout}");
    // An export with an unknown extension, before any features are computed.
    let (code, _, err) = tl(&[
        "cache",
        "export",
        "--dataset",
        t,
        "--out",
        d.path().join("x.txt").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("use .parquet or .csv") && !err.contains("features"),
        "{err}"
    );
    // A classifier path in a folder that does not exist.
    let (code, _, err) = tl(&[
        "fit",
        "--dataset",
        t,
        "--out",
        d.path().join("no/such/h.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // Negative numbers are values, not flags, and get the range error.
    let (code, _, err) = tl(&[
        "fit",
        "--dataset",
        t,
        "--param",
        "-1",
        "--out",
        d.path().join("h.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("c") && !err.contains("unexpected argument"),
        "{err}"
    );
    // A path that does not exist, and a local folder named like a built-in.
    let (code, _, err) = tl(&[
        "data",
        "info",
        d.path().join("missing.csv").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such file or folder"), "{err}");
}

#[test]
fn a_local_folder_named_like_a_built_in_never_replaces_it() {
    // `./optdigits` with two images used to be taken for the 1,797 digits.
    let d = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(d.path().join("optdigits").join(class)).unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tl-backbone/tests/fixtures/one-pixel.png"
            ),
            d.path().join("optdigits").join(class).join("x.png"),
        )
        .unwrap();
    }
    let run_in = |arg: &str| {
        let out = tl_cmd()
            .current_dir(d.path())
            .args(["data", "info", arg])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run_in("optdigits");
    assert_eq!(code, 0);
    assert!(out.contains("1797 items"), "the built-in: {out}");
    let (code, out) = run_in("./optdigits");
    assert_eq!(code, 0);
    assert!(out.contains("2 items"), "the folder: {out}");
}

#[test]
fn a_copied_binary_without_tl_home_uses_the_user_cache_not_its_build_folder() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("tl");
    std::fs::copy(env!("CARGO_BIN_EXE_tl"), &bin).unwrap();
    let xdg = d.path().join("xdg");
    let out = Command::new(&bin)
        .args(["cache", "info"])
        .env_remove("TL_HOME")
        .env_remove("TL_FEATURES_DIR")
        .env_remove("CARGO_MANIFEST_DIR")
        .env("XDG_CACHE_HOME", &xdg)
        .current_dir(d.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&xdg.join("transfer-learning-rs").display().to_string()),
        "{stdout}"
    );
}

#[test]
fn warnings_carry_no_colour_codes_when_redirected() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("decimals.csv");
    std::fs::write(&p, "text,label\na,1\nb,1.0\nc,2\n").unwrap();
    let (code, out, err) = tl(&["data", "info", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 classes"), "1 and 1.0 are one class: {out}");
    assert!(err.contains("read as the integers"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a redirected log: {err:?}"
    );
}

/// A 24-bit BMP of `w` x `h` pixels of one colour (no image crate needed).
fn bmp(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size as usize);
    b.extend(b"BM");
    b.extend(size.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend([0u8; 24]);
    for _ in 0..h {
        for _ in 0..w {
            b.extend([rgb[2], rgb[1], rgb[0]]);
        }
        b.extend(std::iter::repeat_n(0u8, (row - w * 3) as usize));
    }
    b
}

#[test]
fn tl_select_takes_leep_logits_from_an_earlier_tl_run() {
    // `tl run` now stores a backbone's extra outputs with its features, so `tl select` finds
    // EfficientNet-Lite0's ImageNet logits cached instead of running the model again.
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("colours");
    let nonce = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 200) as u8;
    for (class, base) in [("red", [200u8, 20, 20]), ("blue", [20u8, 20, 200])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..6u8 {
            let c = [
                base[0],
                base[1].wrapping_add(nonce),
                base[2].wrapping_add(i * 5),
            ];
            std::fs::write(
                root.join(class).join(format!("{i}.bmp")),
                bmp(12 + u32::from(i), 10, c),
            )
            .unwrap();
        }
    }
    let r = root.to_str().unwrap();
    let exp = d.path().join("exp.toml");
    std::fs::write(
        &exp,
        format!("name = \"colours\"\ndataset = {r:?}\nbackbones = [\"efficientnet-lite0\"]\nbaseline = \"none\"\nbootstrap = 20\n[protocol]\nkind = \"cv\"\nfolds = 2\n"),
    )
    .unwrap();
    let out = d.path().join("report");
    let (code, stdout, err) = tl(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("12 computed"), "{stdout}");
    let (code, stdout, err) = tl(&[
        "select",
        "--dataset",
        r,
        "--backbones",
        "efficientnet-lite0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("efficientnet-lite0 on colours: 12 cached, 0 computed"),
        "logits from the feature cache: {err}"
    );
    assert!(stdout.contains("LEEP"), "{stdout}");
}

#[test]
fn extraction_without_a_terminal_prints_progress_lines() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fresh.csv");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(
        &p,
        format!("text,label\nprogress check {nonce} a,x\nprogress check {nonce} b,y\n"),
    )
    .unwrap();
    let out = tl_cmd()
        .args([
            "embed",
            "--model",
            "all-minilm-l6-v2",
            "--dataset",
            p.to_str().unwrap(),
        ])
        .env("TL_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("progress  all-minilm-l6-v2: 2/2 computed (100%)"),
        "{err}"
    );
}
