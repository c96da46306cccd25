//! Writing a run's folder: `report.json` (complete, versioned), `summary.md`, CSV tables and
//! plots (learning curve, confusion matrices) as labelled SVG and as PNG.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::EvalError;
use crate::experiment::RunReport;

/// One file of a report folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFile {
    /// File name inside the folder.
    pub name: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

impl ReportFile {
    /// A text file.
    pub fn text(name: impl Into<String>, text: impl Into<String>) -> ReportFile {
        ReportFile {
            name: name.into(),
            bytes: text.into().into_bytes(),
        }
    }
}

/// A result that is written as a folder of files. Both runners' reports ([`RunReport`],
/// [`AdaptationReport`](crate::AdaptationReport)) are, so one writer, [`write_report`], serves
/// both.
pub trait Report {
    /// The folder's files, `report.json` and `summary.md` first.
    fn files(&self) -> Result<Vec<ReportFile>, EvalError>;
}

/// Writes every file of `report` into `dir` (created), each through the one crash-safe write
/// (a killed run never leaves a half-written file), and returns the paths written.
pub fn write_report(report: &impl Report, dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    fs::create_dir_all(dir).map_err(|e| EvalError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    report
        .files()?
        .into_iter()
        .map(|f| {
            let path = dir.join(&f.name);
            tl_core::fs::write_atomic(&path, &f.bytes).map_err(|e| EvalError::Io {
                path: path.clone(),
                source: e,
            })?;
            Ok(path)
        })
        .collect()
}

/// A system name as part of a file name.
fn file_part(s: &str) -> String {
    s.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
}

/// Peak resident memory while a result's system ran (fine-tuned: training; frozen: its
/// features), in MB.
fn peak_rss(report: &RunReport, r: &crate::RunResult) -> Option<f64> {
    match &r.tuning {
        Some(t) => t.peak_rss_mb,
        None => report
            .systems
            .iter()
            .find(|s| s.name == r.system)
            .and_then(|s| s.peak_rss_mb),
    }
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Report for RunReport {
    /// `report.json`, `summary.md`, `results.csv`, `per_class.csv`, with a few-shot curve
    /// `few_shot.csv` and the learning curve (SVG, PNG), and one confusion heatmap per system.
    fn files(&self) -> Result<Vec<ReportFile>, EvalError> {
        run_report_files(self)
    }
}

/// A figure's two files, `<stem>.svg` and `<stem>.png`, the PNG rasterised from that same SVG.
fn figure(stem: &str, svg: String) -> Result<[ReportFile; 2], EvalError> {
    let png = ReportFile {
        name: format!("{stem}.png"),
        bytes: crate::plot::svg_to_png(&svg)?,
    };
    Ok([ReportFile::text(format!("{stem}.svg"), svg), png])
}

fn run_report_files(report: &RunReport) -> Result<Vec<ReportFile>, EvalError> {
    let mut files = Vec::new();
    let json = serde_json::to_string_pretty(report).expect("report serialises");
    files.push(ReportFile::text("report.json", json));
    files.push(ReportFile::text("summary.md", markdown(report)));

    let mut csv = String::from(
        "system,head,accuracy,accuracy_low,accuracy_high,macro_f1,macro_f1_low,macro_f1_high,balanced_accuracy,log_loss,ece,roc_auc,average_precision,fit_seconds,chosen,peak_rss_mb\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in &report.results {
        let m = &r.metrics;
        let _ = writeln!(
            csv,
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{},{},{:.3},{},{}",
            csv_field(&r.system),
            r.head,
            r.accuracy.estimate,
            r.accuracy.low,
            r.accuracy.high,
            r.macro_f1.estimate,
            r.macro_f1.low,
            r.macro_f1.high,
            m.balanced_accuracy,
            opt(m.log_loss),
            opt(m.ece),
            opt(m.roc_auc),
            opt(m.average_precision),
            r.fit_seconds,
            csv_field(&crate::chosen_phrase(&r.chosen).unwrap_or_default()),
            peak_rss(report, r).map_or(String::new(), |v| format!("{v:.0}"))
        );
    }
    files.push(ReportFile::text("results.csv", csv));

    let tuned: Vec<(&crate::RunResult, &crate::Tuning)> = report
        .results
        .iter()
        .filter_map(|r| Some((r, r.tuning.as_ref()?)))
        .collect();
    if !tuned.is_empty() {
        let mut t_csv = String::from(
            "system,fold,epoch,train_loss,validation_accuracy,validation_loss,learning_rate,seconds,items_per_second,kept\n",
        );
        for (r, t) in &tuned {
            for f in &t.folds {
                for e in &f.epochs {
                    let _ = writeln!(
                        t_csv,
                        "{},{},{},{:.6},{},{},{},{:.3},{:.2},{}",
                        csv_field(&r.system),
                        f.fold,
                        e.epoch,
                        e.train_loss,
                        opt(e.validation_accuracy),
                        opt(e.validation_loss),
                        e.learning_rate,
                        e.seconds,
                        e.sentences_per_second,
                        e.epoch == f.best_epoch
                    );
                }
            }
        }
        files.push(ReportFile::text("training.csv", t_csv));
        let mut s_csv = String::from(
            "system,fold,configuration,learning_rate,batch_size,epochs,strategy,rung,units,validation_accuracy,validation_loss,train_loss,stopped_after_rung,chosen\n",
        );
        let mut searched = false;
        for (r, t) in &tuned {
            for f in &t.folds {
                let Some(search) = &f.search else { continue };
                searched = true;
                for (k, trial) in search.trials.iter().enumerate() {
                    let c = &trial.config;
                    for (rung, sc) in trial.scores.iter().enumerate() {
                        let _ = writeln!(
                            s_csv,
                            "{},{},{},{},{},{},{},{},{},{:.6},{},{:.6},{},{}",
                            csv_field(&r.system),
                            f.fold,
                            k + 1,
                            c.learning_rate,
                            c.batch_size,
                            c.epochs,
                            c.strategy,
                            rung + 1,
                            sc.units,
                            sc.accuracy,
                            sc.validation_loss
                                .map_or(String::new(), |l| format!("{l:.6}")),
                            sc.loss,
                            trial
                                .stopped_at
                                .map_or(String::new(), |s| (s + 1).to_string()),
                            k == search.chosen
                        );
                    }
                }
            }
        }
        if searched {
            files.push(ReportFile::text("search.csv", s_csv));
        }
        for (r, t) in &tuned {
            let stem = format!("training_{}", file_part(&r.system));
            files.extend(figure(&stem, training_curve_svg(&r.system, t))?);
        }
    }

    let mut per_class = String::from("system,head,label,precision,recall,f1,support\n");
    for r in &report.results {
        for c in &r.metrics.per_class {
            let _ = writeln!(
                per_class,
                "{},{},{},{:.6},{:.6},{:.6},{}",
                csv_field(&r.system),
                r.head,
                csv_field(&c.label),
                c.precision,
                c.recall,
                c.f1,
                c.support
            );
        }
    }
    files.push(ReportFile::text("per_class.csv", per_class));

    if !report.few_shot.is_empty() {
        let mut fs_csv = String::from("system,shots,mean,std,runs\n");
        for p in &report.few_shot {
            let runs: Vec<String> = p.runs.iter().map(|a| format!("{a:.4}")).collect();
            let _ = writeln!(
                fs_csv,
                "{},{},{:.6},{:.6},{}",
                csv_field(&p.system),
                p.shots,
                p.mean,
                p.std,
                runs.join(" ")
            );
        }
        files.push(ReportFile::text("few_shot.csv", fs_csv));
        files.extend(figure("learning_curve", learning_curve_svg(report))?);
    }
    // One heatmap per result; with several heads the head is in the name and the title.
    let several_heads = report.experiment.heads.len() > 1;
    for r in &report.results {
        let (stem, title) = if several_heads {
            (
                format!("confusion_{}_{}", file_part(&r.system), file_part(&r.head)),
                format!("{} / {}", r.system, r.head),
            )
        } else {
            (
                format!("confusion_{}", file_part(&r.system)),
                r.system.clone(),
            )
        };
        let svg = confusion_svg(&title, &r.metrics.confusion, &report.label_names);
        files.extend(figure(&stem, svg)?);
    }
    Ok(files)
}

/// The Markdown summary: verdicts first, then the table, ranking and curve.
pub fn markdown(report: &RunReport) -> String {
    let mut s = String::new();
    if report.experiment.name == report.dataset {
        let _ = writeln!(s, "# {}\n", report.experiment.name);
    } else {
        let _ = writeln!(s, "# {} on {}\n", report.experiment.name, report.dataset);
    }
    let proto = match &report.experiment.protocol {
        crate::Protocol::Split { train, test } => format!("given split ({train} / {test})"),
        crate::Protocol::Cv { folds } => format!("stratified {folds}-fold cross-validation"),
        crate::Protocol::Holdout { test_fraction } => {
            format!("stratified hold-out ({:.0}% test)", 100.0 * test_fraction)
        }
    };
    let _ = writeln!(
        s,
        "Protocol: {proto}; {} training rows, {} rows scored; {} classes; seed {}; 95% intervals from {} bootstrap resamples.\n",
        report.train_rows,
        report.test_rows,
        report.label_names.len(),
        report.experiment.seed,
        report.experiment.bootstrap
    );
    if !report.comparisons.is_empty() {
        s.push_str("## Verdict\n\n");
        for l in &report.levels {
            let _ = writeln!(s, "- **{}**", l.sentence);
        }
        for c in &report.comparisons {
            let _ = writeln!(s, "- {} (head: {})", c.verdict, c.head);
        }
        s.push('\n');
    }
    s.push_str("## Results\n\n| features | head | accuracy | 95% CI | macro-F1 | balanced acc. | log loss | ECE | fit (s) |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &report.results {
        let m = &r.metrics;
        let _ = writeln!(
            s,
            "| {} | {} | {:.1}% | [{:.1}, {:.1}] | {:.1}% | {:.1}% | {} | {} | {:.2} |",
            r.system,
            r.head,
            100.0 * r.accuracy.estimate,
            100.0 * r.accuracy.low,
            100.0 * r.accuracy.high,
            100.0 * r.macro_f1.estimate,
            100.0 * m.balanced_accuracy,
            m.log_loss.map_or("-".into(), |v| format!("{v:.3}")),
            m.ece.map_or("-".into(), |v| format!("{v:.3}")),
            r.fit_seconds
        );
    }
    let searched: Vec<_> = report
        .results
        .iter()
        .filter_map(|r| Some((r, crate::chosen_phrase(&r.chosen)?)))
        .collect();
    if !searched.is_empty() {
        let search = &report.experiment.search;
        let _ = writeln!(
            s,
            "\nHead hyperparameters chosen by {}-fold cross-validation inside each training part (nested: the scored rows took no part), on one grid for every system:\n",
            search.folds
        );
        for (r, phrase) in searched {
            let _ = writeln!(s, "- {} / {}: {phrase}", r.system, r.head);
        }
    }
    let tuned: Vec<_> = report
        .results
        .iter()
        .filter_map(|r| Some((r, r.tuning.as_ref()?)))
        .collect();
    if !tuned.is_empty() {
        s.push_str("\n## Fine-tuning\n\nEach fine-tuned system was trained inside every training part of the protocol (the scored rows took no part, early stopping included) and scored on the same rows as the other systems.\n\n| system | from | strategy | learning rate | batch | epochs (kept, per fold) | train / validation rows | time | estimated | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (r, t) in &tuned {
            let p = &t.params;
            let kept: Vec<String> = t
                .folds
                .iter()
                .map(|f| format!("{}/{}", f.best_epoch, f.epochs.len()))
                .collect();
            let first = t.folds.first();
            // A searched system shows each fold's choice.
            let per_fold = |f: &dyn Fn(&tl_finetune::search::Config) -> String| {
                let v: Vec<String> = t
                    .folds
                    .iter()
                    .filter_map(|fold| Some(f(&fold.search.as_ref()?.chosen_config())))
                    .collect();
                (!v.is_empty()).then(|| format!("{} (searched)", v.join(", ")))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {:.1} s | {:.1} s | {} |",
                r.system,
                t.backbone,
                per_fold(&|c| c.strategy.to_string()).unwrap_or_else(|| t.strategy.clone()),
                per_fold(&|c| format!("{:e}", c.learning_rate))
                    .unwrap_or_else(|| p["learning_rate"].to_string()),
                per_fold(&|c| c.batch_size.to_string())
                    .unwrap_or_else(|| p["batch_size"].to_string()),
                kept.join(", "),
                first.map_or(0, |f| f.train_rows),
                first.map_or(0, |f| f.validation_rows),
                r.fit_seconds,
                t.estimated_seconds,
                t.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0} MB"))
            );
        }
        s.push('\n');
        for (r, t) in &tuned {
            let _ = writeln!(
                s,
                "- {}{}: `{}`\n\n  ![training curve](training_{}.svg)\n",
                r.system,
                if t.folds.iter().any(|f| f.search.is_some()) {
                    " (the search's base configuration; the chosen one is below)"
                } else {
                    ""
                },
                serde_json::to_string(&t.params).unwrap_or_default(),
                file_part(&r.system)
            );
        }
        for (r, t) in &tuned {
            for f in &t.folds {
                if let Some(search) = &f.search {
                    s.push_str(&search_markdown(&r.system, f.fold, t.folds.len(), search));
                }
            }
        }
    }
    let warned: Vec<_> = report
        .results
        .iter()
        .filter(|r| !r.warnings.is_empty())
        .collect();
    if !warned.is_empty() {
        s.push_str("\n**Warnings** (the figures above are of these fits as they are):\n\n");
        for r in warned {
            let _ = writeln!(
                s,
                "- {} / {}: {} fits: {}",
                r.system,
                r.head,
                r.warnings.len(),
                r.warnings.join("; ")
            );
        }
    }
    if let Some(sentence) = crate::ranking_sentence(&report.ranking, &report.pairwise) {
        let _ = writeln!(s, "\nBackbones ranked on this data: {sentence}.");
    }
    if !report.few_shot.is_empty() {
        let mut shots: Vec<usize> = report.few_shot.iter().map(|p| p.shots).collect();
        // "all" (0) goes last.
        shots.sort_unstable_by_key(|&k| if k == 0 { usize::MAX } else { k });
        shots.dedup();
        let label = |k: usize| {
            if k == 0 {
                "all".to_string()
            } else {
                k.to_string()
            }
        };
        s.push_str("\n## Few-shot learning curve (accuracy %, mean +- sd over seeds)\n\n");
        if report.experiment.search.enabled {
            let _ = writeln!(
                s,
                "Head: {} as written (a few rows per class leave nothing to search on).\n",
                report.experiment.heads[0].label()
            );
        }
        s.push_str("| features |");
        for &k in &shots {
            let _ = write!(s, " k={} |", label(k));
        }
        s.push_str("\n|---|");
        for _ in &shots {
            s.push_str("---|");
        }
        s.push('\n');
        for sys in curve_systems(report) {
            let _ = write!(s, "| {sys} |");
            for &k in &shots {
                match report
                    .few_shot
                    .iter()
                    .find(|p| p.system == sys && p.shots == k)
                {
                    Some(p) => {
                        let _ = write!(s, " {:.1} +- {:.1} |", 100.0 * p.mean, 100.0 * p.std);
                    }
                    None => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
        if !report.few_shot_comparisons.is_empty() {
            s.push_str("\nFine-tuned against frozen features on the same draws and test rows (paired over every draw and row):\n\n");
            for c in &report.few_shot_comparisons {
                let _ = writeln!(
                    s,
                    "- k = {}, {} draws: {}",
                    if c.shots == 0 {
                        "all".to_string()
                    } else {
                        c.shots.to_string()
                    },
                    c.draws,
                    c.verdict
                );
            }
        }
        s.push_str("\n![learning curve](learning_curve.svg)\n");
    }
    s.push_str("\n## Features\n\n| features | kind | dim | from cache | computed | seconds | fingerprint |\n|---|---|---|---|---|---|---|\n");
    for f in &report.systems {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {} |",
            f.name,
            f.kind,
            if f.dim == 0 {
                "per fold".into()
            } else {
                f.dim.to_string()
            },
            f.cache_hits,
            f.computed,
            f.seconds,
            f.fingerprint.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        s,
        "\nRun took {:.1} s (tl {}). Everything above is in `report.json`.",
        report.seconds, report.tool_version
    );
    s
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22",
];

/// One search's table: every configuration's validation accuracy at each rung it
/// reached, where it stopped, and which was chosen.
fn search_markdown(
    system: &str,
    fold: usize,
    folds: usize,
    search: &tl_finetune::SearchReport,
) -> String {
    let mut s = String::new();
    let part = if folds > 1 {
        format!(", fold {fold}")
    } else {
        String::new()
    };
    let rungs: Vec<String> = search
        .plan
        .rungs
        .iter()
        .map(|g| format!("{} units ({} in, {} on)", g.units, g.entering, g.keep))
        .collect();
    let _ = writeln!(
        s,
        "\n### Search: {system}{part}\n\nSuccessive halving over {} configurations, all scored on the same validation part of the training rows (accuracy, then cross-entropy in parentheses for ties); rungs at {}. Trained {} units in all, {:.2} runs of the base configuration ({} units; at worst {:.2}), in {:.0} s. Chosen: **{}**.\n",
        search.trials.len(),
        rungs.join(", "),
        search.trained_units,
        search.cost_in_runs,
        search.plan.base_units,
        search.plan.worst_units / search.plan.base_units as f64,
        search.seconds,
        search.chosen_config()
    );
    let mut header = String::from("| # | configuration |");
    let mut rule = String::from("|---|---|");
    for k in 0..search.plan.rungs.len() {
        let _ = write!(header, " rung {} |", k + 1);
        rule.push_str("---|");
    }
    header.push_str(" end of run | stopped |");
    rule.push_str("---|---|");
    let _ = writeln!(s, "{header}\n{rule}");
    for (i, trial) in search.trials.iter().enumerate() {
        let mut row = format!(
            "| {}{} | {} |",
            i + 1,
            if i == search.chosen { " (chosen)" } else { "" },
            trial.config
        );
        for k in 0..=search.plan.rungs.len() {
            match trial.scores.get(k) {
                Some(sc) => {
                    let _ = write!(
                        row,
                        " {:.1}%{} |",
                        100.0 * sc.accuracy,
                        sc.validation_loss
                            .map_or(String::new(), |l| format!(" ({l:.3})"))
                    );
                }
                None => row.push_str(" |"),
            }
        }
        let _ = write!(
            row,
            " {} |",
            trial
                .stopped_at
                .map_or("-".to_string(), |k| format!("after rung {}", k + 1))
        );
        let _ = writeln!(s, "{row}");
    }
    s
}

/// A fine-tuned system's training: loss (left panel) and validation accuracy (right
/// panel, when a validation part was held out) per epoch, one line per training part; the
/// epoch whose weights were kept is circled.
pub fn training_curve_svg(system: &str, t: &crate::Tuning) -> String {
    let (w, h) = (820.0, 400.0);
    let has_validation = t
        .folds
        .iter()
        .any(|f| f.epochs.iter().any(|e| e.validation_accuracy.is_some()));
    let legend_w = if t.folds.len() > 1 { 90.0 } else { 0.0 };
    let panels = if has_validation { 2.0 } else { 1.0 };
    let panel_w = (w - legend_w - 40.0) / panels;
    // A searched system trained what its search chose (per training part), not the base
    // strategy its table names.
    let mut chosen: Vec<String> = t
        .folds
        .iter()
        .filter_map(|f| f.search.as_ref())
        .map(|r| r.chosen_config().strategy.to_string())
        .collect();
    chosen.sort();
    chosen.dedup();
    let trained = if chosen.is_empty() {
        t.strategy.clone()
    } else {
        format!("{}, searched", chosen.join(" / "))
    };
    let title = format!(
        "{system}: training per epoch ({trained} from {})",
        t.backbone
    );
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        (w - legend_w) / 2.0,
        xml(&title)
    );
    let series =
        |value: &dyn Fn(&tl_finetune::EpochLog) -> Option<f64>| -> Vec<Vec<(f64, f64, bool)>> {
            t.folds
                .iter()
                .map(|f| {
                    f.epochs
                        .iter()
                        .filter_map(|e| Some((e.epoch as f64, value(e)?, e.epoch == f.best_epoch)))
                        .collect()
                })
                .collect()
        };
    line_panel(
        &mut s,
        (20.0, 40.0, panel_w, h - 64.0),
        "training loss (mean over the epoch)",
        &series(&|e| Some(e.train_loss)),
        "",
    );
    if has_validation {
        line_panel(
            &mut s,
            (20.0 + panel_w, 40.0, panel_w, h - 64.0),
            "validation accuracy (held out from the training part)",
            &series(&|e| e.validation_accuracy.map(|v| 100.0 * v)),
            "%",
        );
    }
    if t.folds.len() > 1 {
        for (i, f) in t.folds.iter().enumerate() {
            let y = 70.0 + 20.0 * i as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{y:.1}\">fold {}</text>",
                w - legend_w,
                y - 4.0,
                PALETTE[i % PALETTE.len()],
                w - legend_w + 20.0,
                f.fold
            );
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\" font-size=\"11\">circled: the epoch whose weights were kept</text>",
        (w - legend_w) / 2.0,
        h - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// One panel of line charts: `lines` of (x, y, marked) points over a shared x range, with
/// gridlines, tick labels (with `unit`), x label `epoch` and `title` above.
fn line_panel(
    s: &mut String,
    (x0, y0, pw, ph): (f64, f64, f64, f64),
    title: &str,
    lines: &[Vec<(f64, f64, bool)>],
    unit: &str,
) {
    let (left, right, top, bottom) = (x0 + 58.0, x0 + pw - 16.0, y0 + 26.0, y0 + ph - 46.0);
    let pts = lines.iter().flatten();
    let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max);
    let (mut ymin, mut ymax) = pts
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if !ymin.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    }
    if ymax - ymin < 1e-9 {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    let pad = 0.08 * (ymax - ymin);
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let px = |x: f64| {
        if xmax <= 1.0 {
            (left + right) / 2.0
        } else {
            left + (x - 1.0) / (xmax - 1.0) * (right - left)
        }
    };
    let py = |y: f64| bottom - (y - ymin) / (ymax - ymin) * (bottom - top);
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
        (left + right) / 2.0,
        y0 + 14.0,
        xml(title)
    );
    // Ticks at round values: 1, 2 or 5 times a power of ten, about four of them, and never
    // fewer than two (one label on an axis gives no scale).
    let raw = (ymax - ymin) / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|st| *st >= raw)
        .unwrap_or(10.0 * mag);
    // The first and last tick, as multiples of the step.
    let span = |st: f64| ((ymin / st).ceil() as i64, (ymax / st).floor() as i64);
    while span(step).1 - span(step).0 < 1 && step > raw / 100.0 {
        // The next round value down: 10 -> 5 -> 2 -> 1 (times a power of ten).
        let m = step / 10f64.powf(step.log10().floor());
        step *= if (m - 5.0).abs() < 1e-9 { 0.4 } else { 0.5 };
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let (first, last) = span(step);
    for i in first..=last {
        let y = i as f64 * step;
        let _ = writeln!(
            s,
            "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{1:.1}\" y=\"{2:.1}\" text-anchor=\"end\">{3:.decimals$}{unit}</text>",
            py(y),
            left - 6.0,
            py(y) + 4.0,
            y
        );
    }
    let step = (xmax / 10.0).ceil().max(1.0) as usize;
    for e in (1..=xmax as usize).step_by(step) {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{bottom:.1}\" y2=\"{1:.1}\" stroke=\"#333\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{e}</text>",
            px(e as f64),
            bottom + 5.0,
            bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{bottom:.1}\" y2=\"{bottom:.1}\" stroke=\"#333\"/><line x1=\"{left:.1}\" x2=\"{left:.1}\" y1=\"{top:.1}\" y2=\"{bottom:.1}\" stroke=\"#333\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">epoch</text>",
        (left + right) / 2.0,
        bottom + 36.0
    );
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = line
            .iter()
            .map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        // One epoch is a point, not a line.
        if path.len() > 1 {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                path.join(" ")
            );
        }
        for (x, y, kept) in line {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(*x),
                py(*y)
            );
            if *kept {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"7\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                    px(*x),
                    py(*y)
                );
            }
        }
        s.push('\n');
    }
}

/// Feature systems in the order they first appear in the learning curve.
fn curve_systems(report: &RunReport) -> Vec<&str> {
    let mut systems: Vec<&str> = Vec::new();
    for p in &report.few_shot {
        if !systems.contains(&p.system.as_str()) {
            systems.push(&p.system);
        }
    }
    systems
}

/// One system's learning curve: its name and (x, mean, sd) points.
type Series<'r> = (&'r str, Vec<(f64, f64, f64)>);

/// Geometry the SVG and PNG learning curves share: a log2 x axis of examples per class with
/// "all" one step right of the largest k, accuracy on y from the lowest mean - sd.
struct CurveLayout {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    shots: Vec<usize>,
    max_k: usize,
    xmin: f64,
    xmax: f64,
    ymin: f64,
}

impl CurveLayout {
    fn new(report: &RunReport) -> CurveLayout {
        let mut shots: Vec<usize> = report.few_shot.iter().map(|p| p.shots).collect();
        shots.sort_unstable();
        shots.dedup();
        let max_k = shots.iter().copied().filter(|&k| k > 0).max().unwrap_or(1);
        let mut l = CurveLayout {
            w: 720.0,
            h: 440.0,
            left: 70.0,
            right: 190.0,
            top: 40.0,
            bottom: 60.0,
            shots,
            max_k,
            xmin: 0.0,
            xmax: 0.0,
            ymin: 0.0,
        };
        let xs: Vec<f64> = l.shots.iter().map(|&k| l.xval(k)).collect();
        l.xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
        l.xmax = xs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(l.xmin + 1.0);
        let lo = report
            .few_shot
            .iter()
            .map(|p| p.mean - p.std)
            .fold(1.0, f64::min);
        l.ymin = (lo * 10.0).floor() / 10.0;
        l
    }

    fn xval(&self, k: usize) -> f64 {
        if k == 0 {
            (self.max_k as f64).log2() + 1.0
        } else {
            (k as f64).log2()
        }
    }

    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.xmin) / (self.xmax - self.xmin) * (self.w - self.left - self.right)
    }

    fn py(&self, y: f64) -> f64 {
        self.top + (1.0 - (y - self.ymin) / (1.0 - self.ymin)) * (self.h - self.top - self.bottom)
    }

    /// Gridline values, every 10 points from `ymin` to 100%.
    fn grid(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut y = self.ymin;
        while y <= 1.0001 {
            out.push(y);
            y += 0.1;
        }
        out
    }

    /// One series per system: (x, mean, sd) sorted by x.
    fn series<'r>(&self, report: &'r RunReport) -> Vec<Series<'r>> {
        curve_systems(report)
            .into_iter()
            .map(|sys| {
                let mut pts: Vec<(f64, f64, f64)> = report
                    .few_shot
                    .iter()
                    .filter(|p| p.system == sys)
                    .map(|p| (self.xval(p.shots), p.mean, p.std))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (sys, pts)
            })
            .collect()
    }
}

/// Accuracy against examples per class (log2 axis), one line per feature system, bars = sd.
pub fn learning_curve_svg(report: &RunReport) -> String {
    let l = CurveLayout::new(report);
    let (w, h, left, right, top, bottom) = (l.w, l.h, l.left, l.right, l.top, l.bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}: accuracy vs labelled examples per class</text>\n",
        (left + w - right) / 2.0,
        xml(&report.dataset)
    );
    for y in l.grid() {
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            w - right,
            l.py(y),
            l.py(y),
            left - 6.0,
            l.py(y) + 4.0,
            100.0 * y
        );
    }
    for &k in &l.shots {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            l.px(l.xval(k)),
            h - bottom + 18.0,
            if k == 0 { "all".into() } else { k.to_string() }
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">labelled examples per class (log scale{})</text>",
        (left + w - right) / 2.0,
        h - 18.0,
        if l.shots.contains(&0) {
            "; all = every training row"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "<text transform=\"translate(18,{:.1}) rotate(-90)\" text-anchor=\"middle\">test accuracy (mean ± sd over draws)</text>",
        (top + h - bottom) / 2.0
    );
    for (si, (sys, pts)) in l.series(report).into_iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, m, _)| format!("{:.1},{:.1}", l.px(*x), l.py(*m)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, m, sd) in &pts {
            let (y0, y1) = (l.py((m + sd).min(1.0)), l.py((m - sd).max(l.ymin)));
            // A bar of no length (every draw scored the same) has nothing to stroke.
            if y1 - y0 >= 0.5 {
                let _ = write!(
                    s,
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{y0:.1}\" y2=\"{y1:.1}\" stroke=\"{color}\"/>",
                    l.px(*x)
                );
            }
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>",
                l.px(*x),
                l.py(*m)
            );
        }
        let ly = top + 20.0 + 20.0 * si as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 14.0,
            ly - 4.0,
            w - right + 34.0,
            ly,
            xml(sys)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Width of `text` at `size` px in DejaVu Sans, the figures' font (0.62 em per character is
/// its average; the margins are sized from it so that nothing is clipped).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * 0.62 * size
}

/// A confusion-matrix heatmap, rows = true class, cells shaded by row-normalised counts, each
/// cell's count written in it when the cells are large enough (fewer than about 20 classes).
pub fn confusion_svg(system: &str, confusion: &[Vec<usize>], labels: &[String]) -> String {
    let k = labels.len().max(1);
    let cell = (480.0 / k as f64).clamp(14.0, 60.0);
    let label_w = labels
        .iter()
        .map(|l| text_width(l, 11.0))
        .fold(0.0, f64::max);
    let top = 64.0;
    let size = cell * k as f64;
    // Column labels are turned 60 degrees: they reach sin(60) of their length below the grid.
    let bottom = 0.87 * label_w + 46.0;
    let title = format!("Confusion matrix: {system}");
    let subtitle = "rows: true class, columns: predicted; shade: share of the row";
    let plot_w = 34.0 + label_w + size + 30.0;
    let w = plot_w
        .max(text_width(&title, 14.0) + 40.0)
        .max(text_width(subtitle, 11.0) + 40.0);
    // Centred under a title wider than the grid and its labels.
    let axis_x = 14.0 + (w - plot_w) / 2.0;
    let left = axis_x + 20.0 + label_w;
    let h = top + size + bottom;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n<text x=\"{:.1}\" y=\"42\" text-anchor=\"middle\" fill=\"#555\">{subtitle}</text>\n<text transform=\"translate({axis_x:.1},{:.1}) rotate(-90)\" text-anchor=\"middle\">true class</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">predicted class</text>\n",
        w / 2.0,
        xml(&title),
        w / 2.0,
        top + size / 2.0,
        left + size / 2.0,
        h - 10.0
    );
    for (t, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &c) in row.iter().enumerate() {
            let frac = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - frac)).round() as u8;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#eee\"><title>{} -> {}: {c}</title></rect>",
                left + p as f64 * cell,
                top + t as f64 * cell,
                xml(&labels[t]),
                xml(&labels[p])
            );
            if cell >= 24.0 {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{}\">{c}</text>",
                    left + (p as f64 + 0.5) * cell,
                    top + (t as f64 + 0.5) * cell + 4.0,
                    if frac > 0.5 { "white" } else { "black" }
                );
            }
            s.push('\n');
        }
    }
    for (i, l) in labels.iter().enumerate() {
        let c = (i as f64 + 0.5) * cell;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text transform=\"translate({:.1},{:.1}) rotate(-60)\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            top + c + 4.0,
            xml(l),
            left + c + 4.0,
            top + size + 10.0,
            xml(l)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The learning curve as PNG: [`learning_curve_svg`] rasterised, every label included.
pub fn learning_curve_png(report: &RunReport) -> Result<Vec<u8>, EvalError> {
    crate::plot::svg_to_png(&learning_curve_svg(report))
}

/// A confusion heatmap as PNG: [`confusion_svg`] rasterised, every label included.
pub fn confusion_png(
    system: &str,
    confusion: &[Vec<usize>],
    labels: &[String],
) -> Result<Vec<u8>, EvalError> {
    crate::plot::svg_to_png(&confusion_svg(system, confusion, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The searched system of `tl tune --model mobilenetv2 --dataset mnist --rows 4000
    /// --resolution 64`, trimmed to two trials: the table names `full`, the search chose
    /// `top:4`, and the validation accuracy moved 0.7 points over the two epochs.
    fn searched() -> crate::Tuning {
        let epoch = |e: usize, loss: f64, acc: f64| {
            serde_json::json!({"epoch": e, "train_loss": loss, "validation_accuracy": acc,
                "learning_rate": 0.0002, "seconds": 5.0, "sentences_per_second": 500.0,
                "forward_seconds": 4.0, "backward_seconds": 0.8, "optimizer_seconds": 0.1})
        };
        let trial = |strategy: &str, stopped: Option<usize>| {
            serde_json::json!({"config": {"learning_rate": 0.0005, "batch_size": 32,
                "epochs": 2, "strategy": strategy}, "scores": [], "stopped_at": stopped,
                "units": 640, "seconds": 1.0})
        };
        serde_json::from_value(serde_json::json!({
            "backbone": "mobilenetv2", "strategy": "full", "params": {},
            "estimated_seconds": 120.0,
            "folds": [{"fold": 1, "train_rows": 2521, "validation_rows": 280,
                "best_epoch": 1, "seconds": 10.0,
                "epochs": [epoch(1, 0.92, 0.9288), epoch(2, 0.31, 0.9217)],
                "search": {"trials": [trial("full", Some(1)), trial("top:4", None)],
                    "chosen": 1, "trained_units": 17000, "cost_in_runs": 2.3,
                    "seconds": 58.0, "plan": {"rungs": [{"units": 630, "entering": 12,
                    "keep": 4}], "worst_units": 22669.3, "base_units": 7560}}}]
        }))
        .expect("a tuning record")
    }

    #[test]
    fn a_searched_systems_curve_names_what_its_search_chose() {
        let svg = training_curve_svg("mobilenetv2-full-searched", &searched());
        assert!(
            svg.contains("training per epoch (top:4, searched from mobilenetv2)"),
            "{svg}"
        );
        let mut plain = searched();
        plain.folds[0].search = None;
        let svg = training_curve_svg("mobilenetv2-full-fixed", &plain);
        assert!(svg.contains("training per epoch (full from mobilenetv2)"));
    }

    #[test]
    fn a_narrow_axis_still_has_two_labelled_ticks() {
        // Validation 92.2% and 92.9%: one tick (92.5%) gave no scale.
        let svg = training_curve_svg("s", &searched());
        let panel = svg
            .split("validation accuracy")
            .nth(1)
            .expect("a validation panel");
        let labels = panel.matches("%</text>").count();
        assert!(labels >= 2, "{labels} labelled ticks: {panel}");
    }
}
