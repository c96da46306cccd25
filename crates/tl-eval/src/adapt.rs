//! Domain adaptation on features: carry a head from a labelled source domain to an unlabelled
//! target domain by aligning feature statistics or reweighting source rows. Each method sees
//! target features, never target labels; [`reverse_validation`] picks hyperparameters the same
//! way. Model-level methods ([`Method::is_model_level`]) adapt the backbone itself; the
//! adaptation runner encodes both domains with the adapted model and scores the vectors
//! the same way.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use tl_core::split::stratified_split;
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

use crate::EvalError;

fn mean_cov(x: ArrayView2<f64>) -> (Array1<f64>, Array2<f64>) {
    let n = x.nrows() as f64;
    let mean = x.mean_axis(Axis(0)).expect("rows");
    let c = &x - &mean;
    (mean, c.t().dot(&c) / (n - 1.0).max(1.0))
}

/// `C^p` for a symmetric positive definite `C` (eigenvalues floored at a tiny positive value).
fn spd_power(c: Array2<f64>, p: f64) -> Result<Array2<f64>, EvalError> {
    let (vals, vecs) = tl_heads::linalg::eigh_desc(c)?;
    let scaled = &vecs * &vals.mapv(|v| v.max(1e-12).powf(p));
    Ok(scaled.dot(&vecs.t()))
}

fn check(source: ArrayView2<f32>, target: ArrayView2<f32>) -> Result<(), EvalError> {
    if source.ncols() != target.ncols() {
        return Err(EvalError::Config(format!(
            "source features have {} columns, target {}: they must come from the same backbone",
            source.ncols(),
            target.ncols()
        )));
    }
    if source.nrows() < 2 || target.nrows() < 2 {
        return Err(EvalError::Config(
            "domain adaptation needs at least 2 source and 2 target rows".into(),
        ));
    }
    for (what, x) in [("source", source), ("target", target)] {
        if let Some((i, _)) = x
            .outer_iter()
            .enumerate()
            .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
        {
            return Err(EvalError::Config(format!(
                "{what} row {i}: features must be finite"
            )));
        }
    }
    Ok(())
}

/// Standardises each domain with its own mean and standard deviation.
pub fn per_domain_standardize(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
) -> Result<(Array2<f32>, Array2<f32>), EvalError> {
    check(source, target)?;
    let z = |x: ArrayView2<f32>| {
        let x = x.mapv(f64::from);
        let mean = x.mean_axis(Axis(0)).expect("rows");
        let std = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s < 1e-12 { 1.0 } else { s });
        ((&x - &mean) / &std).mapv(|v| v as f32)
    };
    Ok((z(source), z(target)))
}

/// CORAL (Sun, Feng & Saenko, 2016): recolours source features with the target covariance,
/// `(x_s - mu_s) C_s^{-1/2} C_t^{1/2} + mu_t`, where `C = cov + lambda I` and
/// `lambda = eps_scale * mean feature variance`. The textbook `lambda = 1` swamps the
/// covariance of L2-normalised embeddings (per-dimension variance ~2e-3) and changes nothing;
/// scaling by the features' own variance keeps the regulariser meaningful. With fewer target
/// rows than dimensions the target covariance is rank-deficient and `lambda` is what keeps it
/// invertible. Returns the transformed source and the (unchanged) target.
pub fn coral(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
    eps_scale: f64,
) -> Result<Array2<f32>, EvalError> {
    check(source, target)?;
    if !(eps_scale.is_finite() && eps_scale > 0.0) {
        return Err(EvalError::Config(format!(
            "CORAL eps_scale must be positive, got {eps_scale}"
        )));
    }
    let s = source.mapv(f64::from);
    let t = target.mapv(f64::from);
    let (ms, mut cs) = mean_cov(s.view());
    let (mt, mut ct) = mean_cov(t.view());
    let d = cs.nrows() as f64;
    let lambda = eps_scale * (cs.diag().sum() + ct.diag().sum()) / (2.0 * d);
    cs.diag_mut().mapv_inplace(|v| v + lambda);
    ct.diag_mut().mapv_inplace(|v| v + lambda);
    let a = spd_power(cs, -0.5)?.dot(&spd_power(ct, 0.5)?);
    Ok(((&s - &ms).dot(&a) + &mt).mapv(|v| v as f32))
}

/// Subspace alignment (Fernando, Habrard, Sebban & Tuytelaars, 2013): project each domain,
/// centred on its own mean, on its top `dims` principal directions, and map the source basis
/// onto the target's (`X_s P_s P_s^T P_t` vs `X_t P_t`). Returns both domains in the
/// `dims`-dimensional aligned space. (The paper also scales each feature; that hurts
/// L2-normalised embeddings under a fixed regulariser, see [`per_domain_standardize`].)
pub fn subspace_alignment(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
    dims: usize,
) -> Result<(Array2<f32>, Array2<f32>), EvalError> {
    check(source, target)?;
    let d = source.ncols();
    let most = d.min(source.nrows() - 1).min(target.nrows() - 1);
    if dims == 0 || dims > most {
        return Err(EvalError::Config(format!(
            "subspace alignment: dims must be in 1..={most} (features {d}, source rows {}, \
             target rows {}), got {dims}",
            source.nrows(),
            target.nrows()
        )));
    }
    let basis = |x: ArrayView2<f64>| -> Result<(Array2<f64>, Array2<f64>), EvalError> {
        let (mean, cov) = mean_cov(x);
        let (_, vecs) = tl_heads::linalg::eigh_desc(cov)?;
        let p = vecs.slice(ndarray::s![.., ..dims]).to_owned();
        Ok((&x - &mean, p))
    };
    let (cs, ps) = basis(source.mapv(f64::from).view())?;
    let (ct, pt) = basis(target.mapv(f64::from).view())?;
    let aligned = ps.dot(&ps.t().dot(&pt));
    Ok((
        cs.dot(&aligned).mapv(|v| v as f32),
        ct.dot(&pt).mapv(|v| v as f32),
    ))
}

/// Rows and folds of the domain classifier behind [`importance_weights`].
const DOMAIN_FOLDS: usize = 5;

/// Importance weights of source rows, `w(x) = p(target | x) / p(source | x) * n_s / n_t`, from a
/// logistic-regression domain classifier (inverse regularisation `c`) that is cross-fitted over
/// 5 folds so no row is weighted by a classifier that saw it. Weights are capped at `clip`
/// (a few near-target rows must not carry the whole fit) and scaled so that, after the cap,
/// they average 1.
pub fn importance_weights(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
    c: f64,
    clip: f64,
    seed: u64,
) -> Result<Vec<f64>, EvalError> {
    check(source, target)?;
    if !(clip.is_finite() && clip > 1.0) {
        return Err(EvalError::Config(format!(
            "importance weighting: clip must be a number above 1, got {clip}"
        )));
    }
    let (ns, nt) = (source.nrows(), target.nrows());
    let x = ndarray::concatenate(Axis(0), &[source, target]).expect("same column count");
    let y: Vec<usize> = (0..ns + nt).map(|i| usize::from(i >= ns)).collect();
    let names = ["source".to_string(), "target".to_string()];
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams {
        c,
        ..LogisticParams::default()
    }));
    let all: Vec<usize> = (0..ns + nt).collect();
    let folds = tl_core::split::stratified_kfold(&y, &all, DOMAIN_FOLDS, seed)
        .map_err(|e| EvalError::Config(format!("importance weighting: {e}")))?;
    let mut w = vec![0.0; ns];
    for fold in folds {
        let xtr = x.select(Axis(0), &fold.train);
        let ytr: Vec<usize> = fold.train.iter().map(|&i| y[i]).collect();
        let model = head.fit(xtr.view(), &ytr, &names, None)?;
        let src: Vec<usize> = fold.test.iter().copied().filter(|&i| i < ns).collect();
        if src.is_empty() {
            continue;
        }
        let p = model.predict_proba(x.select(Axis(0), &src).view())?;
        for (r, &i) in src.iter().enumerate() {
            let pt = p[[r, 1]].clamp(1e-6, 1.0 - 1e-6);
            w[i] = pt / (1.0 - pt) * ns as f64 / nt as f64;
        }
    }
    // The scale s with mean(min(s w, clip)) = 1, by bisection (the mean grows with s).
    let capped_mean = |s: f64| w.iter().map(|&v| (s * v).min(clip)).sum::<f64>() / ns as f64;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while capped_mean(hi) < 1.0 && hi < 1e300 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if capped_mean(mid) < 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    w.iter_mut().for_each(|v| *v = (hi * *v).min(clip));
    Ok(w)
}

/// One adaptation method with its hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// No adaptation: train on the source as it is.
    SourceOnly,
    /// [`per_domain_standardize`].
    Standardize,
    /// [`coral`] with `lambda = eps_scale * mean feature variance`.
    Coral {
        /// Regulariser as a multiple of the mean feature variance.
        eps_scale: f64,
    },
    /// [`subspace_alignment`] to `dims` dimensions.
    Subspace {
        /// Dimension of the aligned subspaces.
        dims: usize,
    },
    /// [`importance_weights`] from a domain classifier with inverse regularisation `c`.
    Importance {
        /// Inverse regularisation of the domain classifier.
        c: f64,
        /// Cap on a weight (after scaling to mean 1).
        clip: f64,
    },
    /// Model-level: the text encoder tuned by SimCSE on the target texts alone
    /// ([`tl_finetune::DomainMethod::SimCse`]).
    Simcse {
        /// Peak learning rate.
        learning_rate: f64,
        /// Passes over the target texts.
        epochs: usize,
        /// InfoNCE temperature.
        temperature: f64,
    },
    /// Model-level: the text encoder or image network fine-tuned on the source labels
    /// against a domain classifier whose gradient is reversed
    /// ([`tl_finetune::DomainMethod::Dann`]); `lambda = 0` is fine-tuning on the source
    /// alone.
    Dann {
        /// Weight of the reversed domain gradient.
        lambda: f64,
        /// Peak learning rate (none: 2e-5 for text encoders, 5e-4 for image networks, as
        /// in fine-tuning).
        learning_rate: Option<f64>,
        /// Passes over the source rows.
        epochs: usize,
        /// Image networks: the side in pixels they train and encode at (none: the
        /// model's own).
        resolution: Option<usize>,
    },
    /// Model-level: an image network's BatchNorm statistics re-estimated on each domain's
    /// own images ([`tl_finetune::adabn`]), source rows encoded with the source's, target
    /// rows with the target's.
    Adabn,
}

impl Method {
    /// Whether the method adapts the backbone itself (its features then come from the
    /// adapted model, not from the backbone's cached features).
    pub fn is_model_level(&self) -> bool {
        matches!(
            self,
            Method::Simcse { .. } | Method::Dann { .. } | Method::Adabn
        )
    }

    /// The method's name without hyperparameters.
    pub fn kind(&self) -> &'static str {
        match self {
            Method::SourceOnly => "source-only",
            Method::Standardize => "standardize",
            Method::Coral { .. } => "coral",
            Method::Subspace { .. } => "subspace",
            Method::Importance { .. } => "importance",
            Method::Simcse { .. } => "simcse",
            Method::Dann { .. } => "dann",
            Method::Adabn => "adabn",
        }
    }

    /// The method with its hyperparameters, for reports.
    pub fn label(&self) -> String {
        match self {
            Method::SourceOnly | Method::Standardize | Method::Adabn => self.kind().to_string(),
            Method::Coral { eps_scale } => format!("coral(eps_scale={eps_scale})"),
            Method::Subspace { dims } => format!("subspace(dims={dims})"),
            Method::Importance { c, clip } => format!("importance(c={c}, clip={clip})"),
            Method::Simcse {
                learning_rate,
                epochs,
                temperature,
            } => format!("simcse(lr={learning_rate}, epochs={epochs}, t={temperature})"),
            Method::Dann {
                lambda,
                learning_rate,
                epochs,
                resolution,
            } => {
                let lr = learning_rate.map_or("default".into(), |r| r.to_string());
                let px = resolution.map(|r| format!(", px={r}")).unwrap_or_default();
                format!("dann(lambda={lambda}, lr={lr}, epochs={epochs}{px})")
            }
        }
    }

    /// Applies the method: source and target features in the space the head is trained and
    /// applied in, and a weight per source row where the method reweights.
    pub fn apply(
        &self,
        source: ArrayView2<f32>,
        target: ArrayView2<f32>,
        seed: u64,
    ) -> Result<Adapted, EvalError> {
        let (source, target, weights) = match self {
            Method::SourceOnly => {
                check(source, target)?;
                (source.to_owned(), target.to_owned(), None)
            }
            Method::Standardize => {
                let (s, t) = per_domain_standardize(source, target)?;
                (s, t, None)
            }
            Method::Coral { eps_scale } => {
                (coral(source, target, *eps_scale)?, target.to_owned(), None)
            }
            Method::Subspace { dims } => {
                let (s, t) = subspace_alignment(source, target, *dims)?;
                (s, t, None)
            }
            Method::Importance { c, clip } => {
                let w = importance_weights(source, target, *c, *clip, seed)?;
                (source.to_owned(), target.to_owned(), Some(w))
            }
            Method::Simcse { .. } | Method::Dann { .. } | Method::Adabn => {
                return Err(EvalError::Config(format!(
                    "{} adapts the backbone, not its features: run it in an adaptation \
                     experiment, which encodes both domains with the adapted model",
                    self.label()
                )));
            }
        };
        Ok(Adapted {
            source,
            target,
            weights,
        })
    }
}

/// The output of [`Method::apply`].
#[derive(Debug, Clone)]
pub struct Adapted {
    /// Source features to train on.
    pub source: Array2<f32>,
    /// Target features to predict.
    pub target: Array2<f32>,
    /// Weight per source row (importance weighting only).
    pub weights: Option<Vec<f64>>,
}

/// Reverse validation (Zhong et al., ECML 2010), a score for a method that needs no target
/// labels: train on the adapted source (all but a stratified `validation_fraction`), label the
/// target with it, train a second head on the target's pseudo-labels, and score that head on
/// the held-out source rows. A method that keeps the class structure across domains scores
/// high. Returns 0 when the pseudo-labels hold fewer than two classes.
pub fn reverse_validation(
    adapted: &Adapted,
    source_labels: &[usize],
    label_names: &[String],
    head: &HeadConfig,
    validation_fraction: f64,
    seed: u64,
) -> Result<f64, EvalError> {
    let n = adapted.source.nrows();
    if source_labels.len() != n {
        return Err(EvalError::Config(format!(
            "{n} source rows but {} labels",
            source_labels.len()
        )));
    }
    let all: Vec<usize> = (0..n).collect();
    let (train, val) = stratified_split(source_labels, &all, validation_fraction, seed)?;
    let ytr: Vec<usize> = train.iter().map(|&i| source_labels[i]).collect();
    let wtr = adapted
        .weights
        .as_ref()
        .map(|w| train.iter().map(|&i| w[i]).collect::<Vec<f64>>());
    let forward = head.fit_weighted(
        adapted.source.select(Axis(0), &train).view(),
        &ytr,
        wtr.as_deref(),
        label_names,
        None,
    )?;
    let pseudo = forward.predict(adapted.target.view())?;
    let mut seen = pseudo.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() < 2 {
        // A method that maps every target row to one class has lost the class structure;
        // say so, since the report only shows the score.
        tracing::warn!(
            "reverse validation: the source-trained head labels all {} target rows {:?}; \
             scored 0",
            pseudo.len(),
            seen.first()
                .and_then(|&c| label_names.get(c))
                .map_or("", |s| s.as_str())
        );
        return Ok(0.0);
    }
    let reverse = head.fit(adapted.target.view(), &pseudo, label_names, None)?;
    let pred = reverse.predict(adapted.source.select(Axis(0), &val).view())?;
    let hits = val
        .iter()
        .zip(&pred)
        .filter(|(i, p)| source_labels[**i] == **p)
        .count();
    Ok(hits as f64 / val.len() as f64)
}
