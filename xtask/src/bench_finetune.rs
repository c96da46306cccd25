//! The fine-tuning workloads of `cargo xtask bench`: tl-finetune against PyTorch (+
//! transformers for text) on the same weights, batches and thread count, interleaved.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tl_assets::Cache;

use crate::bench::{median, run_measured};

/// PyTorch lives in its own virtualenv (about 5 GB with the CUDA wheels PyPI serves),
/// created on first use and never touched by the tests.
fn torch_python(root: &Path, cache: &Cache) -> Result<std::path::PathBuf> {
    let venv = cache.root().join("venv-torch");
    let python = venv.join("bin/python");
    let marker = venv.join(".requirements");
    let reqs = std::fs::read_to_string(root.join("tools/bench/requirements-torch.txt"))?;
    if python.is_file() && std::fs::read_to_string(&marker).ok().as_deref() == Some(reqs.as_str()) {
        return Ok(python);
    }
    eprintln!(
        "creating {} (PyTorch + transformers, several GB, once)",
        venv.display()
    );
    let host = std::env::var("TL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&host)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(root.join("tools/bench/requirements-torch.txt"))
            .status()?
            .success();
    if !ok {
        bail!(
            "could not create the PyTorch virtualenv in {}",
            venv.display()
        );
    }
    std::fs::write(&marker, reqs)?;
    Ok(python)
}

fn last_json(out: &str) -> Result<Value> {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("printed {line:?}"))
}

/// One run of a bench side: its last printed JSON line, with its peak RSS added.
fn measured(cmd: Command) -> Result<Value> {
    let (out, _, rss) = run_measured(cmd)?;
    let mut v = last_json(&out)?;
    v["peak_rss_mb"] = json!(rss);
    Ok(v)
}

/// `rounds` interleaved runs (A B A B) of `bench run WORKLOAD` and of the PyTorch
/// `script WORKLOAD` (with `OMP_WAIT_POLICY=PASSIVE`), 2 threads each: both sides'
/// results and the ratios of their first epoch's `rate` field.
fn interleaved(
    label: &str,
    rounds: usize,
    (bench, torch, script): (&Path, &Path, &Path),
    workload: &Path,
    rate: &str,
) -> Result<(Vec<Value>, Vec<Value>, Vec<f64>)> {
    let (mut rs, mut ps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("{label} (round {}/{rounds})", round + 1);
        let mut r = Command::new(bench);
        r.arg("run").arg(workload).args(["--threads", "2"]);
        let rv = measured(r)?;
        let mut p = Command::new(torch);
        p.env("OMP_WAIT_POLICY", "PASSIVE")
            .arg(script)
            .arg(workload)
            .args(["--threads", "2"]);
        let pv = measured(p)?;
        ratios.push(first_epoch(&rv, rate) / first_epoch(&pv, rate));
        rs.push(rv);
        ps.push(pv);
    }
    Ok((rs, ps, ratios))
}

/// Field `key` of a result's first epoch (0 when missing).
fn first_epoch(v: &Value, key: &str) -> f64 {
    v["epochs"][0][key].as_f64().unwrap_or(0.0)
}

/// The median of `f` over results.
fn median_of(vs: &[Value], f: &dyn Fn(&Value) -> f64) -> f64 {
    median(&mut vs.iter().map(f).collect::<Vec<_>>())
}

/// One epoch of full fine-tuning of all-MiniLM-L6-v2 on the sentiment training rows
/// (2,100; 600 rows with `quick`), both stacks; then `top:2` on the Rust side.
pub fn finetune_workload(
    root: &Path,
    out_dir: &Path,
    quick: bool,
    rounds: usize,
) -> Result<(String, Value)> {
    let cache = Cache::from_env();
    let torch = torch_python(root, &cache)?;
    let bench = root.join("target/release/finetune-bench");
    let workload = out_dir.join("finetune-workload.json");
    let top_workload = out_dir.join("finetune-top2-workload.json");
    let prep = |path: &Path, strategy: &str| -> Result<()> {
        let mut c = Command::new(&bench);
        c.arg("prepare")
            .arg(path)
            .args(["--epochs", "1", "--strategy", strategy]);
        if quick {
            c.args(["--rows", "860"]);
        }
        if !c.status()?.success() {
            bail!("finetune-bench prepare failed");
        }
        Ok(())
    };
    prep(&workload, "full")?;
    prep(&top_workload, "top:2")?;
    let threads = 2;
    let script = root.join("tools/bench/finetune_torch.py");
    let (rust, py, ratios) = interleaved(
        "fine-tuning, full",
        rounds,
        (&bench, &torch, &script),
        &workload,
        "sentences_per_second",
    )?;
    eprintln!("fine-tuning, top:2");
    let mut t = Command::new(&bench);
    t.arg("run")
        .arg(&top_workload)
        .args(["--threads", &threads.to_string()]);
    let (out, _, top_rss) = run_measured(t)?;
    let top = last_json(&out)?;

    let med = median_of;
    let e = |k: &'static str| move |v: &Value| first_epoch(v, k);
    // Same workload, so the same number of steps on both sides.
    let steps = py[0]["epochs"][0]["steps"].as_f64().unwrap_or(1.0);
    let step_ms = |vs: &[Value], k: &'static str| med(vs, &|v: &Value| 1000.0 * e(k)(v) / steps);
    let rust_rate = med(&rust, &e("sentences_per_second"));
    let py_rate = med(&py, &e("sentences_per_second"));
    let top_rate = e("sentences_per_second")(&top);
    let rows = if quick { "602" } else { "2,100" };
    let md = format!(
        "\n| fine-tuning all-MiniLM-L6-v2 (fp32), 1 epoch on {rows} sentiment sentences, batch 16, 2 threads, same weights and batches | tl-finetune | PyTorch {} + transformers (fused AdamW, OMP_WAIT_POLICY=PASSIVE) | ratio |\n|---|---|---|---|\n| training throughput, full | {:.1} sentences/s | {:.1} | {:.2}x |\n| time per step: forward / backward / optimizer | {:.0} / {:.0} / {:.0} ms | {:.0} / {:.0} / {:.0} ms | |\n| test accuracy after the epoch (same test rows) | {:.1}% | {:.1}% | |\n| peak RSS | {:.0} MB | {:.0} MB | |\n| `top:2` (lower 4 layers cached) throughput | {:.1} sentences/s ({:.1}x full) | | |\n",
        py[0]["torch"].as_str().unwrap_or("?"),
        rust_rate,
        py_rate,
        median(&mut ratios.clone()),
        step_ms(&rust, "forward_seconds"),
        step_ms(&rust, "backward_seconds"),
        step_ms(&rust, "optimizer_seconds"),
        step_ms(&py, "forward_seconds"),
        step_ms(&py, "backward_seconds"),
        step_ms(&py, "optimizer_seconds"),
        100.0 * e("test_accuracy")(&rust[0]),
        100.0 * e("test_accuracy")(&py[0]),
        med(&rust, &|v: &Value| v["peak_rss_mb"].as_f64().unwrap_or(0.0)),
        med(&py, &|v: &Value| v["peak_rss_mb"].as_f64().unwrap_or(0.0)),
        top_rate,
        top_rate / rust_rate,
    );
    Ok((
        md,
        json!({"rust": rust, "python": py, "ratios": ratios, "top2": top, "top2_rss_mb": top_rss}),
    ))
}

/// One epoch of full fine-tuning of MobileNetV2 and EfficientNet-Lite0 on MNIST training
/// images at 64 px (2,048 images; 512 with `quick`), both stacks, same preprocessed
/// pixels and batches, frozen BatchNorm, no augmentation.
pub fn image_finetune_workload(
    root: &Path,
    out_dir: &Path,
    quick: bool,
    rounds: usize,
) -> Result<(String, Value)> {
    let cache = Cache::from_env();
    let torch = torch_python(root, &cache)?;
    let bench = root.join("target/release/image-finetune-bench");
    let (rows, resolution) = (if quick { 512 } else { 2048 }, 64);
    let mut md = format!(
        "\n| fine-tuning image networks (fp32), 1 epoch on {rows} MNIST images at {resolution} px, batch 32, 2 threads, same weights, pixels and batches, frozen BatchNorm | tl-finetune | PyTorch (plain torch modules, fused AdamW, OMP_WAIT_POLICY=PASSIVE) | ratio |\n|---|---|---|---|\n"
    );
    let mut raw = Vec::new();
    for model in ["mobilenetv2", "efficientnet-lite0"] {
        let dir = out_dir.join(format!("image-finetune-{model}"));
        let ok = Command::new(&bench)
            .arg("prepare")
            .arg(&dir)
            .args(["--model", model, "--rows", &rows.to_string()])
            .args(["--resolution", &resolution.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("image-finetune-bench prepare failed");
        }
        let script = root.join("tools/bench/image_finetune_torch.py");
        let (rust, py, ratios) = interleaved(
            &format!("image fine-tuning, {model}"),
            rounds,
            (&bench, &torch, &script),
            &dir,
            "images_per_second",
        )?;
        let med = median_of;
        let e = |k: &'static str| move |v: &Value| first_epoch(v, k);
        let steps = py[0]["epochs"][0]["steps"].as_f64().unwrap_or(1.0);
        let step_ms =
            |vs: &[Value], k: &'static str| med(vs, &|v: &Value| 1000.0 * e(k)(v) / steps);
        md += &format!(
            "| {model}: training throughput | {:.1} images/s | {:.1} | {:.2}x |\n| {model}: time per step, forward / backward / optimizer | {:.0} / {:.0} / {:.0} ms | {:.0} / {:.0} / {:.0} ms | |\n| {model}: test accuracy after the epoch (1,000 test images) | {:.1}% | {:.1}% | |\n| {model}: peak RSS | {:.0} MB | {:.0} MB | |\n",
            med(&rust, &e("images_per_second")),
            med(&py, &e("images_per_second")),
            median(&mut ratios.clone()),
            step_ms(&rust, "forward_seconds"),
            step_ms(&rust, "backward_seconds"),
            step_ms(&rust, "optimizer_seconds"),
            step_ms(&py, "forward_seconds"),
            step_ms(&py, "backward_seconds"),
            step_ms(&py, "optimizer_seconds"),
            100.0 * e("test_accuracy")(&rust[0]),
            100.0 * e("test_accuracy")(&py[0]),
            med(&rust, &|v: &Value| v["peak_rss_mb"].as_f64().unwrap_or(0.0)),
            med(&py, &|v: &Value| v["peak_rss_mb"].as_f64().unwrap_or(0.0)),
        );
        raw.push(json!({"model": model, "rust": rust, "python": py, "ratios": ratios}));
    }
    Ok((md, json!(raw)))
}
