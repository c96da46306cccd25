//! Fine-tuned systems of an experiment (`[[finetune]]`): a pretrained backbone trained by
//! tl-finetune inside each training part of the protocol (split, holdout or every CV fold)
//! and scored on the same rows as the baseline and the frozen features, so that one paired
//! bootstrap answers "does fine-tuning help more than frozen features?".

use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tl_assets::manifest::{ImageSpec, Modality};
use tl_assets::{Cache, Registry};
use tl_backbone::ImageInput;
use tl_data::{Dataset, Item};
use tl_finetune::{
    Augment, BertClassifier, BnMode, ConvNet, EpochLog, FinetuneParams, ImageParams, RunOptions,
    SearchEvent, SearchReport, SearchSpace, Strategy, Threads,
};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

use crate::EvalError;
use crate::experiment::{Chosen, Search};
use crate::runner::{Observer, SystemInfo};

/// One `[[finetune]]` table of an experiment file: which backbone trains, how, and with
/// which hyperparameters. Unset values take tl-finetune's defaults for the backbone's
/// modality (text: AdamW 2e-5, batch 16, 3 epochs; images: 5e-4, batch 32, 3 epochs), the
/// same as `tl finetune`'s; the seed is the experiment's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct FinetuneSpec {
    /// The pretrained model (its manifest must declare trainable weights); it must also be
    /// one of the experiment's `backbones`, the frozen level fine-tuning is compared with.
    pub backbone: String,
    /// `full`, `top:N`, `head` or (text) `contrastive`.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// The system's name in reports (default `<backbone> tuned <strategy>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Passes over the training rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f32>,
    /// Items per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Layer-wise learning-rate decay (1 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f32>,
    /// Share of steps warming the learning rate up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_fraction: Option<f32>,
    /// Decoupled weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
    /// Dropout (text: hidden states and attention; images: pooled features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    /// Gradient clipping norm (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f32>,
    /// Share of each training part held out for validation and early stopping (0 = none;
    /// the test rows are never part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f32>,
    /// Epochs without a better validation accuracy before stopping (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Text: tokens per text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Text, `contrastive`: pairs per training row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs_per_item: Option<usize>,
    /// Text, `contrastive`: the head fitted on the tuned vectors (default logistic; its main
    /// hyperparameter is searched like every other head's when `[search]` is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadSpec>,
    /// Images: input side in pixels (default the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
    /// Images: `frozen` (pretrained statistics, default) or `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<BnMode>,
    /// Images: augmentation of training images (`{ crop_scale = 0.8, rotation = 10,
    /// color_jitter = 0.2, flip = false }` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Threads (default: all cores; results are bit-identical for one thread count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Hyperparameter search by successive halving, inside each training part: lists of
    /// `learning_rate`, `batch_size`, `epochs` and `strategy` values (unlisted ones keep
    /// this table's value), `configurations` (12), `eta` (3) and `budget` (3 runs of this
    /// table's configuration, at worst). Configurations are compared on the validation
    /// part (`validation_fraction`, 0.1 when unset); the few-shot curve, which has none,
    /// trains this table's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpace>,
    /// Where the system is trained when the experiment has a `[few_shot]` curve: `also`
    /// (default: under the protocol and at every point of the curve), `skip` (the protocol
    /// only) or `only` (the curve only; settings for a few rows, such as more contrastive
    /// pairs, would cost too much on all rows).
    #[serde(default, skip_serializing_if = "is_default")]
    pub few_shot: FewShotUse,
}

/// Where a fine-tuned system is trained: see [`FinetuneSpec::few_shot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FewShotUse {
    /// Under the protocol and on the few-shot curve.
    #[default]
    Also,
    /// Under the protocol only.
    Skip,
    /// On the few-shot curve only.
    Only,
}

fn is_default(u: &FewShotUse) -> bool {
    *u == FewShotUse::Also
}

fn default_strategy() -> Strategy {
    Strategy::Full
}

// Checked while parsing, so a bad value's error carries the table's line.
impl<'de> Deserialize<'de> for FinetuneSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FinetuneSpec, D::Error> {
        let spec = FinetuneSpec::deserialize(d)?;
        spec.check().map_err(serde::de::Error::custom)?;
        Ok(spec)
    }
}

impl Serialize for FinetuneSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FinetuneSpec::serialize(self, s)
    }
}

impl FinetuneSpec {
    /// A spec with every hyperparameter at its default.
    pub fn new(backbone: &str, strategy: Strategy) -> FinetuneSpec {
        FinetuneSpec {
            backbone: backbone.to_string(),
            strategy,
            name: None,
            epochs: None,
            learning_rate: None,
            batch_size: None,
            layer_decay: None,
            warmup_fraction: None,
            weight_decay: None,
            dropout: None,
            max_grad_norm: None,
            validation_fraction: None,
            patience: None,
            max_length: None,
            pairs_per_item: None,
            head: None,
            resolution: None,
            batch_norm: None,
            augment: None,
            threads: None,
            search: None,
            few_shot: FewShotUse::Also,
        }
    }

    /// The system's name in reports.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{} tuned {}", self.backbone, self.strategy))
    }

    /// Keys that apply to text models only, and those that apply to image models only,
    /// among the ones set.
    fn modality_keys(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let text = [
            ("max_length", self.max_length.is_some()),
            ("pairs_per_item", self.pairs_per_item.is_some()),
            ("head", self.head.is_some()),
            (
                "strategy = \"contrastive\"",
                self.strategy == Strategy::Contrastive,
            ),
        ];
        let image = [
            ("resolution", self.resolution.is_some()),
            ("batch_norm", self.batch_norm.is_some()),
            ("augment", self.augment.is_some()),
        ];
        let set = |keys: &[(&'static str, bool)]| {
            keys.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect()
        };
        (set(&text), set(&image))
    }

    /// Checks every value that can be checked without the model: ranges (tl-finetune's own
    /// checks), and that text and image settings are not mixed.
    pub fn check(&self) -> Result<(), String> {
        let err = |e: tl_finetune::FinetuneError| {
            let m = e.to_string();
            let m = m
                .strip_prefix("invalid fine-tuning setting: ")
                .unwrap_or(&m);
            format!("finetune ({}): {m}", self.backbone)
        };
        if self.backbone.is_empty() {
            return Err("finetune: backbone is empty".into());
        }
        if let Some(name) = &self.name {
            crate::runner::check_name(name).map_err(|e| format!("finetune: {e}"))?;
        }
        if let Some(h) = &self.head {
            h.check().map_err(|e| format!("finetune.head: {e}"))?;
            if self.strategy != Strategy::Contrastive {
                return Err(format!(
                    "finetune.head applies to strategy = \"contrastive\"; {} trains its own linear layer",
                    self.strategy
                ));
            }
        }
        if let Some(space) = &self.search {
            space.check().map_err(err)?;
            if self.strategy == Strategy::Contrastive {
                return Err(format!(
                    "finetune ({}): search applies to full, top:N and head; contrastive tuning is validated by another head",
                    self.backbone
                ));
            }
            if self.few_shot == FewShotUse::Only {
                return Err(format!(
                    "finetune ({}): search needs a validation part, which the few-shot curve has not; use few_shot = \"also\" or \"skip\"",
                    self.backbone
                ));
            }
            if self.validation_fraction == Some(0.0) {
                return Err(format!(
                    "finetune ({}): search compares configurations on a validation part; set validation_fraction > 0",
                    self.backbone
                ));
            }
        }
        let (text, image) = self.modality_keys();
        if let (Some(t), Some(i)) = (text.first(), image.first()) {
            return Err(format!(
                "finetune ({}): {t} is for text models and {i} for image models; one table tunes one model",
                self.backbone
            ));
        }
        if image.is_empty() {
            self.text_params(0).check().map_err(err)?;
        } else {
            self.image_params(0).check().map_err(err)?;
        }
        Ok(())
    }

    /// The validation share: the value set, else 0.1 for a search (it needs one), else
    /// `default`.
    fn validation_fraction(&self, default: f32) -> f32 {
        match (self.validation_fraction, &self.search) {
            (Some(v), _) => v,
            (None, Some(_)) => 0.1,
            (None, None) => default,
        }
    }

    /// Text hyperparameters: the values set, tl-finetune's defaults for the rest.
    pub fn text_params(&self, seed: u64) -> FinetuneParams {
        let d = FinetuneParams::default();
        FinetuneParams {
            strategy: self.strategy,
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            layer_decay: self.layer_decay.unwrap_or(d.layer_decay),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            epochs: self.epochs.unwrap_or(d.epochs),
            warmup_fraction: self.warmup_fraction.unwrap_or(d.warmup_fraction),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            dropout: self.dropout.unwrap_or(d.dropout),
            max_length: self.max_length.unwrap_or(d.max_length),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            validation_fraction: self.validation_fraction(d.validation_fraction),
            patience: self.patience.unwrap_or(d.patience),
            pairs_per_item: self.pairs_per_item.unwrap_or(d.pairs_per_item),
            seed,
            threads: self.threads.unwrap_or(d.threads),
        }
    }

    /// Image hyperparameters: the values set, tl-finetune's defaults for the rest.
    pub fn image_params(&self, seed: u64) -> ImageParams {
        let d = ImageParams::default();
        ImageParams {
            strategy: self.strategy,
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            layer_decay: self.layer_decay.unwrap_or(d.layer_decay),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            epochs: self.epochs.unwrap_or(d.epochs),
            warmup_fraction: self.warmup_fraction.unwrap_or(d.warmup_fraction),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            dropout: self.dropout.unwrap_or(d.dropout),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            resolution: self.resolution.or(d.resolution),
            batch_norm: self.batch_norm.unwrap_or(d.batch_norm),
            augment: self.augment.clone().unwrap_or(d.augment),
            validation_fraction: self.validation_fraction(d.validation_fraction),
            patience: self.patience.unwrap_or(d.patience),
            seed,
            threads: self.threads.unwrap_or(d.threads),
        }
    }
}

/// What a report keeps of a fine-tuned system's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// The pretrained model it started from.
    pub backbone: String,
    /// `full`, `top:N`, `head`, `contrastive`.
    pub strategy: String,
    /// Every hyperparameter as configured (defaults filled in). A searched system's
    /// folds hold what each search chose instead (`folds[].search`).
    pub params: serde_json::Value,
    /// One entry per training part (fold).
    pub folds: Vec<FoldTraining>,
    /// The time the runner estimated before training, from measured throughput (seconds,
    /// all folds).
    pub estimated_seconds: f64,
    /// Peak resident memory of the process while this system trained and predicted (MB;
    /// Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
}

/// One training part's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldTraining {
    /// Outer fold (1-based).
    pub fold: usize,
    /// Rows trained on (after the validation part was carved off).
    pub train_rows: usize,
    /// Validation rows (from the training part).
    pub validation_rows: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Seconds training and predicting.
    pub seconds: f64,
    /// Per epoch: loss, validation accuracy, learning rate, time, throughput.
    pub epochs: Vec<EpochLog>,
    /// The hyperparameter search run on this part's training rows, when the system has
    /// one (`epochs` are then the chosen configuration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
}

/// The model a [`Tuner`] trains, with its inputs for every row the experiment uses.
enum Model {
    Text {
        model: BertClassifier,
        /// Token ids per dataset row (None for rows the experiment does not use).
        seqs: Vec<Option<Vec<u32>>>,
        params: FinetuneParams,
        head: HeadSpec,
    },
    Image {
        model: ConvNet,
        /// The model's preprocessing at its own resolution (training scales it).
        spec: ImageSpec,
        inputs: Vec<Option<ImageInput>>,
        params: ImageParams,
    },
}

/// What one training part produced.
pub(crate) struct TunedFold {
    pub(crate) predictions: Vec<usize>,
    pub(crate) proba: Array2<f64>,
    pub(crate) training: FoldTraining,
    pub(crate) chosen: Option<Chosen>,
    pub(crate) warnings: Vec<String>,
}

/// A fine-tuned system ready to train on any rows of the dataset.
pub(crate) struct Tuner {
    pub(crate) info: SystemInfo,
    pub(crate) spec: FinetuneSpec,
    model: Model,
    cache: Option<Cache>,
    /// Show a progress bar per epoch (on a terminal).
    pub(crate) progress: bool,
}

impl Tuner {
    /// Loads `spec`'s pretrained weights (fetching them) and prepares the inputs of rows
    /// `used` (tokenised once for text).
    pub(crate) fn open(
        spec: &FinetuneSpec,
        ds: &Dataset,
        used: &[usize],
        registry: &Registry,
        cache: &Cache,
        seed: u64,
    ) -> Result<Tuner, EvalError> {
        let manifest = registry
            .get(&spec.backbone)
            .map_err(|e| EvalError::Config(format!("finetune: {e}")))?;
        tl_finetune::check_trainable(manifest)?;
        let image = manifest
            .model
            .as_ref()
            .is_some_and(|m| m.modality == Modality::Image);
        let (text_keys, image_keys) = spec.modality_keys();
        let wrong = if image { &text_keys } else { &image_keys };
        if let Some(key) = wrong.first() {
            return Err(EvalError::Config(format!(
                "finetune ({}): {key} applies to {} models; {} is {} model",
                spec.backbone,
                if image { "text" } else { "image" },
                spec.backbone,
                if image { "an image" } else { "a text" }
            )));
        }
        let classes = ds.label_names.len();
        let rows_of = |convert: &mut dyn FnMut(usize) -> Result<(), EvalError>| {
            used.iter().try_for_each(|&i| convert(i))
        };
        let model = if image {
            let pre = tl_finetune::load_pretrained_image(manifest, cache, classes, seed)?;
            let mut inputs = vec![None; ds.len()];
            rows_of(&mut |i| {
                inputs[i] = Some(tl_features::image_input(&ds.items[i]).ok_or_else(|| {
                    EvalError::Config(format!(
                        "{}: row {i} is a text; {} is an image model",
                        ds.name, spec.backbone
                    ))
                })?);
                Ok(())
            })?;
            Model::Image {
                model: pre.model,
                spec: pre.spec,
                inputs,
                params: spec.image_params(seed),
            }
        } else {
            let pre = tl_finetune::load_pretrained(manifest, cache, classes)?;
            let tokenizer = tokenizers::Tokenizer::from_file(&pre.tokenizer)
                .map_err(|e| EvalError::Config(format!("{}: {e}", pre.tokenizer.display())))?;
            let params = spec.text_params(seed);
            let mut texts = Vec::with_capacity(used.len());
            rows_of(&mut |i| match &ds.items[i] {
                Item::Text(t) => {
                    texts.push(t.clone());
                    Ok(())
                }
                _ => Err(EvalError::Config(format!(
                    "{}: row {i} is not a text; {} is a text model",
                    ds.name, spec.backbone
                ))),
            })?;
            let tokens = tl_finetune::tokenize(&tokenizer, &texts, params.max_length)?;
            let mut seqs = vec![None; ds.len()];
            for (&i, s) in used.iter().zip(tokens) {
                seqs[i] = Some(s);
            }
            Model::Text {
                model: pre.model,
                seqs,
                params,
                head: spec
                    .head
                    .clone()
                    .unwrap_or(HeadSpec::Logistic(LogisticParams::default())),
            }
        };
        Ok(Tuner::new(spec, model, Some(cache.clone())))
    }

    fn new(spec: &FinetuneSpec, model: Model, cache: Option<Cache>) -> Tuner {
        let dim = match &model {
            Model::Text { model, .. } => model.config.hidden_size,
            Model::Image { model, .. } => model.features,
        };
        Tuner {
            info: SystemInfo {
                name: spec.label(),
                kind: "finetuned".into(),
                fingerprint: None,
                dim,
                cache_hits: 0,
                computed: 0,
                seconds: 0.0,
                peak_rss_mb: None,
            },
            spec: spec.clone(),
            model,
            cache,
            progress: false,
        }
    }

    /// A tuner over an in-memory text model (tests): token ids per dataset row.
    #[cfg(test)]
    pub(crate) fn text_for_tests(
        spec: &FinetuneSpec,
        model: BertClassifier,
        seqs: Vec<Option<Vec<u32>>>,
        params: FinetuneParams,
    ) -> Tuner {
        let head = HeadSpec::Logistic(LogisticParams::default());
        Tuner::new(
            spec,
            Model::Text {
                model,
                seqs,
                params,
                head,
            },
            None,
        )
    }

    /// The head's name in reports: the network's own linear layer (`softmax`), or the
    /// classical head fitted on the tuned vectors.
    pub(crate) fn head(&self) -> (String, Option<HeadSpec>) {
        match &self.model {
            Model::Text { head, params, .. } if params.strategy == Strategy::Contrastive => {
                (head.kind().to_string(), Some(head.clone()))
            }
            _ => ("softmax".into(), None),
        }
    }

    /// What training throughput counts.
    pub(crate) fn unit(&self) -> &'static str {
        match &self.model {
            Model::Text { .. } => "sentences",
            Model::Image { .. } => "images",
        }
    }

    /// The hyperparameters as trained, as JSON.
    pub(crate) fn params_json(&self) -> serde_json::Value {
        // Through text, so f32 settings read 0.1 rather than 0.10000000149011612.
        let text = match &self.model {
            Model::Text { params, .. } => serde_json::to_string(params),
            Model::Image { params, .. } => serde_json::to_string(params),
        };
        text.ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn epochs(&self) -> usize {
        match &self.model {
            Model::Text { params, .. } => params.epochs,
            Model::Image { params, .. } => params.epochs,
        }
    }

    fn threads(&self) -> usize {
        match &self.model {
            Model::Text { params, .. } => params.threads,
            Model::Image { params, .. } => params.threads,
        }
    }

    /// Seconds per row of a training epoch and of predicting, measured on a stratified
    /// sample of `pool` (eight batches; the first batch, which pays for warming up, is
    /// trained but not timed): what [`Tuner::estimate`] scales.
    pub(crate) fn measure(&self, ds: &Dataset, pool: &[usize]) -> Result<Throughput, EvalError> {
        let batch = match &self.model {
            Model::Text { params, .. } => params.batch_size,
            Model::Image { params, .. } => params.batch_size,
        };
        let pick_n = |n: usize, seed| {
            tl_core::split::stratified_sample(
                &ds.labels,
                pool,
                n.max(2 * ds.n_classes()).min(pool.len()),
                seed,
            )
        };
        let warm = pick_n(batch, 1)?;
        self.train(ds, &warm, 1, false, false, &|_| {})?;
        let sample = pick_n(8 * batch, 0)?;
        let t = Instant::now();
        let (trained, report) = self.train(ds, &sample, 1, false, false, &|_| {})?;
        let train = report
            .epochs
            .first()
            .map_or(t.elapsed().as_secs_f64(), |e| e.seconds)
            / sample.len() as f64;
        let t = Instant::now();
        self.predict(&trained, ds, &sample, &sample, None)?;
        let infer = t.elapsed().as_secs_f64() / sample.len() as f64;
        Ok(Throughput { train, infer })
    }

    /// Estimated seconds to train on `train` rows and predict `test` rows; `searched`: with
    /// the spec's search, when it has one (at worst `budget` runs).
    pub(crate) fn estimate(
        &self,
        speed: &Throughput,
        train: usize,
        test: usize,
        searched: bool,
    ) -> f64 {
        // Contrastive tuning also embeds the training rows for its head.
        let embedded = match self.spec.strategy {
            Strategy::Contrastive => train + test,
            _ => test,
        };
        // A search costs at most `budget` runs of the base configuration.
        let runs = match &self.spec.search {
            Some(s) if searched => s.budget as f64,
            _ => 1.0,
        };
        runs * speed.train * self.epochs() as f64 * train as f64 + speed.infer * embedded as f64
    }

    /// Trains a fresh copy of the pretrained model on dataset rows `train` (and nothing
    /// else: the validation part of early stopping is carved from them), then predicts rows
    /// `test`. `few_shot`: a handful of rows per class, all trained on (no validation part).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fit_predict(
        &self,
        ds: &Dataset,
        train: &[usize],
        test: &[usize],
        search: Option<&Search>,
        few_shot: bool,
        on_epoch: &(dyn Fn(&EpochLog) + Sync),
        on_search: &(dyn Fn(&SearchEvent) + Sync),
    ) -> Result<TunedFold, EvalError> {
        let t = Instant::now();
        let (trained, report, searched) = if few_shot {
            let (m, r) = self.train(ds, train, self.epochs(), false, false, on_epoch)?;
            (m, r, None)
        } else {
            self.train_or_search(ds, train, on_epoch, on_search)?
        };
        let (predictions, proba, chosen, warnings) =
            self.predict(&trained, ds, train, test, search)?;
        Ok(TunedFold {
            predictions,
            proba,
            training: FoldTraining {
                fold: 1,
                train_rows: report.train_rows,
                validation_rows: report.validation_rows,
                best_epoch: report.best_epoch,
                seconds: t.elapsed().as_secs_f64(),
                epochs: report.epochs,
                search: searched,
            },
            chosen,
            warnings,
        })
    }

    /// Predictions of a trained model on dataset rows `test` (contrastive: a classical head
    /// fitted on the tuned vectors of rows `train` first).
    fn predict(
        &self,
        trained: &Trained,
        ds: &Dataset,
        train: &[usize],
        test: &[usize],
        search: Option<&Search>,
    ) -> Result<HeadOutput, EvalError> {
        let th = Threads(self.threads());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(th.0)
            .build()
            .map_err(|e| EvalError::Config(format!("threads: {e}")))?;
        let classes = ds.label_names.len();
        let ytr: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
        Ok(match (&self.model, trained) {
            (Model::Text { seqs, head, .. }, Trained::Text(model)) => {
                let te = pick(seqs, test);
                if self.spec.strategy == Strategy::Contrastive {
                    let vectors = |rows: &[Vec<u32>]| {
                        let h = model.config.hidden_size;
                        let v = pool.install(|| tl_finetune::sentence_vectors(model, rows, 64, th));
                        Array2::from_shape_vec((rows.len(), h), v).expect("rows of width h")
                    };
                    let (xtr, xte) = (vectors(&pick(seqs, train)), vectors(&te));
                    classical_head(head, search, &xtr, &ytr, &xte, ds)?
                } else {
                    let logits = pool.install(|| tl_finetune::class_scores(model, &te, 64, th));
                    let (p, pr) = softmax(&logits, classes);
                    (p, pr, None, Vec::new())
                }
            }
            (Model::Image { inputs, spec, .. }, Trained::Image(model)) => {
                let te = pick(inputs, test);
                let at = tl_finetune::vision::spec_at(spec, model_resolution(&self.model));
                let logits = pool.install(|| tl_finetune::image_logits(model, &te, &at, 64, th))?;
                let (p, pr) = softmax(&logits, classes);
                (p, pr, None, Vec::new())
            }
            _ => unreachable!("a tuner trains its own kind of model"),
        })
    }

    /// Trains on dataset rows `train` with the spec's configuration, or, when the spec has a
    /// search, runs it there and returns the chosen configuration's model.
    fn train_or_search(
        &self,
        ds: &Dataset,
        train: &[usize],
        on_epoch: &(dyn Fn(&EpochLog) + Sync),
        on_search: &(dyn Fn(&SearchEvent) + Sync),
    ) -> Result<(Trained, tl_finetune::FinetuneReport, Option<SearchReport>), EvalError> {
        let Some(space) = &self.spec.search else {
            let (m, r) = self.train(ds, train, self.epochs(), true, self.progress, on_epoch)?;
            return Ok((m, r, None));
        };
        let y: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
        let run = RunOptions {
            frozen_store: self.cache.as_ref().map(tl_features::Store::from_cache),
            ..RunOptions::default()
        };
        Ok(match &self.model {
            Model::Text {
                model,
                seqs,
                params,
                ..
            } => {
                let (m, _, report, search) = tl_finetune::search_text(
                    model,
                    &pick(seqs, train),
                    &y,
                    params,
                    space,
                    &run,
                    &mut |e| on_search(e),
                    &mut |e, _| on_epoch(e),
                )?;
                (Trained::Text(m), report, Some(search))
            }
            Model::Image {
                model,
                spec,
                inputs,
                params,
            } => {
                let (m, _, report, search) = tl_finetune::search_images(
                    model,
                    &pick(inputs, train),
                    &y,
                    spec,
                    params,
                    space,
                    &run,
                    &mut |e| on_search(e),
                    &mut |e, _| on_epoch(e),
                )?;
                (Trained::Image(m), report, Some(search))
            }
        })
    }

    /// Trains a copy of the pretrained model on dataset rows `train` for `epochs`, with the
    /// spec's validation part and early stopping when `validate`, else on every row.
    fn train(
        &self,
        ds: &Dataset,
        train: &[usize],
        epochs: usize,
        validate: bool,
        progress: bool,
        on_epoch: &(dyn Fn(&EpochLog) + Sync),
    ) -> Result<(Trained, tl_finetune::FinetuneReport), EvalError> {
        let y: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
        let run = RunOptions {
            dir: None,
            resume: false,
            progress,
            // `top:N`: the frozen layers' outputs are kept between folds and runs.
            frozen_store: self.cache.as_ref().map(tl_features::Store::from_cache),
        };
        Ok(match &self.model {
            Model::Text {
                model,
                seqs,
                params,
                ..
            } => {
                let mut m = model.clone();
                let params = FinetuneParams {
                    epochs,
                    validation_fraction: if validate {
                        params.validation_fraction
                    } else {
                        0.0
                    },
                    patience: if validate { params.patience } else { 0 },
                    ..params.clone()
                };
                let report = tl_finetune::finetune_with(
                    &mut m,
                    &pick(seqs, train),
                    &y,
                    &params,
                    &run,
                    &mut |e, _| on_epoch(e),
                )?;
                (Trained::Text(m), report)
            }
            Model::Image {
                model,
                spec,
                inputs,
                params,
            } => {
                let mut m = model.clone();
                let params = ImageParams {
                    epochs,
                    validation_fraction: if validate {
                        params.validation_fraction
                    } else {
                        0.0
                    },
                    patience: if validate { params.patience } else { 0 },
                    ..params.clone()
                };
                let report = tl_finetune::finetune_images(
                    &mut m,
                    &pick(inputs, train),
                    &y,
                    spec,
                    &params,
                    &run,
                    &mut |e, _| on_epoch(e),
                )?;
                (Trained::Image(m), report)
            }
        })
    }
}

/// Measured seconds per row: of a training epoch, and of predicting.
pub(crate) struct Throughput {
    pub(crate) train: f64,
    pub(crate) infer: f64,
}

enum Trained {
    Text(BertClassifier),
    Image(ConvNet),
}

fn model_resolution(model: &Model) -> Option<usize> {
    match model {
        Model::Image { params, .. } => params.resolution,
        Model::Text { .. } => None,
    }
}

/// The inputs of dataset rows `rows` (each prepared when the tuner opened).
fn pick<T: Clone>(inputs: &[Option<T>], rows: &[usize]) -> Vec<T> {
    rows.iter()
        .map(|&i| {
            inputs[i]
                .clone()
                .expect("the experiment prepared every row it uses")
        })
        .collect()
}

/// Predicted classes and probabilities of `[n, classes]` logits.
fn softmax(logits: &[f32], classes: usize) -> (Vec<usize>, Array2<f64>) {
    let n = logits.len() / classes;
    let mut proba = Array2::<f64>::zeros((n, classes));
    let mut pred = Vec::with_capacity(n);
    for (r, row) in logits.chunks_exact(classes).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exp: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        for (c, e) in exp.iter().enumerate() {
            proba[[r, c]] = e / sum;
        }
        // The first of equal scores, as argmax everywhere else.
        let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        pred.push(best);
    }
    (pred, proba)
}

/// Predictions, probabilities, the searched value and fit warnings of a head fitted on
/// tuned vectors.
type HeadOutput = (Vec<usize>, Array2<f64>, Option<Chosen>, Vec<String>);

/// A classical head on tuned vectors, its main hyperparameter chosen by inner
/// cross-validation on the training rows when `search` is on (as for every other system).
fn classical_head(
    head: &HeadSpec,
    search: Option<&Search>,
    xtr: &Array2<f32>,
    ytr: &[usize],
    xte: &Array2<f32>,
    ds: &Dataset,
) -> Result<HeadOutput, EvalError> {
    let config = HeadConfig::new(head.clone());
    let (config, chosen) = match (search, head.main_param()) {
        (Some(search), Some((param, _))) => {
            let g = tl_heads::grid_search(
                &config,
                search.grid(param),
                xtr.view(),
                ytr,
                &ds.label_names,
                search.folds,
                0,
            )?;
            let chosen = Chosen {
                fold: 1,
                param: param.to_string(),
                value: g.best_value,
                inner_accuracy: g.best_mean(),
                edge: g.edge.clone(),
            };
            (g.best, Some(chosen))
        }
        _ => (config, None),
    };
    let fit = config.fit(xtr.view(), ytr, &ds.label_names, None)?;
    Ok((
        fit.predict(xte.view())?,
        fit.predict_proba(xte.view())?,
        chosen,
        fit.warnings,
    ))
}

/// Writes one progress line per epoch (a long run is never silent). `unit`: what the
/// throughput counts (`sentences`: a contrastive pair is two; `images`).
pub(crate) fn epoch_line(system: &str, part: &str, unit: &str, e: &EpochLog, obs: &dyn Observer) {
    obs.note(&format!(
        "epoch     {system} {part}epoch {}: loss {:.4}{}  {:.0} {unit}/s ({:.1}s)",
        e.epoch,
        e.train_loss,
        e.validation_text(),
        e.sentences_per_second,
        e.seconds
    ));
}

/// Writes one progress line per configuration scored at a rung of a search, and one per
/// cut.
pub(crate) fn search_line(
    system: &str,
    part: &str,
    unit: &str,
    e: &SearchEvent,
    obs: &dyn Observer,
) {
    match e {
        SearchEvent::Scored {
            rung,
            rungs,
            trial,
            config,
            score,
        } => obs.note(&format!(
            "search    {system} {part}{} #{}: {config}: validation {:.1}% after {} {unit}",
            if rung < rungs {
                format!("rung {}/{rungs}", rung + 1)
            } else {
                "final".to_string()
            },
            trial + 1,
            100.0 * score.accuracy,
            score.units
        )),
        SearchEvent::Cut {
            rung,
            kept,
            stopped,
        } => {
            let names = |v: &[usize]| {
                v.iter()
                    .map(|i| format!("#{}", i + 1))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            obs.note(&format!(
                "search    {system} {part}rung {}: {} continue ({}), {} stopped",
                rung + 1,
                kept.len(),
                names(kept),
                stopped.len()
            ));
        }
    }
}

/// A duration as a person reads it.
pub(crate) fn human_seconds(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Peak resident memory of this process since the last [`reset_peak_rss`], in MB (Linux;
/// None elsewhere).
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts a new peak-memory window (Linux: writing 5 to `clear_refs` resets `VmHWM`).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_argmax_is_first_of_ties() {
        let (pred, proba) = softmax(&[1.0, 3.0, 2.0, 5.0, 5.0, 0.0], 3);
        assert_eq!(pred, [1, 0]);
        for r in 0..2 {
            assert!((proba.row(r).sum() - 1.0).abs() < 1e-12);
        }
        assert!(proba[[0, 1]] > proba[[0, 2]] && proba[[0, 2]] > proba[[0, 0]]);
    }
}
