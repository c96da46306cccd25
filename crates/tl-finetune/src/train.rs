//! The training loop: hyperparameters, batching, AdamW with warm-up and decay, early
//! stopping on a validation part of the training rows, per-epoch log and checkpoints
//! that a rerun resumes from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tl_core::{Rng, split::stratified_split};

use crate::FinetuneError;
use crate::bert::{Batch, BertClassifier, DropoutSpec, Slot};
use crate::fit::{Common, Learner, LoopSettings, StepOut, Validation, run_epochs, validation_of};
use crate::ops::Threads;

/// Which part of the encoder trains. Written as `full`, `top:N`, `head` or
/// `contrastive` in files and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Strategy {
    /// Every parameter: embeddings, all layers, classifier.
    Full,
    /// The top `n` transformer layers (image models: blocks) and the classifier; the
    /// rest stays frozen.
    Top(usize),
    /// Only the classifier on top of the frozen encoder (the frozen-features baseline,
    /// trained jointly with the loop's schedule).
    Head,
    /// SetFit-style: the whole encoder learns from pairs of training rows (same class:
    /// cosine 1, different: 0); a classical head is then fitted on the tuned vectors.
    Contrastive,
}

impl Strategy {
    /// Parses `full` or `top:N`.
    pub fn parse(s: &str) -> Result<Strategy, FinetuneError> {
        if s == "full" {
            return Ok(Strategy::Full);
        }
        if s == "contrastive" {
            return Ok(Strategy::Contrastive);
        }
        if s == "head" {
            return Ok(Strategy::Head);
        }
        if let Some(n) = s.strip_prefix("top:")
            && let Ok(n) = n.parse::<usize>()
        {
            return Ok(Strategy::Top(n));
        }
        Err(FinetuneError::Params(format!(
            "strategy `{s}`: expected `full`, `top:N` (N transformer layers or image blocks to train), `head` or `contrastive`"
        )))
    }

    /// Depth of the lowest trainable slot (0 = embeddings) for a model of `layers`.
    pub fn first_trainable(self, layers: usize) -> usize {
        match self {
            Strategy::Full | Strategy::Contrastive => 0,
            Strategy::Top(n) => layers + 1 - n.min(layers),
            Strategy::Head => layers + 1,
        }
    }
}

impl From<Strategy> for String {
    fn from(s: Strategy) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Strategy {
    type Error = FinetuneError;
    fn try_from(s: String) -> Result<Strategy, FinetuneError> {
        Strategy::parse(&s)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Full => write!(f, "full"),
            Strategy::Top(n) => write!(f, "top:{n}"),
            Strategy::Contrastive => write!(f, "contrastive"),
            Strategy::Head => write!(f, "head"),
        }
    }
}

/// Fine-tuning hyperparameters. Defaults are the usual BERT recipe (and the PyTorch
/// reference in the README): AdamW at 2e-5, batch 16, 3 epochs, 10% warm-up, weight
/// decay 0.01, dropout 0.1, 128 tokens, gradient norm clipped at 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneParams {
    /// What trains.
    pub strategy: Strategy,
    /// Peak learning rate (of the top layer and the classifier).
    pub learning_rate: f32,
    /// Layer-wise decay: each layer below the top gets this factor more (1 = off).
    pub layer_decay: f32,
    /// Sequences per step.
    pub batch_size: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Share of the steps spent warming the learning rate up from 0.
    pub warmup_fraction: f32,
    /// Decoupled weight decay (none on biases and LayerNorm).
    pub weight_decay: f32,
    /// Dropout on hidden states and attention probabilities.
    pub dropout: f32,
    /// Tokens per sequence, special tokens included.
    pub max_length: usize,
    /// Gradients are rescaled to at most this L2 norm (0 = no clipping).
    pub max_grad_norm: f32,
    /// Share of the training rows held out (stratified) for validation and early
    /// stopping (0 = none: the last epoch's weights are kept; otherwise the best
    /// validation epoch's when it beats the last by more than one standard error).
    pub validation_fraction: f32,
    /// Stop after this many epochs without a better validation accuracy (0 = never).
    pub patience: usize,
    /// `contrastive`: pairs drawn per training row, half of the same class.
    pub pairs_per_item: usize,
    /// Seed of the validation split, shuffling, pairs and dropout.
    pub seed: u64,
    /// Threads (results are bit-identical for the same thread count).
    pub threads: usize,
}

impl Default for FinetuneParams {
    fn default() -> Self {
        FinetuneParams {
            strategy: Strategy::Full,
            learning_rate: 2e-5,
            layer_decay: 1.0,
            batch_size: 16,
            epochs: 3,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            dropout: 0.1,
            max_length: 128,
            max_grad_norm: 1.0,
            validation_fraction: 0.0,
            patience: 0,
            pairs_per_item: 4,
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl FinetuneParams {
    /// Checks every field's range; the message names the field and the range.
    pub fn check(&self) -> Result<(), FinetuneError> {
        self.common().check(vec![
            (
                "max_length",
                (2..=512).contains(&self.max_length),
                "2..=512",
                self.max_length.to_string(),
            ),
            (
                "pairs_per_item",
                (1..=100).contains(&self.pairs_per_item),
                "1..=100",
                self.pairs_per_item.to_string(),
            ),
        ])
    }

    pub(crate) fn common(&self) -> Common {
        Common {
            strategy: self.strategy,
            learning_rate: self.learning_rate,
            layer_decay: self.layer_decay,
            batch_size: self.batch_size,
            min_batch: 1,
            epochs: self.epochs,
            warmup_fraction: self.warmup_fraction,
            weight_decay: self.weight_decay,
            dropout: self.dropout,
            max_grad_norm: self.max_grad_norm,
            validation_fraction: self.validation_fraction,
            patience: self.patience,
            seed: self.seed,
            threads: self.threads,
        }
    }
}

/// Where a run writes its log and checkpoints, and whether it resumes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder for `log.jsonl` and `checkpoint.safetensors` (none: nothing written).
    pub dir: Option<PathBuf>,
    /// Continue from the checkpoint in `dir` when there is one.
    pub resume: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Where `top:N` keeps the frozen layers' outputs between runs (none: computed once
    /// per run, in memory).
    pub frozen_store: Option<tl_features::Store>,
}

/// One line of the per-epoch log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Accuracy on the validation part, when there is one.
    pub validation_accuracy: Option<f64>,
    /// Mean cross-entropy on the validation part, when there is one and the run trains a
    /// classifier (logs written before it was recorded read as none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f32,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Training sentences per second.
    pub sentences_per_second: f64,
    /// Seconds in forward passes, backward passes and optimizer steps.
    pub forward_seconds: f64,
    /// See `forward_seconds`.
    pub backward_seconds: f64,
    /// See `forward_seconds`.
    pub optimizer_seconds: f64,
}

impl EpochLog {
    /// The validation part's figures for a progress line: `"  validation 91.2% (loss
    /// 0.2310)"`, the loss left out when none was measured, empty without validation.
    pub fn validation_text(&self) -> String {
        let Some(acc) = self.validation_accuracy else {
            return String::new();
        };
        let loss = self
            .validation_loss
            .map(|l| format!(" (loss {l:.4})"))
            .unwrap_or_default();
        format!("  validation {:.1}%{loss}", 100.0 * acc)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct FinetuneReport {
    /// One entry per epoch run (resumed epochs come from the log).
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Training rows used (after the validation part was carved off).
    pub train_rows: usize,
    /// Validation rows.
    pub validation_rows: usize,
    /// Epochs taken from a checkpoint instead of run.
    pub resumed_epochs: usize,
}

/// Text turned into token ids (special tokens included, truncated).
pub fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
    max_length: usize,
) -> Result<Vec<Vec<u32>>, FinetuneError> {
    let mut tok = tokenizer.clone();
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length,
        ..Default::default()
    }))
    .map_err(|e| FinetuneError::Tokenizer(e.to_string()))?;
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let enc = tok
                .encode(t.as_str(), true)
                .map_err(|e| FinetuneError::Tokenizer(format!("text {i}: {e}")))?;
            let ids = enc.get_ids().to_vec();
            if ids.is_empty() {
                return Err(FinetuneError::Tokenizer(format!("text {i} gave no tokens")));
            }
            Ok(ids)
        })
        .collect()
}

/// SetFit-style pairs: for each training row, `per_item` partners, alternately of the
/// same class (target 1) and of another class (target 0), drawn with `seed`. A row whose
/// class has no other member gets only different-class partners.
pub fn make_pairs(
    train: &[usize],
    labels: &[usize],
    per_item: usize,
    seed: u64,
) -> Vec<(usize, usize, f32)> {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in train {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let mut rng = Rng::new(seed ^ fnv("pairs"));
    let mut out = Vec::with_capacity(train.len() * per_item);
    for &i in train {
        let same = &by_class[&labels[i]];
        let others: usize = train.len() - same.len();
        for j in 0..per_item {
            if j % 2 == 0 && same.len() > 1 {
                let mut k = same[rng.below(same.len() as u64 - 1) as usize];
                if k == i {
                    k = *same.last().expect("two or more members");
                }
                out.push((i, k, 1.0));
            } else if others > 0 {
                // The r-th row of another class, walking the classes in order.
                let mut r = rng.below(others as u64) as usize;
                for (c, members) in &by_class {
                    if *c == labels[i] {
                        continue;
                    }
                    if r < members.len() {
                        out.push((i, members[r], 0.0));
                        break;
                    }
                    r -= members.len();
                }
            }
        }
    }
    out
}

/// Nearest class centroid (cosine) of the tuned vectors, tl-heads' centroid head: how a
/// contrastive run is validated, since it trains no classifier.
fn centroid_predict(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    train: &[usize],
    queries: &[Vec<u32>],
    th: Threads,
) -> Result<Vec<usize>, FinetuneError> {
    let h = model.config.hidden_size;
    let matrix = |v: Vec<f32>| {
        ndarray::Array2::from_shape_vec((v.len() / h, h), v).expect("rows of width h")
    };
    let ts: Vec<Vec<u32>> = train.iter().map(|&i| seqs[i].clone()).collect();
    let x = matrix(sentence_vectors(model, &ts, 64, th));
    let y: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
    let names: Vec<String> = (0..model.classes).map(|c| c.to_string()).collect();
    let head = tl_heads::HeadConfig::new(tl_heads::HeadSpec::Centroid(tl_heads::CentroidParams {
        metric: tl_heads::Metric::Cosine,
    }))
    .fit(x.view(), &y, &names, None)
    .map_err(|e| FinetuneError::Data(format!("validating by nearest centroid: {e}")))?;
    head.predict(matrix(sentence_vectors(model, queries, 64, th)).view())
        .map_err(|e| FinetuneError::Data(format!("validating by nearest centroid: {e}")))
}

/// FNV-1a of a string: a stable 64-bit key for names.
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Predicted class of each sequence (batches of similar length, for speed).
pub fn predict(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    batch_size: usize,
    th: Threads,
) -> Vec<usize> {
    let scores = class_scores(model, seqs, batch_size, th);
    scores
        .chunks_exact(model.classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// Logits `[n, C]` of each sequence, in input order.
pub fn class_scores(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    batch_size: usize,
    th: Threads,
) -> Vec<f32> {
    let c = model.classes;
    let mut out = vec![0.0f32; seqs.len() * c];
    for_each_sorted_batch(seqs, batch_size, |idx, batch| {
        let logits = model.logits(batch, th);
        for (k, &i) in idx.iter().enumerate() {
            out[i * c..(i + 1) * c].copy_from_slice(&logits[k * c..(k + 1) * c]);
        }
    });
    out
}

/// Mean-pooled vectors `[n, H]` of each sequence, in input order.
pub fn sentence_vectors(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    batch_size: usize,
    th: Threads,
) -> Vec<f32> {
    let h = model.config.hidden_size;
    let mut out = vec![0.0f32; seqs.len() * h];
    for_each_sorted_batch(seqs, batch_size, |idx, batch| {
        let v = model.sentence_vectors(batch, th);
        for (k, &i) in idx.iter().enumerate() {
            out[i * h..(i + 1) * h].copy_from_slice(&v[k * h..(k + 1) * h]);
        }
    });
    out
}

fn for_each_sorted_batch(
    seqs: &[Vec<u32>],
    batch_size: usize,
    mut f: impl FnMut(&[usize], &Batch),
) {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    for idx in order.chunks(batch_size.max(1)) {
        let batch = Batch::pack(idx.iter().map(|&i| seqs[i].as_slice()));
        f(idx, &batch);
    }
}

/// Checks labelled training data; errors name the row.
pub(crate) fn check_data(
    seqs: &[Vec<u32>],
    labels: &[usize],
    classes: usize,
    max_positions: usize,
) -> Result<(), FinetuneError> {
    if seqs.is_empty() {
        return Err(FinetuneError::Data("no training rows".into()));
    }
    if seqs.len() != labels.len() {
        return Err(FinetuneError::Data(format!(
            "{} texts but {} labels",
            seqs.len(),
            labels.len()
        )));
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, y)| **y >= classes) {
        return Err(FinetuneError::Data(format!(
            "row {i}: label {y} but the model has {classes} classes"
        )));
    }
    let mut seen = vec![false; classes];
    for &y in labels {
        seen[y] = true;
    }
    if seen.iter().filter(|s| **s).count() < 2 {
        return Err(FinetuneError::Data(
            "the training rows hold a single class: a classifier needs at least two".into(),
        ));
    }
    if let Some((i, s)) = seqs
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > max_positions)
    {
        return Err(FinetuneError::Data(format!(
            "row {i}: {} tokens but the model has {max_positions} positions",
            s.len()
        )));
    }
    Ok(())
}

/// The batches of one epoch: `train` (row indices) shuffled with the run's seed and
/// the epoch number, cut into `batch_size` pieces (the last may be shorter).
pub fn epoch_batches(
    train: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut order = train.to_vec();
    Rng::new(seed ^ fnv("shuffle") ^ epoch as u64).shuffle(&mut order);
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Fine-tunes `model` (whose classifier has one output per class) on token sequences
/// and labels. The weights kept are the last epoch's, or, when `validation_fraction >
/// 0`, the best validation epoch's if it beats the last by more than one standard error.
pub fn finetune(
    model: &mut BertClassifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    params: &FinetuneParams,
    run: &RunOptions,
) -> Result<FinetuneReport, FinetuneError> {
    finetune_with(model, seqs, labels, params, run, &mut |_, _| {})
}

/// [`finetune`], calling `on_epoch` after each epoch with its log line and the weights
/// at that point (for evaluation on other rows, say).
pub fn finetune_with(
    model: &mut BertClassifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    params: &FinetuneParams,
    run: &RunOptions,
    on_epoch: &mut (dyn FnMut(&EpochLog, &BertClassifier) + Send),
) -> Result<FinetuneReport, FinetuneError> {
    params.check()?;
    check_data(
        seqs,
        labels,
        model.classes,
        model.config.max_position_embeddings,
    )?;
    let pool = crate::ops::Threads(params.threads).pool()?;
    pool.install(|| train_loop(model, seqs, labels, params, run, on_epoch))
}

fn train_loop(
    model: &mut BertClassifier,
    seqs: &[Vec<u32>],
    labels: &[usize],
    params: &FinetuneParams,
    run: &RunOptions,
    on_epoch: &mut (dyn FnMut(&EpochLog, &BertClassifier) + Send),
) -> Result<FinetuneReport, FinetuneError> {
    let (train, val) = text_split(labels, params)?;
    let mut frozen = FrozenStates::default();
    let (mut learner, units, settings) =
        text_learner(model, seqs, labels, params, run, &train, &mut frozen)?;
    run_epochs(
        &mut learner,
        &units,
        train.len(),
        &val,
        &settings,
        run,
        on_epoch,
    )
}

/// The training and validation rows (stratified with the run's seed when
/// `validation_fraction > 0`): the same for every configuration of a search.
pub(crate) fn text_split(
    labels: &[usize],
    params: &FinetuneParams,
) -> Result<(Vec<usize>, Vec<usize>), FinetuneError> {
    let all: Vec<usize> = (0..labels.len()).collect();
    if params.validation_fraction > 0.0 {
        stratified_split(
            labels,
            &all,
            params.validation_fraction as f64,
            params.seed ^ 0x5EED,
        )
        .map_err(|e| FinetuneError::Data(e.to_string()))
    } else {
        Ok((all, Vec::new()))
    }
}

/// Frozen layers' outputs per training row, by the first trainable depth: configurations
/// of a search that freeze the same layers share them.
pub(crate) type FrozenStates = std::collections::BTreeMap<usize, Arc<Vec<Vec<f32>>>>;

/// The learner of one configuration, the units its epochs shuffle (rows, or pairs) and
/// the loop's settings.
pub(crate) fn text_learner<'a>(
    model: &'a mut BertClassifier,
    seqs: &'a [Vec<u32>],
    labels: &'a [usize],
    params: &FinetuneParams,
    run: &RunOptions,
    train: &[usize],
    frozen_by_depth: &mut FrozenStates,
) -> Result<(TextLearner<'a>, Vec<usize>, LoopSettings), FinetuneError> {
    let th = Threads(params.threads);
    let first_trainable = params
        .strategy
        .first_trainable(model.config.num_hidden_layers);
    // What one step's batch is made of: training rows, or (contrastive) pairs of rows.
    let pairs = (params.strategy == Strategy::Contrastive)
        .then(|| make_pairs(train, labels, params.pairs_per_item, params.seed));
    let units: Vec<usize> = match &pairs {
        Some(p) => (0..p.len()).collect(),
        None => train.to_vec(),
    };
    // top:N: the frozen part runs once per item, not once per epoch.
    let frozen = if first_trainable >= 1 {
        if let Some(f) = frozen_by_depth.get(&first_trainable) {
            Some(f.clone())
        } else {
            let t = Instant::now();
            let train_seqs: Vec<Vec<u32>> = train.iter().map(|&i| seqs[i].clone()).collect();
            let (states, computed) = crate::frozen::frozen_states(
                model,
                &train_seqs,
                first_trainable,
                run.frozen_store.as_ref(),
                th,
            )?;
            tracing::info!(
                "frozen layers: {} of {} items computed, the rest cached ({:.1}s)",
                computed,
                train.len(),
                t.elapsed().as_secs_f64()
            );
            let mut by_row = vec![Vec::new(); seqs.len()];
            for (&i, s) in train.iter().zip(states) {
                by_row[i] = s;
            }
            let f = Arc::new(by_row);
            frozen_by_depth.insert(first_trainable, f.clone());
            Some(f)
        }
    } else {
        None
    };
    let settings = params.common().settings(
        first_trainable,
        serde_json::to_string(params).expect("plain struct"),
        "sentences",
    );
    let learner = TextLearner {
        model,
        seqs,
        labels,
        train: train.to_vec(),
        pairs,
        frozen,
        params: params.clone(),
        first_trainable,
        no_state: Vec::new(),
        th,
    };
    Ok((learner, units, settings))
}

/// A text encoder with its token sequences, for the shared loop.
pub(crate) struct TextLearner<'a> {
    model: &'a mut BertClassifier,
    seqs: &'a [Vec<u32>],
    labels: &'a [usize],
    train: Vec<usize>,
    pairs: Option<Vec<(usize, usize, f32)>>,
    frozen: Option<Arc<Vec<Vec<f32>>>>,
    params: FinetuneParams,
    first_trainable: usize,
    no_state: Vec<f32>,
    th: Threads,
}

impl Learner for TextLearner<'_> {
    type Model = BertClassifier;

    fn model(&self) -> &BertClassifier {
        self.model
    }

    fn parts(&mut self) -> (&[Slot], &mut Vec<f32>) {
        (&self.model.slots.all, &mut self.model.params)
    }

    fn state(&mut self) -> &mut Vec<f32> {
        &mut self.no_state
    }

    fn step(
        &mut self,
        idx: &[usize],
        _epoch: usize,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepOut, FinetuneError> {
        let seqs = self.seqs;
        let (batch, y, targets) = match &self.pairs {
            None => (
                Batch::pack(idx.iter().map(|&i| seqs[i].as_slice())),
                idx.iter().map(|&i| self.labels[i]).collect::<Vec<usize>>(),
                Vec::new(),
            ),
            Some(p) => (
                Batch::pack(
                    idx.iter()
                        .flat_map(|&k| [seqs[p[k].0].as_slice(), seqs[p[k].1].as_slice()]),
                ),
                Vec::new(),
                idx.iter().map(|&k| p[k].2).collect::<Vec<f32>>(),
            ),
        };
        let objective = if self.pairs.is_some() {
            crate::bert::Objective::CosinePairs(&targets)
        } else {
            crate::bert::Objective::Classify(&y)
        };
        let drop_p = self.params.dropout;
        let drop = (drop_p > 0.0).then_some(DropoutSpec {
            hidden: drop_p,
            attention: drop_p,
            key: self.params.seed ^ fnv("dropout") ^ step.wrapping_mul(0x9E37_79B9),
        });
        let start = self
            .frozen
            .as_ref()
            .map(|f| idx.iter().flat_map(|&i| f[i].iter().copied()).collect());
        let out = self.model.loss_and_grads_from(
            &batch,
            start,
            objective,
            drop,
            self.first_trainable,
            grads,
            self.th,
        );
        Ok(StepOut {
            loss: out.loss,
            items: batch.len(),
            forward_seconds: out.forward_seconds,
            backward_seconds: out.backward_seconds,
        })
    }

    fn evaluate(&mut self, val: &[usize]) -> Result<Validation, FinetuneError> {
        let vs: Vec<Vec<u32>> = val.iter().map(|&i| self.seqs[i].clone()).collect();
        let y: Vec<usize> = val.iter().map(|&i| self.labels[i]).collect();
        if self.pairs.is_none() {
            let logits = class_scores(self.model, &vs, 64, self.th);
            return Ok(validation_of(&logits, &y, self.model.classes));
        }
        let pred = centroid_predict(
            self.model,
            self.seqs,
            self.labels,
            &self.train,
            &vs,
            self.th,
        )?;
        let right = pred.iter().zip(&y).filter(|(p, y)| p == y).count();
        Ok(Validation {
            accuracy: right as f64 / val.len() as f64,
            loss: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epochs_validation_text_shows_what_was_measured() {
        let mut e = EpochLog {
            epoch: 1,
            train_loss: 0.5,
            validation_accuracy: None,
            validation_loss: None,
            learning_rate: 2e-5,
            seconds: 1.0,
            sentences_per_second: 10.0,
            forward_seconds: 0.5,
            backward_seconds: 0.4,
            optimizer_seconds: 0.1,
        };
        assert_eq!(e.validation_text(), "");
        e.validation_accuracy = Some(0.9125);
        assert_eq!(e.validation_text(), "  validation 91.2%");
        e.validation_loss = Some(0.23104);
        assert_eq!(e.validation_text(), "  validation 91.2% (loss 0.2310)");
        // A log line from before the loss was recorded still reads.
        let old: EpochLog = serde_json::from_str(
            r#"{"epoch":2,"train_loss":0.4,"validation_accuracy":0.9,"learning_rate":1e-5,
                "seconds":1.0,"sentences_per_second":10.0,"forward_seconds":0.5,
                "backward_seconds":0.4,"optimizer_seconds":0.1}"#,
        )
        .unwrap();
        assert_eq!(old.validation_loss, None);
        assert!(
            !serde_json::to_string(&old)
                .unwrap()
                .contains("validation_loss")
        );
    }
}
