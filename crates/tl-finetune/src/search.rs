//! Hyperparameter search for fine-tuning by successive halving: every configuration
//! trains a little, the best third continues three times as far, and so on until one
//! finishes its whole run; the rest are stopped where they trailed. The rungs are placed
//! so that the worst case costs at most `budget` runs of the base configuration (units
//! trained, validation passes included), and all configurations are scored on one
//! validation part carved from the training rows: the test rows never choose.

use std::cmp::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tl_core::Rng;

use tl_assets::manifest::ImageSpec;
use tl_backbone::ImageInput;

use crate::FinetuneError;
use crate::bert::BertClassifier;
use crate::cnn::ConvNet;
use crate::fit::{Learner, LoopSettings, Trainer, Validation, logged_validation};
use crate::train::{
    EpochLog, FinetuneParams, FinetuneReport, FrozenStates, RunOptions, Strategy, fnv,
    text_learner, text_split,
};
use crate::vision::ImageParams;

/// What a search tries: lists of values for the hyperparameters that matter most (an
/// empty list keeps the base configuration's value), how many configurations of their
/// grid are tried, and how hard they are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSpace {
    /// Peak learning rates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learning_rate: Vec<f32>,
    /// Items per step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batch_size: Vec<usize>,
    /// Passes over the training rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<usize>,
    /// How many layers train: `full`, `top:N` or `head`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strategy: Vec<Strategy>,
    /// Configurations tried; a larger grid is sampled (with the run's seed), the base
    /// configuration first when it is on the grid.
    pub configurations: usize,
    /// One configuration in `eta` continues at each rung.
    pub eta: usize,
    /// Worst-case cost, in runs of the base configuration.
    pub budget: f32,
}

impl Default for SearchSpace {
    fn default() -> Self {
        SearchSpace {
            learning_rate: Vec::new(),
            batch_size: Vec::new(),
            epochs: Vec::new(),
            strategy: Vec::new(),
            configurations: 12,
            eta: 3,
            budget: 3.0,
        }
    }
}

/// The hyperparameters one configuration of a search sets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Items per step.
    pub batch_size: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// What trains.
    pub strategy: Strategy,
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lr {:e}, batch {}, {} epoch{}, {}",
            self.learning_rate,
            self.batch_size,
            self.epochs,
            if self.epochs == 1 { "" } else { "s" },
            self.strategy
        )
    }
}

impl SearchSpace {
    /// Checks the lists and settings; the message names the key.
    pub fn check(&self) -> Result<(), FinetuneError> {
        let err = |m: String| Err(FinetuneError::Params(format!("search: {m}")));
        if let Some(v) = self
            .learning_rate
            .iter()
            .find(|v| !(**v > 0.0 && **v <= 1.0))
        {
            return err(format!("learning_rate values must be in (0, 1], got {v}"));
        }
        if let Some(v) = self.batch_size.iter().find(|v| !(1..=4096).contains(*v)) {
            return err(format!("batch_size values must be in 1..=4096, got {v}"));
        }
        if let Some(v) = self.epochs.iter().find(|v| !(1..=1000).contains(*v)) {
            return err(format!("epochs values must be in 1..=1000, got {v}"));
        }
        if self.strategy.contains(&Strategy::Contrastive) {
            return err(
                "strategy cannot include contrastive: it is validated by another head, so its scores do not compare with the others'".into(),
            );
        }
        if !(2..=256).contains(&self.configurations) {
            return err(format!(
                "configurations must be in 2..=256, got {}",
                self.configurations
            ));
        }
        if !(2..=10).contains(&self.eta) {
            return err(format!("eta must be in 2..=10, got {}", self.eta));
        }
        if !(self.budget >= 1.0 && self.budget <= 100.0) {
            return err(format!(
                "budget must be in [1, 100] runs, got {}",
                self.budget
            ));
        }
        let grid = [
            self.learning_rate.len(),
            self.batch_size.len(),
            self.epochs.len(),
            self.strategy.len(),
        ];
        if grid.iter().all(|&n| n <= 1) {
            return err(
                "nothing to search: give two or more values of learning_rate, batch_size, epochs or strategy".into(),
            );
        }
        Ok(())
    }

    /// The configurations tried, around `base`: `base` first when it is on the grid (ties
    /// go to it), then the rest of the grid, or, when the grid holds more than
    /// `configurations`, a seeded sample that uses every listed value about equally often.
    pub fn configs(&self, base: Config, seed: u64) -> Vec<Config> {
        fn or<T: Copy>(v: &[T], d: T) -> Vec<T> {
            if v.is_empty() { vec![d] } else { v.to_vec() }
        }
        let mut grid = Vec::new();
        for &strategy in &or(&self.strategy, base.strategy) {
            for &epochs in &or(&self.epochs, base.epochs) {
                for &batch_size in &or(&self.batch_size, base.batch_size) {
                    for &learning_rate in &or(&self.learning_rate, base.learning_rate) {
                        grid.push(Config {
                            learning_rate,
                            batch_size,
                            epochs,
                            strategy,
                        });
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(self.configurations);
        if let Some(k) = grid.iter().position(|c| *c == base) {
            out.push(grid.remove(k));
        }
        if out.len() + grid.len() <= self.configurations {
            out.extend(grid);
            return out;
        }
        // A balanced sample: each next configuration is the one (in a seeded order) whose
        // values have been used least so far, so every listed value is tried and none
        // crowds the others out (a plain random 12 of 36 can miss a learning rate).
        Rng::new(seed ^ fnv("search")).shuffle(&mut grid);
        let keys = |c: &Config| {
            [
                format!("lr{:e}", c.learning_rate),
                format!("b{}", c.batch_size),
                format!("e{}", c.epochs),
                format!("s{}", c.strategy),
            ]
        };
        let mut used: std::collections::HashMap<String, usize> = Default::default();
        for c in &out {
            for k in keys(c) {
                *used.entry(k).or_default() += 1;
            }
        }
        while out.len() < self.configurations && !grid.is_empty() {
            let cost = |c: &Config| -> usize {
                keys(c)
                    .iter()
                    .map(|k| used.get(k).copied().unwrap_or(0))
                    .sum()
            };
            let best = (0..grid.len())
                .min_by_key(|&i| cost(&grid[i]))
                .expect("not empty");
            let c = grid.remove(best);
            for k in keys(&c) {
                *used.entry(k).or_default() += 1;
            }
            out.push(c);
        }
        out
    }
}

/// One rung: every configuration entering it trains to `units`, then `keep` continue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// Units (rows, or pairs) trained by then.
    pub units: u64,
    /// Configurations entering the rung.
    pub entering: usize,
    /// Configurations that continue past it.
    pub keep: usize,
}

/// Where successive halving compares configurations, and what that costs at worst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalvingPlan {
    /// The intermediate rungs; the survivors of the last run to their own end.
    pub rungs: Vec<Rung>,
    /// Worst-case units trained (every survivor running its longest), with each
    /// validation pass counted as `validation_units`.
    pub worst_units: f64,
    /// Units of one run of the base configuration: the unit of `budget`.
    pub base_units: u64,
}

/// Places the rungs for `n` configurations, cut to one in `eta` each time, so that the
/// worst case (every survivor trains `longest` units) costs at most `budget` times
/// `base_units`; a validation pass costs `validation_units`. Rungs are multiples of
/// `eta`: `r, eta r, eta^2 r, ...`.
pub fn plan_halving(
    n: usize,
    eta: usize,
    base_units: u64,
    longest: u64,
    longest_epochs: usize,
    budget: f32,
    validation_units: f64,
) -> Result<HalvingPlan, FinetuneError> {
    if n < 2 || eta < 2 {
        return Err(FinetuneError::Params(
            "search: needs two or more configurations and eta >= 2".into(),
        ));
    }
    // Entering counts: n, n/eta, ... down to 1 (the last enters the final run).
    let mut entering = vec![n];
    while *entering.last().expect("n") > 1 {
        let m = *entering.last().expect("n");
        entering.push((m / eta).max(1));
    }
    let finalists = entering.pop().expect("one");
    let scale: Vec<f64> = (0..entering.len())
        .map(|k| (eta as f64).powi(k as i32))
        .collect();
    // Cost = r * (sum_k m_k (s_k - s_{k-1}) - finalists s_last) + finalists * longest + evals.
    let mut coef = 0.0;
    for (k, &m) in entering.iter().enumerate() {
        let prev = if k == 0 { 0.0 } else { scale[k - 1] };
        coef += m as f64 * (scale[k] - prev);
    }
    coef -= finalists as f64 * scale.last().expect("one rung");
    let evals =
        (entering.iter().sum::<usize>() + finalists * longest_epochs) as f64 * validation_units;
    let allowed = budget as f64 * base_units as f64;
    let fixed = finalists as f64 * longest as f64 + evals;
    // Within the budget, and no later than the plain geometric ladder ending at the
    // longest run (r, eta r, ..., longest) when the budget allows more.
    let ladder = longest as f64 / (eta as f64).powi(entering.len() as i32);
    let r = ((allowed - fixed) / coef).min(ladder);
    if r.is_nan() || r < 1.0 {
        return Err(FinetuneError::Params(format!(
            "search: {n} configurations do not fit in {budget} runs of the base configuration ({} units each; the longest configuration trains {longest}); try fewer configurations, a larger eta or a larger budget",
            base_units
        )));
    }
    let rungs = entering
        .iter()
        .enumerate()
        .map(|(k, &m)| Rung {
            units: (r * scale[k]).floor() as u64,
            entering: m,
            keep: entering.get(k + 1).copied().unwrap_or(finalists),
        })
        .collect::<Vec<_>>();
    let worst = rungs.iter().enumerate().fold(fixed, |acc, (k, g)| {
        let prev = if k == 0 { 0 } else { rungs[k - 1].units };
        acc + g.entering as f64 * (g.units - prev) as f64
    }) - finalists as f64 * rungs.last().expect("one").units as f64;
    Ok(HalvingPlan {
        rungs,
        worst_units: worst,
        base_units,
    })
}

/// A configuration's standing at a rung.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RungScore {
    /// Units trained by then.
    pub units: u64,
    /// Validation accuracy (the best of its finished epochs and its weights now; at the
    /// end of its run, the epoch it keeps).
    pub accuracy: f64,
    /// Validation cross-entropy of the same weights as `accuracy` (breaks ties of
    /// accuracy, which a few hundred validation rows make common).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Mean training loss of the units since the previous rung (breaks remaining ties).
    pub loss: f64,
}

/// What a configuration is scored by at a rung: its best finished epoch when that beats
/// its weights now (or its run is done), else its weights now. Accuracy and loss always
/// come from the same weights, so the tie-breaker judges what the accuracy judged.
fn rung_validation(best: Option<Validation>, now: Validation, done: bool) -> Validation {
    match best {
        Some(best) if done || best.accuracy > now.accuracy => best,
        _ => now,
    }
}

fn better(a: (usize, &RungScore), b: (usize, &RungScore)) -> Ordering {
    let vloss = |s: &RungScore| s.validation_loss.unwrap_or(f64::INFINITY);
    b.1.accuracy
        .total_cmp(&a.1.accuracy)
        .then(vloss(a.1).total_cmp(&vloss(b.1)))
        .then(a.1.loss.total_cmp(&b.1.loss))
        .then(a.0.cmp(&b.0))
}

/// What successive halving decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Halving {
    /// Per configuration, its score at each rung it reached (the last at its end when it
    /// was never stopped).
    pub scores: Vec<Vec<RungScore>>,
    /// Per configuration, the rung after which it was stopped (none: it ran to its end).
    pub stopped_at: Vec<Option<usize>>,
    /// The configuration chosen: the best at the end of its run.
    pub chosen: usize,
}

/// Runs successive halving over `n` configurations: `advance(i, Some(units))` trains
/// configuration `i` until `units` and scores it, `advance(i, None)` finishes its run
/// and scores the weights it keeps. `on_cut(rung, kept, stopped)` hears each decision.
#[allow(clippy::type_complexity)]
pub fn successive_halving<E>(
    plan: &HalvingPlan,
    n: usize,
    advance: &mut dyn FnMut(usize, Option<u64>) -> Result<RungScore, E>,
    on_cut: &mut dyn FnMut(usize, &[usize], &[usize]),
) -> Result<Halving, E> {
    let mut scores = vec![Vec::new(); n];
    let mut stopped_at = vec![None; n];
    let mut alive: Vec<usize> = (0..n).collect();
    for (k, rung) in plan.rungs.iter().enumerate() {
        for &i in &alive {
            let s = advance(i, Some(rung.units))?;
            scores[i].push(s);
        }
        let mut ranked = alive.clone();
        ranked.sort_by(|&a, &b| {
            better(
                (a, scores[a].last().expect("scored")),
                (b, scores[b].last().expect("scored")),
            )
        });
        let stopped = ranked.split_off(rung.keep.min(ranked.len()));
        for &i in &stopped {
            stopped_at[i] = Some(k);
        }
        on_cut(k, &ranked, &stopped);
        alive = ranked;
    }
    for &i in &alive {
        let s = advance(i, None)?;
        scores[i].push(s);
    }
    let chosen = *alive
        .iter()
        .min_by(|&&a, &&b| {
            better(
                (a, scores[a].last().expect("scored")),
                (b, scores[b].last().expect("scored")),
            )
        })
        .expect("at least one finalist");
    Ok(Halving {
        scores,
        stopped_at,
        chosen,
    })
}

/// One configuration of a finished search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    /// Its hyperparameters.
    pub config: Config,
    /// Its score at each rung it reached.
    pub scores: Vec<RungScore>,
    /// The rung after which it was stopped (0-based; none: it ran to its end).
    pub stopped_at: Option<usize>,
    /// Units it trained.
    pub units: u64,
    /// Seconds it trained and was validated.
    pub seconds: f64,
}

/// What a search did, for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchReport {
    /// Every configuration tried, in the order tried (the base configuration first when
    /// it was on the grid).
    pub trials: Vec<TrialReport>,
    /// Index of the chosen configuration in `trials`.
    pub chosen: usize,
    /// The rungs and the worst-case cost.
    pub plan: HalvingPlan,
    /// Units trained by every configuration together.
    pub trained_units: u64,
    /// `trained_units` over one run of the base configuration.
    pub cost_in_runs: f64,
    /// Wall time of the search.
    pub seconds: f64,
}

impl SearchReport {
    /// The chosen configuration.
    pub fn chosen_config(&self) -> Config {
        self.trials[self.chosen].config
    }
}

/// A step of a search as it happens (for progress lines).
#[derive(Debug, Clone)]
pub enum SearchEvent {
    /// A configuration reached a rung (`rung == rungs` is the end of its run).
    Scored {
        /// 0-based rung.
        rung: usize,
        /// Intermediate rungs in the plan.
        rungs: usize,
        /// Which configuration.
        trial: usize,
        /// Its hyperparameters.
        config: Config,
        /// Its score.
        score: RungScore,
    },
    /// The configurations continuing past a rung, and those stopped there.
    Cut {
        /// 0-based rung.
        rung: usize,
        /// Continuing, best first.
        kept: Vec<usize>,
        /// Stopped.
        stopped: Vec<usize>,
    },
}

fn text_config(p: &FinetuneParams) -> Config {
    Config {
        learning_rate: p.learning_rate,
        batch_size: p.batch_size,
        epochs: p.epochs,
        strategy: p.strategy,
    }
}

/// Searches `space` around `base` for fine-tuning `model` on token sequences and labels
/// by successive halving, every configuration scored on the same validation part of the
/// rows (`base.validation_fraction` must be > 0). Returns the chosen configuration's
/// model, trained to its end (the weights its validation keeps: the last epoch's unless an
/// earlier one is clearly better), its run's report
/// and the search's.
#[allow(clippy::too_many_arguments)]
pub fn search_text(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    base: &FinetuneParams,
    space: &SearchSpace,
    run: &RunOptions,
    on_event: &mut (dyn FnMut(&SearchEvent) + Send),
    on_epoch: &mut (dyn FnMut(&EpochLog, &BertClassifier) + Send),
) -> Result<(BertClassifier, FinetuneParams, FinetuneReport, SearchReport), FinetuneError> {
    base.check()?;
    space.check()?;
    if base.validation_fraction <= 0.0 {
        return Err(FinetuneError::Params(
            "search: configurations are compared on a validation part; set validation_fraction > 0"
                .into(),
        ));
    }
    if base.strategy == Strategy::Contrastive {
        return Err(FinetuneError::Params(
            "search: contrastive tuning is validated by another head; search full, top:N or head"
                .into(),
        ));
    }
    crate::train::check_data(
        seqs,
        labels,
        model.classes,
        model.config.max_position_embeddings,
    )?;
    let configs: Vec<FinetuneParams> = space
        .configs(text_config(base), base.seed)
        .into_iter()
        .map(|c| FinetuneParams {
            learning_rate: c.learning_rate,
            batch_size: c.batch_size,
            epochs: c.epochs,
            strategy: c.strategy,
            ..base.clone()
        })
        .collect();
    for p in &configs {
        p.check()?;
    }
    let pool = crate::ops::Threads(base.threads).pool()?;
    pool.install(|| {
        let (train, val) = text_split(labels, base)?;
        let plan = plan_for(&configs, text_config, train.len(), &val, base.epochs, space)?;
        let run = search_run(run);
        let mut models: Vec<BertClassifier> = configs.iter().map(|_| model.clone()).collect();
        let mut frozen = FrozenStates::default();
        let mut setups = Vec::new();
        for (m, p) in models.iter_mut().zip(&configs) {
            setups.push(text_learner(m, seqs, labels, p, &run, &train, &mut frozen)?);
        }
        let cfgs: Vec<Config> = configs.iter().map(text_config).collect();
        let (chosen, report, search) = run_halving(
            setups,
            &cfgs,
            train.len(),
            &val,
            &plan,
            &run,
            on_event,
            on_epoch,
        )?;
        let model = models.swap_remove(chosen);
        Ok((model, configs[chosen].clone(), report, search))
    })
}

/// The plan of a search over `configs` (their base run: `base_epochs` over `train`
/// rows; a validation pass over `val` costs a third of as many training units).
fn plan_for<P>(
    configs: &[P],
    config: impl Fn(&P) -> Config,
    train: usize,
    val: &[usize],
    base_epochs: usize,
    space: &SearchSpace,
) -> Result<HalvingPlan, FinetuneError> {
    let longest = configs.iter().map(|p| config(p).epochs).max().unwrap_or(1);
    plan_halving(
        configs.len(),
        space.eta,
        (train * base_epochs) as u64,
        (train * longest) as u64,
        longest,
        space.budget,
        // A validation pass is a forward pass: about a third of a training step.
        val.len() as f64 / 3.0,
    )
}

/// The trials of a search write nothing and show no bar of their own.
fn search_run(run: &RunOptions) -> RunOptions {
    RunOptions {
        dir: None,
        resume: false,
        progress: false,
        frozen_store: run.frozen_store.clone(),
    }
}

/// Successive halving over prepared learners (one per configuration, all borrowing
/// their own copy of the model). Returns the chosen configuration's index and run
/// report (its model holds the weights it keeps) and the search's report.
#[allow(clippy::too_many_arguments)]
fn run_halving<L: Learner>(
    setups: Vec<(L, Vec<usize>, LoopSettings)>,
    configs: &[Config],
    train_rows: usize,
    val: &[usize],
    plan: &HalvingPlan,
    run: &RunOptions,
    on_event: &mut (dyn FnMut(&SearchEvent) + Send),
    on_epoch: &mut (dyn FnMut(&EpochLog, &L::Model) + Send),
) -> Result<(usize, FinetuneReport, SearchReport), FinetuneError> {
    let t = Instant::now();
    let (learners, settings): (Vec<(L, Vec<usize>)>, Vec<LoopSettings>) =
        setups.into_iter().map(|(l, u, s)| ((l, u), s)).unzip();
    let mut trainers = Vec::new();
    for ((learner, units), s) in learners.into_iter().zip(&settings) {
        trainers.push(Some(Trainer::start(
            learner,
            units,
            train_rows,
            val.to_vec(),
            s,
            run,
        )?));
    }
    // Both callbacks below reach the trainers and the caller's listener.
    let trainers = std::cell::RefCell::new(trainers);
    let on_event = std::cell::RefCell::new(on_event);
    let n = configs.len();
    let mut seconds = vec![0.0f64; n];
    let mut trained = vec![0u64; n];
    let mut finals: Vec<Option<FinetuneReport>> = vec![None; n];
    let rungs = plan.rungs.len();
    let mut rung_of = vec![0usize; n];
    let halving = successive_halving(
        plan,
        n,
        &mut |i, target| {
            let t = Instant::now();
            let mut trainers = trainers.borrow_mut();
            let tr = trainers[i].as_mut().expect("a live configuration");
            let before = tr.units_trained;
            let loss_before = tr.loss_total();
            let finishing = target.is_none();
            tr.advance(target.unwrap_or(u64::MAX), &mut |e, m| {
                if finishing {
                    on_epoch(e, m)
                }
            })?;
            let done_units = tr.units_trained - before;
            let loss = (tr.loss_total() - loss_before) / done_units.max(1) as f64;
            let now = tr.validation_now()?;
            let mut scored = rung_validation(tr.best_validation(), now, tr.is_done());
            let units = tr.units_trained;
            trained[i] = units;
            if finishing {
                let tr = trainers[i].take().expect("live");
                let report = tr.finish();
                // A finished configuration is scored by the weights it keeps.
                if let Some(kept) = logged_validation(&report.epochs, report.best_epoch) {
                    scored = kept;
                }
                finals[i] = Some(report);
            }
            let score = RungScore {
                units,
                accuracy: scored.accuracy,
                validation_loss: scored.loss,
                loss,
            };
            seconds[i] += t.elapsed().as_secs_f64();
            (on_event.borrow_mut())(&SearchEvent::Scored {
                rung: rung_of[i],
                rungs,
                trial: i,
                config: configs[i],
                score,
            });
            rung_of[i] += 1;
            Ok(score)
        },
        &mut |rung, kept, stopped| {
            for &i in stopped {
                // A stopped configuration's weights and optimizer state go at once.
                trainers.borrow_mut()[i] = None;
            }
            (on_event.borrow_mut())(&SearchEvent::Cut {
                rung,
                kept: kept.to_vec(),
                stopped: stopped.to_vec(),
            });
        },
    )?;
    let chosen = halving.chosen;
    let report = finals[chosen]
        .take()
        .expect("the chosen configuration finished");
    let trained_units: u64 = trained.iter().sum();
    let search = SearchReport {
        trials: configs
            .iter()
            .enumerate()
            .map(|(i, c)| TrialReport {
                config: *c,
                scores: halving.scores[i].clone(),
                stopped_at: halving.stopped_at[i],
                units: trained[i],
                seconds: seconds[i],
            })
            .collect(),
        chosen,
        trained_units,
        cost_in_runs: trained_units as f64 / plan.base_units as f64,
        plan: plan.clone(),
        seconds: t.elapsed().as_secs_f64(),
    };
    Ok((chosen, report, search))
}

fn image_config(p: &ImageParams) -> Config {
    Config {
        learning_rate: p.learning_rate,
        batch_size: p.batch_size,
        epochs: p.epochs,
        strategy: p.strategy,
    }
}

/// [`search_text`] for image networks: the same halving over [`ImageParams`] variants,
/// images preprocessed with `spec` at `base.resolution`.
#[allow(clippy::too_many_arguments)]
pub fn search_images(
    net: &ConvNet,
    inputs: &[ImageInput],
    labels: &[usize],
    spec: &ImageSpec,
    base: &ImageParams,
    space: &SearchSpace,
    run: &RunOptions,
    on_event: &mut (dyn FnMut(&SearchEvent) + Send),
    on_epoch: &mut (dyn FnMut(&EpochLog, &ConvNet) + Send),
) -> Result<(ConvNet, ImageParams, FinetuneReport, SearchReport), FinetuneError> {
    base.check()?;
    space.check()?;
    if base.validation_fraction <= 0.0 {
        return Err(FinetuneError::Params(
            "search: configurations are compared on a validation part; set validation_fraction > 0"
                .into(),
        ));
    }
    crate::vision::check_images(net, inputs, labels)?;
    let configs: Vec<ImageParams> = space
        .configs(image_config(base), base.seed)
        .into_iter()
        .map(|c| ImageParams {
            learning_rate: c.learning_rate,
            batch_size: c.batch_size,
            epochs: c.epochs,
            strategy: c.strategy,
            ..base.clone()
        })
        .collect();
    for p in &configs {
        p.check()?;
    }
    let pool = crate::ops::Threads(base.threads).pool()?;
    pool.install(|| {
        let (train, val) = crate::vision::image_split(labels, base)?;
        let plan = plan_for(
            &configs,
            image_config,
            train.len(),
            &val,
            base.epochs,
            space,
        )?;
        let run = search_run(run);
        let mut nets: Vec<ConvNet> = configs.iter().map(|_| net.clone()).collect();
        let mut frozen = crate::vision::FrozenBlocks::default();
        let mut setups = Vec::new();
        for (m, p) in nets.iter_mut().zip(&configs) {
            setups.push(crate::vision::image_learner(
                m,
                inputs,
                labels,
                spec,
                p,
                &run,
                &train,
                &mut frozen,
            )?);
        }
        let cfgs: Vec<Config> = configs.iter().map(image_config).collect();
        let (chosen, report, search) = run_halving(
            setups,
            &cfgs,
            train.len(),
            &val,
            &plan,
            &run,
            on_event,
            on_epoch,
        )?;
        let net = nets.swap_remove(chosen);
        Ok((net, configs[chosen].clone(), report, search))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rung_scores_accuracy_and_loss_of_the_same_weights() {
        let v = |accuracy, loss| Validation {
            accuracy,
            loss: Some(loss),
        };
        // An earlier epoch was better than the weights now: both figures are that epoch's.
        assert_eq!(
            rung_validation(Some(v(0.90, 0.30)), v(0.85, 0.25), false),
            v(0.90, 0.30)
        );
        // The weights now are as good or better: both figures are theirs.
        assert_eq!(
            rung_validation(Some(v(0.90, 0.30)), v(0.90, 0.20), false),
            v(0.90, 0.20)
        );
        assert_eq!(rung_validation(None, v(0.5, 0.7), false), v(0.5, 0.7));
        // A finished run is scored by its finished epochs, not a re-validation.
        assert_eq!(
            rung_validation(Some(v(0.80, 0.40)), v(0.85, 0.35), true),
            v(0.80, 0.40)
        );
    }

    /// Configuration `i` learns towards accuracy `q[i]` at a pace of its own; its score
    /// after `u` units is `q (1 - exp(-u / pace))`.
    fn curve(q: f64, pace: f64, u: u64) -> f64 {
        q * (1.0 - (-(u as f64) / pace).exp())
    }

    #[test]
    fn the_plan_fits_the_budget_and_cuts_to_one_in_eta() {
        // 12 configurations of 3 epochs of 1000 rows, the longest 4 epochs.
        let plan = plan_halving(12, 3, 3000, 4000, 4, 3.0, 0.0).unwrap();
        let entering: Vec<usize> = plan.rungs.iter().map(|r| r.entering).collect();
        let keep: Vec<usize> = plan.rungs.iter().map(|r| r.keep).collect();
        assert_eq!(entering, [12, 4]);
        assert_eq!(keep, [4, 1]);
        assert_eq!(plan.rungs[1].units / plan.rungs[0].units, 3);
        assert!(plan.worst_units <= 9000.0, "{plan:?}");
        // 12 r + 4 (3r - r) + (4000 - 3r) = 9000 -> r = 294.
        assert_eq!(plan.rungs[0].units, 294);
        // Validation passes are part of the budget: the rungs move down.
        let with_val = plan_halving(12, 3, 3000, 4000, 4, 3.0, 30.0).unwrap();
        assert!(with_val.rungs[0].units < plan.rungs[0].units);
        assert!(with_val.worst_units <= 9000.0 + 1e-9);
        // A loose budget: the rungs stop at the plain ladder 1/9, 1/3 of the longest run.
        let loose = plan_halving(12, 3, 3000, 4000, 4, 20.0, 0.0).unwrap();
        assert_eq!(loose.rungs[0].units, 4000 / 9);
        assert_eq!(loose.rungs[1].units, 4000 / 3);
        // Too many configurations for the budget: an error that says what to change.
        let err = plan_halving(100, 3, 3000, 4000, 4, 1.2, 0.0).unwrap_err();
        assert!(err.to_string().contains("fewer configurations"), "{err}");
    }

    #[test]
    fn successive_halving_stops_the_configurations_it_should() {
        // Known ranking: final accuracies q, all learning at the same pace, so every rung
        // ranks them as q does.
        let q = [
            0.80, 0.91, 0.70, 0.88, 0.60, 0.95, 0.75, 0.85, 0.65, 0.90, 0.72, 0.83,
        ];
        let total = 4000u64;
        let plan = plan_halving(q.len(), 3, 3000, total, 4, 3.0, 0.0).unwrap();
        let mut trained = vec![0u64; q.len()];
        let mut cuts = Vec::new();
        let h = successive_halving::<()>(
            &plan,
            q.len(),
            &mut |i, target| {
                let u = target.unwrap_or(total).min(total);
                trained[i] = u;
                Ok(RungScore {
                    units: u,
                    accuracy: curve(q[i], 800.0, u),
                    validation_loss: None,
                    loss: 0.0,
                })
            },
            &mut |rung, kept, stopped| cuts.push((rung, kept.to_vec(), stopped.to_vec())),
        )
        .unwrap();
        // After rung 0 the four best (0.95, 0.91, 0.90, 0.88) continue, best first.
        assert_eq!(cuts[0].1, [5, 1, 9, 3]);
        assert_eq!(cuts[0].2.len(), 8);
        // After rung 1 only the best continues, and it is chosen.
        assert_eq!(cuts[1].1, [5]);
        assert_eq!(h.chosen, 5);
        for i in 0..q.len() {
            let expected = match i {
                5 => None,
                1 | 9 | 3 => Some(1),
                _ => Some(0),
            };
            assert_eq!(h.stopped_at[i], expected, "configuration {i}");
        }
        // Stopped configurations trained only to their rung; the cost is within budget.
        assert_eq!(trained[0], plan.rungs[0].units);
        assert_eq!(trained[1], plan.rungs[1].units);
        assert_eq!(trained[5], total);
        let spent: u64 = trained.iter().sum();
        assert!(spent as f64 <= 3.0 * 3000.0, "spent {spent}");
        // Ties on accuracy go to the lower validation loss, then the lower training loss,
        // then the earlier configuration.
        let tied = successive_halving::<()>(
            &plan,
            12,
            &mut |i, t| {
                Ok(RungScore {
                    units: t.unwrap_or(total),
                    accuracy: 0.5,
                    validation_loss: (i == 9).then_some(0.3),
                    loss: if i == 7 { 0.1 } else { 1.0 },
                })
            },
            &mut |_, _, _| {},
        )
        .unwrap();
        assert_eq!(tied.chosen, 9);
        assert_eq!(tied.stopped_at[7], Some(1));
        assert_eq!(tied.stopped_at[0], Some(1));
        assert_eq!(tied.stopped_at[3], Some(0));
    }

    #[test]
    fn configurations_cover_the_grid_or_sample_it_with_the_base_first() {
        let base = Config {
            learning_rate: 2e-5,
            batch_size: 16,
            epochs: 3,
            strategy: Strategy::Full,
        };
        let space = SearchSpace {
            learning_rate: vec![1e-5, 2e-5, 5e-5],
            batch_size: vec![16, 32],
            ..Default::default()
        };
        space.check().unwrap();
        let all = space.configs(base, 0);
        assert_eq!(all.len(), 6);
        assert!(
            all.iter()
                .all(|c| c.epochs == 3 && c.strategy == Strategy::Full)
        );
        let big = SearchSpace {
            epochs: vec![2, 3, 4],
            strategy: vec![Strategy::Full, Strategy::Top(2)],
            configurations: 12,
            ..space.clone()
        };
        let some = big.configs(base, 7);
        assert_eq!(some.len(), 12);
        assert_eq!(some[0], base);
        assert_eq!(some, big.configs(base, 7), "seeded");
        assert_ne!(some, big.configs(base, 8));
        for (i, a) in some.iter().enumerate() {
            assert!(!some[i + 1..].contains(a), "{a} twice");
        }
        // Balanced: 12 of 36 use each learning rate and each epoch count 4 times, each
        // batch size and strategy 6 times.
        for lr in [1e-5, 2e-5, 5e-5] {
            assert_eq!(
                some.iter().filter(|c| c.learning_rate == lr).count(),
                4,
                "{some:?}"
            );
        }
        for e in [2, 3, 4] {
            assert_eq!(some.iter().filter(|c| c.epochs == e).count(), 4);
        }
        assert_eq!(some.iter().filter(|c| c.batch_size == 32).count(), 6);
        assert_eq!(
            some.iter()
                .filter(|c| c.strategy == Strategy::Top(2))
                .count(),
            6
        );
        for (bad, key) in [
            (SearchSpace::default(), "nothing to search"),
            (
                SearchSpace {
                    learning_rate: vec![0.0, 1e-5],
                    ..Default::default()
                },
                "learning_rate",
            ),
            (
                SearchSpace {
                    strategy: vec![Strategy::Full, Strategy::Contrastive],
                    ..Default::default()
                },
                "contrastive",
            ),
            (
                SearchSpace {
                    eta: 1,
                    ..space.clone()
                },
                "eta",
            ),
            (
                SearchSpace {
                    budget: 0.5,
                    ..space.clone()
                },
                "budget",
            ),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
