//! `cargo xtask bench`: the same workloads through this toolkit and through the Python
//! stack (onnxruntime + tokenizers / PIL + numpy), interleaved, with ratios.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tl_assets::{Cache, Fetcher, Registry};

struct Workload {
    name: &'static str,
    model: &'static str,
    /// Rust runner arguments after `--model`.
    rust_args: Vec<String>,
    /// Python arguments (the script's own).
    python_args: Vec<String>,
    /// Model GFLOP per item (images) or per processed token (text), for the distance
    /// from the arithmetic limit.
    gflop_per_item: f64,
    per_token: bool,
    unit: &'static str,
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident memory (VmHWM) of a running process in MB.
fn vm_hwm_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs `cmd`, sampling its peak RSS every 20 ms (the same way for both stacks); returns
/// its stdout, wall seconds and peak RSS in MB.
pub(crate) fn run_measured(mut cmd: Command) -> Result<(String, f64, f64)> {
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let pid = child.id();
    let mut peak = 0.0f64;
    // Drain stdout on a thread so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(m) = vm_hwm_mb(pid) {
            peak = peak.max(m);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{cmd:?} failed: {err}");
    }
    Ok((out, secs, peak))
}

fn run_json(cmd: Command) -> Result<Value> {
    let (out, _, peak) = run_measured(cmd)?;
    let line = out.lines().last().unwrap_or_default();
    let mut v: Value = serde_json::from_str(line).with_context(|| format!("printed {line:?}"))?;
    v["peak_rss_mb"] = json!(peak);
    Ok(v)
}

/// The median of the numbers a runner printed under `key` (one per timed repeat).
fn median_of(v: &Value, key: &str) -> f64 {
    let mut r: Vec<f64> = v[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    median(&mut r)
}

fn rate(v: &Value) -> f64 {
    median_of(v, "items_per_s")
}

/// Threads both stacks are given: every core.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Peak single-precision FLOP/s of this machine's cores, from /proc/cpuinfo.
fn peak_gflops(threads: usize) -> (f64, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000.0);
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    // FMA lanes x 2 FLOP x 2 FMA units per cycle.
    let (per_cycle, isa) = if flags.contains(" avx512f") {
        (64.0, "AVX-512")
    } else if flags.contains(" avx2") && flags.contains(" fma") {
        (32.0, "AVX2+FMA")
    } else {
        (8.0, "SSE")
    };
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    (
        threads as f64 * mhz / 1000.0 * per_cycle,
        format!("{model}, {threads} threads, {isa}, {mhz:.0} MHz"),
    )
}

pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    if let Some(w) = only.filter(|w| !["finetune", "image-finetune", "tfidf", "levers"].contains(w))
    {
        bail!(
            "--only {w}: the workloads that run alone are `finetune`, `image-finetune`, `tfidf` and `levers`"
        );
    }
    let registry = Registry::builtin()?;
    let cache = Cache::from_env();
    let fetcher = Fetcher::new(cache.clone());
    for name in [
        "onnxruntime",
        "all-minilm-l6-v2",
        "efficientnet-lite0",
        "sentiment-amazon",
        "sentiment-imdb",
        "sentiment-yelp",
        "20newsgroups",
        "mnist",
        "mobilenetv2",
    ] {
        fetcher.fetch(registry.get(name)?)?;
    }
    let python = fetcher.python_env()?;
    let cargo = crate::cargo();
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "tl-benches",
            "--bins",
            "-p",
            "tl-cli",
        ])
        .status()?;
    if !status.success() {
        bail!("release build failed");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let rounds = 2;
    let script = root.join("tools/bench/bench_python.py");
    let (n_sentences, n_docs, n_images) = if quick {
        (1000, 100, 300)
    } else {
        (3000, 2000, 2000)
    };
    // Inputs, written once so both stacks read the same texts.
    let status = Command::new(root.join("target/release/bench-inputs"))
        .arg(&out_dir)
        .arg(n_sentences.to_string())
        .arg(n_docs.to_string())
        .status()?;
    if !status.success() {
        bail!("bench-inputs failed");
    }
    let sentences_path = out_dir.join("sentences.json");
    let minilm = registry.get("all-minilm-l6-v2")?;
    let threads = threads();
    let (peak, machine) = peak_gflops(threads);
    if let Some(w) = only {
        let (md, json) = if w == "tfidf" {
            tfidf_workload(&root, &out_dir, &python, &script, quick, rounds)?
        } else if w == "levers" {
            levers_workload(
                &root,
                &out_dir,
                &python,
                &cache,
                minilm,
                &sentences_path,
                peak,
            )?
        } else if w == "finetune" {
            crate::bench_finetune::finetune_workload(&root, &out_dir, quick, rounds)?
        } else {
            crate::bench_finetune::image_finetune_workload(&root, &out_dir, quick, rounds)?
        };
        println!("{md}");
        std::fs::write(out_dir.join(format!("{w}.md")), &md)?;
        std::fs::write(
            out_dir.join(format!("{w}.json")),
            serde_json::to_vec_pretty(&json)?,
        )?;
        eprintln!("written {}", out_dir.join(format!("{w}.md")).display());
        return Ok(());
    }
    let runner = root.join("target/release/embed-throughput");
    let repeat = 1;

    let docs_path = out_dir.join("docs.json");
    let eff = registry.get("efficientnet-lite0")?;
    let mnist = cache.file_path(registry.get("mnist")?, "train-images-idx3-ubyte");
    let spec_path = out_dir.join("efficientnet-lite0.image.json");
    std::fs::write(
        &spec_path,
        serde_json::to_vec(&eff.model.as_ref().expect("model").image)?,
    )?;
    let p = |p: &Path| p.display().to_string();
    let text_py = |texts: &Path| -> Vec<String> {
        vec![
            "text".into(),
            "--onnx".into(),
            p(&cache.file_path(minilm, "model.onnx")),
            "--tokenizer".into(),
            p(&cache.file_path(minilm, "tokenizer.json")),
            "--max-length".into(),
            "256".into(),
            "--pooling".into(),
            "mean".into(),
            "--output".into(),
            "last_hidden_state".into(),
            "--texts".into(),
            p(texts),
        ]
    };
    // MiniLM-L6: 6 layers, d 384, ff 1536: 2 x (4 d^2 + 2 d ff) FLOP per token per layer
    // (attention scores add 4 d T per token, small at these lengths and left out).
    let minilm_gflop_per_token = 6.0 * 2.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0) / 1e9;
    let workloads = vec![
        Workload {
            name: if quick {
                "text: 1,000 sentiment sentences"
            } else {
                "text: 3,000 sentiment sentences"
            },
            model: "all-minilm-l6-v2",
            rust_args: vec!["--texts".into(), p(&sentences_path)],
            python_args: text_py(&sentences_path),
            gflop_per_item: minilm_gflop_per_token,
            per_token: true,
            unit: "sentences/s",
        },
        Workload {
            name: "text: 20NG docs, truncated at 256",
            model: "all-minilm-l6-v2",
            rust_args: vec!["--texts".into(), p(&docs_path)],
            python_args: text_py(&docs_path),
            gflop_per_item: minilm_gflop_per_token,
            per_token: true,
            unit: "docs/s",
        },
        Workload {
            name: "image: MNIST digits at 224, EfficientNet-Lite0",
            model: "efficientnet-lite0",
            rust_args: vec![
                "--idx".into(),
                p(&mnist),
                "--limit".into(),
                n_images.to_string(),
            ],
            python_args: vec![
                "image".into(),
                "--onnx".into(),
                p(&cache.file_path(eff, "model.onnx")),
                "--spec".into(),
                p(&spec_path),
                "--idx".into(),
                p(&mnist),
                "--limit".into(),
                n_images.to_string(),
            ],
            // EfficientNet-Lite0: about 0.4 G multiply-adds per 224 x 224 image.
            gflop_per_item: 0.80,
            per_token: false,
            unit: "images/s",
        },
    ];
    let ort_version = "onnxruntime 1.31.1 (both)";
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for w in &workloads {
        let common = |c: &mut Command| {
            c.args([
                "--batch-size",
                "32",
                "--threads",
                &threads.to_string(),
                "--repeat",
                &repeat.to_string(),
            ]);
        };
        let (mut rust_rates, mut py_rates, mut py_sorted_rates, mut ratios, mut sorted_ratios) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut last = (Value::Null, Value::Null);
        for round in 0..rounds {
            eprintln!("{} (round {}/{rounds})", w.name, round + 1);
            let mut r = Command::new(&runner);
            r.args(["--model", w.model]).args(&w.rust_args);
            common(&mut r);
            let rv = run_json(r)?;
            let mut py = Command::new(&python);
            py.arg(&script).args(&w.python_args);
            common(&mut py);
            let pv = run_json(py)?;
            let (a, b) = (rate(&rv), rate(&pv));
            rust_rates.push(a);
            py_rates.push(b);
            ratios.push(a / b);
            if w.python_args[0] == "text" {
                let mut pys = Command::new(&python);
                pys.arg(&script).args(&w.python_args).arg("--sort");
                common(&mut pys);
                let sv = run_json(pys)?;
                py_sorted_rates.push(rate(&sv));
                sorted_ratios.push(a / rate(&sv));
            }
            raw.push(json!({"workload": w.name, "round": round, "rust": rv, "python": pv}));
            last = (rv, pv);
        }
        let rust = median(&mut rust_rates);
        let per_item = if w.per_token {
            let tokens = last.0["processed_tokens"].as_f64().unwrap_or(0.0)
                / last.0["items"].as_f64().unwrap_or(1.0);
            w.gflop_per_item * tokens
        } else {
            w.gflop_per_item
        };
        let used = rust * per_item;
        rows.push(json!({
            "workload": w.name,
            "unit": w.unit,
            "rust": rust,
            "python": median(&mut py_rates),
            "python_sorted": if py_sorted_rates.is_empty() { Value::Null } else { json!(median(&mut py_sorted_rates)) },
            "ratio": median(&mut ratios),
            "ratio_vs_sorted": if sorted_ratios.is_empty() { Value::Null } else { json!(median(&mut sorted_ratios)) },
            "padding_efficiency_rust": last.0["padding_efficiency"],
            "padding_efficiency_python": last.1["padding_efficiency"],
            "rust_run_share": last.0["run_s"].as_f64().unwrap_or(0.0) / last.0["total_s"].as_f64().unwrap_or(1.0),
            "python_run_share": last.1["run_s"].as_f64().unwrap_or(0.0) / last.1["total_s"].as_f64().unwrap_or(1.0),
            "gflops_achieved": used,
            "peak_fraction": used / peak,
            "rust_rss_mb": last.0["peak_rss_mb"],
            "python_rss_mb": last.1["peak_rss_mb"],
        }));
    }
    let mut md = format!(
        "Machine: {machine}; peak ~{peak:.0} GFLOP/s fp32. Stacks: transfer-learning-rs {} vs Python onnxruntime + tokenizers / PIL + numpy; {ort_version}. Batch 32, {threads} intra-op threads, {rounds} interleaved rounds x {repeat} timed runs after a warm-up; medians.\n\n",
        env!("CARGO_PKG_VERSION")
    );
    md += "| workload | Rust | Python | ratio | Python sorted | ratio | padding eff. (Rust / Python) | run share (Rust / Python) | % of peak | peak RSS MB (Rust / Python) |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for r in &rows {
        let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        let x = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}x"));
        let e = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
        md += &format!(
            "| {} | {} {} | {} | {} | {} | {} | {} / {} | {:.0}% / {:.0}% | {:.0}% | {:.0} / {:.0} |\n",
            r["workload"].as_str().unwrap_or_default(),
            f(&r["rust"]),
            r["unit"].as_str().unwrap_or_default(),
            f(&r["python"]),
            x(&r["ratio"]),
            f(&r["python_sorted"]),
            x(&r["ratio_vs_sorted"]),
            e(&r["padding_efficiency_rust"]),
            e(&r["padding_efficiency_python"]),
            r["rust_run_share"].as_f64().unwrap_or(0.0) * 100.0,
            r["python_run_share"].as_f64().unwrap_or(0.0) * 100.0,
            r["peak_fraction"].as_f64().unwrap_or(0.0) * 100.0,
            r["rust_rss_mb"].as_f64().unwrap_or(0.0),
            r["python_rss_mb"].as_f64().unwrap_or(0.0),
        );
    }
    let (lever_md, lever_json) = levers_workload(
        &root,
        &out_dir,
        &python,
        &cache,
        minilm,
        &sentences_path,
        peak,
    )?;
    md += &lever_md;
    raw.push(json!({"workload": "text extraction levers", "result": lever_json}));
    let (fit_md, fit_json) = fit_workload(&root, &out_dir, &python, &script, quick, rounds)?;
    md += &fit_md;
    let (e2e_md, e2e_json) = e2e_workload(&root, &out_dir)?;
    md += &e2e_md;
    raw.push(json!({"workload": "logistic regression fit", "result": fit_json}));
    let (tfidf_md, tfidf_json) = tfidf_workload(&root, &out_dir, &python, &script, quick, rounds)?;
    md += &tfidf_md;
    raw.push(json!({"workload": "tfidf baseline", "result": tfidf_json}));
    raw.push(json!({"workload": "end-to-end experiment", "result": e2e_json}));
    let (ft_md, ft_json) =
        crate::bench_finetune::finetune_workload(&root, &out_dir, quick, rounds)?;
    md += &ft_md;
    raw.push(json!({"workload": "fine-tuning", "result": ft_json}));
    let (ift_md, ift_json) =
        crate::bench_finetune::image_finetune_workload(&root, &out_dir, quick, rounds)?;
    md += &ift_md;
    raw.push(json!({"workload": "image fine-tuning", "result": ift_json}));
    println!("{md}");
    let md_path: PathBuf = out_dir.join(if quick {
        "results-quick.md"
    } else {
        "results.md"
    });
    std::fs::write(&md_path, &md)?;
    std::fs::write(
        md_path.with_extension("json"),
        serde_json::to_vec_pretty(
            &json!({"machine": machine, "peak_gflops": peak, "threads": threads, "rows": rows, "raw": raw}),
        )?,
    )?;
    eprintln!("written {} and .json", md_path.display());
    Ok(())
}

/// Workload 3b: the levers of text extraction on one ONNX Runtime (`levers.py`): batching,
/// threads, session options, a fused graph and int8 activations, with how far each moves
/// the vectors, and a profile of where the reference pass spends its time.
fn levers_workload(
    root: &Path,
    out_dir: &Path,
    python: &Path,
    cache: &Cache,
    minilm: &tl_assets::Manifest,
    sentences: &Path,
    peak: f64,
) -> Result<(String, Value)> {
    eprintln!("text extraction levers (one process, interleaved)");
    let mut c = Command::new(python);
    c.arg(root.join("tools/bench/levers.py"))
        .arg("--onnx")
        .arg(cache.file_path(minilm, "model.onnx"))
        .arg("--tokenizer")
        .arg(cache.file_path(minilm, "tokenizer.json"))
        .arg("--texts")
        .arg(sentences)
        .args(["--threads", &threads().to_string(), "--rounds", "3"])
        .arg("--work")
        .arg(out_dir.join("levers"))
        .arg("--peak-gflops")
        .arg(format!("{peak:.1}"));
    let v = run_json(c)?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let base = rows
        .get(1)
        .and_then(|r| r["items_per_s"].as_f64())
        .unwrap_or(1.0);
    let mut md = format!(
        "\n| text-extraction lever ({} sentiment sentences, {} tokens, MiniLM-L6, one ONNX Runtime, {} threads) | sentences/s | vs this toolkit's batches | GFLOP/s (% of peak) | max abs. difference of the vectors | min cosine |\n|---|---|---|---|---|---|\n",
        v["items"],
        v["tokens"],
        threads()
    );
    for r in &rows {
        let rate = r["items_per_s"].as_f64().unwrap_or(0.0);
        let gflops = r["gflops"].as_f64().unwrap_or(0.0);
        md += &format!(
            "| {} | {rate:.1} | {:.2}x | {gflops:.0} ({:.0}%) | {:.1e} | {:.4} |\n",
            r["variant"].as_str().unwrap_or_default(),
            rate / base,
            100.0 * gflops / peak,
            r["max_abs_diff"].as_f64().unwrap_or(f64::NAN),
            r["min_cosine"].as_f64().unwrap_or(f64::NAN),
        );
    }
    // [op, share] pairs, largest first.
    let shares: Vec<String> = v["profile"]["op_share"]
        .as_array()
        .map(|o| {
            o.iter()
                .map(|p| {
                    format!(
                        "{} {:.0}%",
                        p[0].as_str().unwrap_or_default(),
                        100.0 * p[1].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let load = |k: &str| v["load_s"][k].as_f64().unwrap_or(0.0);
    md += &format!(
        "\nWhere the reference pass spends its time (ONNX Runtime's profiler): {}. The matrix products run at {:.0} GFLOP/s, {:.0}% of the fp32 peak; int8 instructions of this CPU: {}. Opening the session: {:.2} s from the model file, {:.2} s from the optimised graph ONNX Runtime saved of it.\n",
        shares.join(", "),
        v["profile"]["matmul_gflops"].as_f64().unwrap_or(0.0),
        100.0 * v["matmul_peak_fraction"].as_f64().unwrap_or(0.0),
        v["int8_isa"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into()),
        load("model file"),
        load("saved optimised graph"),
    );
    Ok((md, v))
}

/// One logistic-regression fit comparison (C = 1) on a matrix fit-bench exports (`export`:
/// its arguments), tl-heads vs scikit-learn's lbfgs on the same rows, interleaved: the
/// Markdown rows and both sides' last JSON.
fn logistic_fit(
    root: &Path,
    dir: &Path,
    export: &[&str],
    python: &Path,
    script: &Path,
    rounds: usize,
) -> Result<(String, Value)> {
    // The export (features from the cache, the runtime loaded) is not part of the timing.
    let status = Command::new(root.join("target/release/fit-bench"))
        .arg("--out")
        .arg(dir)
        .args(export)
        .status()?;
    if !status.success() {
        bail!("fit-bench --out failed");
    }
    let (mut rust_s, mut py_s, mut ratios) = (vec![], vec![], vec![]);
    let mut last = (Value::Null, Value::Null);
    for round in 0..rounds {
        eprintln!(
            "logistic regression fit, {} (round {}/{rounds})",
            dir.display(),
            round + 1
        );
        let mut r = Command::new(root.join("target/release/fit-bench"));
        r.arg("--from").arg(dir).args(["--repeat", "2"]);
        let rv = run_json(r)?;
        let mut py = Command::new(python);
        py.arg(script)
            .args(["fit", "--threads"])
            .arg(threads().to_string())
            .arg("--features")
            .arg(dir)
            .args(["--repeat", "2"]);
        let pv = run_json(py)?;
        let (a, b) = (median_of(&rv, "fit_s"), median_of(&pv, "fit_s"));
        rust_s.push(a);
        py_s.push(b);
        ratios.push(b / a);
        last = (rv, pv);
    }
    let (rv, pv) = last;
    let acc = |v: &Value| v["accuracy"].as_f64().unwrap_or(0.0);
    let md = format!(
        "| fit time | {:.2} s | {:.2} s | {:.2}x |\n| test accuracy | {:.2}% | {:.2}% | {:+.2} points |\n| peak RSS (fit process) | {:.0} MB | {:.0} MB | {:.2}x |\n",
        median(&mut rust_s),
        median(&mut py_s),
        median(&mut ratios),
        100.0 * acc(&rv),
        100.0 * acc(&pv),
        100.0 * (acc(&rv) - acc(&pv)),
        rv["peak_rss_mb"].as_f64().unwrap_or(0.0),
        pv["peak_rss_mb"].as_f64().unwrap_or(0.0),
        rv["peak_rss_mb"].as_f64().unwrap_or(0.0) / pv["peak_rss_mb"].as_f64().unwrap_or(1.0),
    );
    Ok((md, json!({"rust": rv, "python": pv})))
}

/// Workload 4: logistic regression (C = 1) on 20 Newsgroups MiniLM-L6 features and on the
/// MNIST raw-pixels baseline's rows, tl-heads vs scikit-learn's lbfgs on the same exported
/// matrices; then grid search of C and kNN on the 20 Newsgroups features.
fn fit_workload(
    root: &Path,
    out_dir: &Path,
    python: &Path,
    script: &Path,
    quick: bool,
    rounds: usize,
) -> Result<(String, Value)> {
    let dir = out_dir.join("fit-20ng");
    let (train, test) = if quick { ("2000", "1000") } else { ("0", "0") };
    let (ng_md, ng) = logistic_fit(
        root,
        &dir,
        &["--train", train, "--test", test],
        python,
        script,
        rounds,
    )?;
    let (train, test) = if quick {
        ("2000", "500")
    } else {
        ("10000", "2000")
    };
    let (px_md, px) = logistic_fit(
        root,
        &out_dir.join("fit-mnist-pixels"),
        &["--dataset", "mnist", "--train", train, "--test", test],
        python,
        script,
        rounds,
    )?;
    // Grid search of C and kNN on the same matrix (heads-side vs GridSearchCV), interleaved.
    let (mut grid_rs, mut grid_py, mut knn_rs, mut knn_py) = (vec![], vec![], vec![], vec![]);
    let mut grid_last = (Value::Null, Value::Null);
    let threads = threads().to_string();
    for round in 0..rounds {
        eprintln!("grid search and kNN (round {}/{rounds})", round + 1);
        let mut r = Command::new(root.join("target/release/heads-side"));
        r.arg("--features").arg(&dir);
        let rv = run_json(r)?;
        let mut py = Command::new(python);
        py.arg(script)
            .args(["grid", "--threads", &threads, "--features"])
            .arg(&dir);
        let pv = run_json(py)?;
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        grid_rs.push(f(&rv, "grid_s"));
        grid_py.push(f(&pv, "grid_s"));
        knn_rs.push(f(&rv, "knn_s"));
        knn_py.push(f(&pv, "knn_s"));
        grid_last = (rv, pv);
    }
    let (grv, gpv) = grid_last;
    let (g_r, g_p) = (median(&mut grid_rs), median(&mut grid_py));
    let (k_r, k_p) = (median(&mut knn_rs), median(&mut knn_py));
    let grid_md = format!(
        "| **20NG MiniLM-L6 features: grid search and kNN** | | | |\n| grid search of C (6 values x 5 stratified folds; GridSearchCV n_jobs={threads}) | {g_r:.1} s | {g_p:.1} s | {:.2}x |\n| chosen C (mean CV accuracy) | {} ({:.2}%){} | {} ({:.2}%) | |\n| kNN (k = 5, cosine, brute force): fit + predict the test rows | {k_r:.2} s | {k_p:.2} s | {:.2}x |\n| peak RSS of the grid + kNN process | {:.0} MB | {:.0} MB | |\n",
        g_p / g_r,
        grv["best_c"],
        100.0 * grv["best_cv_accuracy"].as_f64().unwrap_or(0.0),
        match grv["grid_extended"].as_array() {
            Some(e) if !e.is_empty() => format!(", grid extended by {e:?}"),
            _ => String::new(),
        },
        gpv["best_c"],
        100.0 * gpv["best_cv_accuracy"].as_f64().unwrap_or(0.0),
        k_p / k_r,
        grv["peak_rss_mb"].as_f64().unwrap_or(0.0),
        gpv["peak_rss_mb"].as_f64().unwrap_or(0.0),
    );
    let shape = |v: &Value| format!("{} x {} train / {} test", v["train"], v["dim"], v["test"]);
    let md = format!(
        "\n| logistic regression fit (C = 1, lbfgs) | tl-heads | scikit-learn | speed-up |\n|---|---|---|---|\n| **20NG MiniLM-L6 features, {}, 20 classes** | | | |\n{ng_md}| **MNIST raw pixels (the baseline of `experiments/mnist.toml`), {}, 10 classes** | | | |\n{px_md}",
        shape(&ng["rust"]),
        shape(&px["rust"]),
    ) + &grid_md;
    Ok((
        md,
        json!({"fit_20ng": ng, "fit_raw_pixels": px, "grid_rust": grv, "grid_python": gpv}),
    ))
}

/// Workload 4b: the TF-IDF baseline (sparse, whole vocabulary) + logistic regression on 20
/// Newsgroups and on long documents (8 newsgroup posts joined), tl vs scikit-learn's
/// TfidfVectorizer + LogisticRegression on the same texts, interleaved.
fn tfidf_workload(
    root: &Path,
    out_dir: &Path,
    python: &Path,
    script: &Path,
    quick: bool,
    rounds: usize,
) -> Result<(String, Value)> {
    let threads = threads().to_string();
    let mut md = String::from(
        "\n| TF-IDF (whole vocabulary, min_df 2, sublinear tf) + logistic regression (C = 1) | tl | scikit-learn | ratio |\n|---|---|---|---|\n",
    );
    let mut all = Vec::new();
    for (name, concat) in [
        ("20 Newsgroups", "1"),
        ("long documents (8 posts joined)", "8"),
    ] {
        let docs = out_dir.join(format!("tfidf-docs-{concat}.jsonl"));
        let train = if quick { "2000" } else { "0" };
        let (mut rust_s, mut py_s) = (vec![], vec![]);
        let mut last = (Value::Null, Value::Null);
        for round in 0..rounds {
            eprintln!("tf-idf baseline, {name} (round {}/{rounds})", round + 1);
            let mut r = Command::new(root.join("target/release/tfidf-bench"));
            r.arg("--out")
                .arg(&docs)
                .args(["--concat", concat, "--train", train, "--repeat", "2"]);
            let rv = run_json(r)?;
            let mut py = Command::new(python);
            py.arg(script)
                .args(["tfidf", "--threads", &threads, "--repeat", "2", "--docs"])
                .arg(&docs);
            let pv = run_json(py)?;
            rust_s.push([
                median_of(&rv, "total_s"),
                median_of(&rv, "vectorise_s"),
                median_of(&rv, "fit_s"),
            ]);
            py_s.push([
                median_of(&pv, "total_s"),
                median_of(&pv, "vectorise_s"),
                median_of(&pv, "fit_s"),
            ]);
            last = (rv, pv);
        }
        let col =
            |v: &[[f64; 3]], i: usize| median(&mut v.iter().map(|r| r[i]).collect::<Vec<_>>());
        let (rv, pv) = last;
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        md += &format!(
            "| {name}, {} train / {} test docs of {} characters on average: time in all (vectorising, fitting) | {:.1} s ({:.1}, {:.1}) | {:.1} s ({:.1}, {:.1}) | {:.2}x |\n| {name}: test accuracy | {:.2}% | {:.2}% | {:+.2} points |\n| {name}: vocabulary, stored entries | {} terms, {} | {} terms, {} | |\n| {name}: peak RSS | {:.0} MB | {:.0} MB | {:.2}x |\n",
            rv["train"],
            rv["test"],
            rv["mean_chars"],
            col(&rust_s, 0),
            col(&rust_s, 1),
            col(&rust_s, 2),
            col(&py_s, 0),
            col(&py_s, 1),
            col(&py_s, 2),
            col(&py_s, 0) / col(&rust_s, 0),
            100.0 * f(&rv, "accuracy"),
            100.0 * f(&pv, "accuracy"),
            100.0 * (f(&rv, "accuracy") - f(&pv, "accuracy")),
            rv["vocabulary"],
            rv["train_nnz"],
            pv["vocabulary"],
            pv["train_nnz"],
            f(&rv, "peak_rss_mb"),
            f(&pv, "peak_rss_mb"),
            f(&rv, "peak_rss_mb") / f(&pv, "peak_rss_mb").max(1e-9),
        );
        all.push(json!({"corpus": name, "rust": rv, "python": pv}));
    }
    Ok((md, Value::Array(all)))
}

/// Workload 5: the default experiment (`tl run experiments/sentiment.toml`) with an empty
/// feature cache, then again warm.
fn e2e_workload(root: &Path, out_dir: &Path) -> Result<(String, Value)> {
    let features = out_dir.join("e2e-features");
    let _ = std::fs::remove_dir_all(&features);
    let run = |label: &str| -> Result<(f64, f64)> {
        eprintln!("end-to-end experiment ({label} cache)");
        let mut c = Command::new(root.join("target/release/tl"));
        c.current_dir(root)
            .env("TL_FEATURES_DIR", &features)
            .args(["run", "experiments/sentiment.toml", "--out"])
            .arg(out_dir.join(format!("e2e-{label}")));
        let (_, secs, peak) = run_measured(c)?;
        Ok((secs, peak))
    };
    let cold = run("cold")?;
    let warm = run("warm")?;
    let md = format!(
        "\n| end-to-end `tl run experiments/sentiment.toml` (3,000 sentences, 10-fold CV x 2 feature sets, few-shot 7 k x 10 seeds) | wall time | peak RSS |\n|---|---|---|\n| cold feature cache | {:.1} s | {:.0} MB |\n| warm feature cache | {:.1} s | {:.0} MB |\n| cold / warm | {:.1}x | |\n",
        cold.0,
        cold.1,
        warm.0,
        warm.1,
        cold.0 / warm.0
    );
    Ok((
        md,
        json!({"cold_s": cold.0, "warm_s": warm.0, "cold_rss_mb": cold.1, "warm_rss_mb": warm.1}),
    ))
}
