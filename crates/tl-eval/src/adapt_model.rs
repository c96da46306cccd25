//! Model-level domain adaptation inside adaptation experiments: the backbone itself is
//! adapted (SimCSE for text encoders, DANN for both, AdaBN for image networks, from
//! `tl-finetune`), then every source and target row is encoded by the adapted model, and
//! those vectors go through the same head, reverse validation and scoring as the
//! feature-level methods. Target labels are never read here.

use ndarray::Array2;
use tl_assets::{Cache, Registry};
use tl_data::{Dataset, Item};
use tl_finetune::{DomainMethod, FinetuneParams, ImageParams, RunOptions, Strategy, Threads};

use crate::EvalError;
use crate::adapt::Method;

/// Rows of one domain: the dataset and the row indices used.
pub(crate) struct Domain<'a> {
    pub ds: &'a Dataset,
    pub rows: &'a [usize],
}

/// Refuses a model-level method the backbone cannot take (a text method on an image
/// network, AdaBN on a text encoder, a backbone without trainable weights), before any
/// data is read.
pub(crate) fn check_backbone(
    method: &Method,
    backbone: &str,
    registry: &Registry,
) -> Result<(), EvalError> {
    let manifest = registry
        .get(backbone)
        .map_err(|e| EvalError::Config(format!("{}: {e}", method.kind())))?;
    tl_finetune::check_trainable(manifest)?;
    let text = manifest.model.as_ref().and_then(|m| m.text.as_ref());
    match (method, text) {
        (Method::Adabn, Some(_)) => Err(EvalError::Config(format!(
            "adabn re-estimates BatchNorm statistics of image networks; {backbone} is a text model"
        ))),
        (Method::Simcse { .. }, None) => Err(EvalError::Config(format!(
            "simcse adapts text encoders; {backbone} is an image model (use dann or adabn)"
        ))),
        (
            Method::Dann {
                resolution: Some(_),
                ..
            },
            Some(_),
        ) => Err(EvalError::Config(format!(
            "dann: resolution is for image networks; {backbone} is a text model"
        ))),
        (_, Some(t)) if t.pooling != tl_assets::manifest::Pooling::Mean => {
            Err(EvalError::Config(format!(
                "{}: {backbone} pools with {:?}; the training engine pools by mean",
                method.kind(),
                t.pooling
            )))
        }
        _ => Ok(()),
    }
}

/// Source and target vectors `[rows, dim]` of the backbone after `method` adapted it.
/// `labels` are the source rows' labels and `labelled` the positions among them DANN
/// may train on (reverse validation's held-out rows stay out, or its score would favour
/// the tuned encoder); the target's labels are not given. Text vectors are pooled and
/// normalised as the backbone's manifest says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adapted_features(
    method: &Method,
    backbone: &str,
    source: &Domain,
    labels: &[usize],
    labelled: &[usize],
    target: &Domain,
    classes: usize,
    registry: &Registry,
    cache: &Cache,
    seed: u64,
    progress: bool,
) -> Result<(Array2<f32>, Array2<f32>), EvalError> {
    check_backbone(method, backbone, registry)?;
    let manifest = registry
        .get(backbone)
        .map_err(|e| EvalError::Config(format!("{}: {e}", method.kind())))?;
    let spec = manifest
        .model
        .as_ref()
        .ok_or_else(|| EvalError::Config(format!("{backbone} is not a model")))?;
    let th = Threads(
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(th.0)
        .build()
        .map_err(|e| EvalError::Config(format!("threads: {e}")))?;
    // A text method: what the encoder learns, at which rate, for how many epochs.
    let text_method = match *method {
        Method::Simcse {
            learning_rate,
            epochs,
            temperature,
        } => Some((
            DomainMethod::SimCse {
                temperature: temperature as f32,
            },
            learning_rate,
            epochs,
        )),
        Method::Dann {
            lambda,
            learning_rate,
            epochs,
            ..
        } => Some((
            DomainMethod::Dann {
                lambda: lambda as f32,
            },
            learning_rate.unwrap_or(FinetuneParams::default().learning_rate as f64),
            epochs,
        )),
        _ => None,
    };
    if let (Some(how), Some(text)) = (text_method, &spec.text) {
        return text_features(
            how,
            text.normalize,
            (backbone, manifest),
            source,
            (labels, labelled),
            target,
            classes,
            cache,
            (seed, progress),
            (&pool, th),
        );
    }
    let images = |d: &Domain| -> Result<Vec<tl_backbone::ImageInput>, EvalError> {
        d.rows
            .iter()
            .map(|&i| {
                tl_features::image_input(&d.ds.items[i]).ok_or_else(|| {
                    EvalError::Config(format!(
                        "{}: row {i} is a text; {backbone} is an image model",
                        d.ds.name
                    ))
                })
            })
            .collect()
    };
    match (method, &spec.text) {
        (
            &Method::Dann {
                lambda,
                learning_rate,
                epochs,
                resolution,
            },
            None,
        ) => {
            let pre = tl_finetune::load_pretrained_image(manifest, cache, classes, seed)?;
            let (xs, xt) = (images(source)?, images(target)?);
            let params = ImageParams {
                strategy: Strategy::Full,
                learning_rate: learning_rate
                    .map_or(ImageParams::default().learning_rate, |r| r as f32),
                epochs,
                resolution,
                seed,
                threads: th.0,
                ..ImageParams::default()
            };
            let mut net = pre.model;
            let train: Vec<_> = labelled.iter().map(|&i| xs[i].clone()).collect();
            let train_labels: Vec<usize> = labelled.iter().map(|&i| labels[i]).collect();
            tl_finetune::adapt_images(
                &mut net,
                DomainMethod::Dann {
                    lambda: lambda as f32,
                },
                &train,
                &train_labels,
                &xt,
                &pre.spec,
                &params,
                &RunOptions {
                    progress,
                    ..RunOptions::default()
                },
            )?;
            // Both domains are encoded at the resolution the network was adapted at.
            let at = tl_finetune::vision::spec_at(&pre.spec, resolution);
            pool.install(|| -> Result<_, EvalError> {
                let f =
                    |x: &[tl_backbone::ImageInput]| -> Result<Array2<f32>, EvalError> {
                        let v = tl_finetune::image_features(&net, x, &at, 64, th)?;
                        Ok(Array2::from_shape_vec((x.len(), net.features), v)
                            .expect("rows x features"))
                    };
                Ok((f(&xs)?, f(&xt)?))
            })
        }
        (Method::Adabn, None) => {
            let pre = tl_finetune::load_pretrained_image(manifest, cache, classes, seed)?;
            let (xs, xt) = (images(source)?, images(target)?);
            // Each domain is normalised by its own statistics at every BatchNorm: the
            // source head then sees source images as the target network sees target
            // images (the layer-wise analogue of per-domain standardisation).
            let features = pool.install(|| -> Result<_, EvalError> {
                let f =
                    |x: &[tl_backbone::ImageInput]| -> Result<Array2<f32>, EvalError> {
                        let mut net = pre.model.clone();
                        tl_finetune::adabn(&mut net, x, &pre.spec, 64, th)?;
                        let v = tl_finetune::image_features(&net, x, &pre.spec, 64, th)?;
                        Ok(Array2::from_shape_vec((x.len(), net.features), v)
                            .expect("rows x features"))
                    };
                Ok((f(&xs)?, f(&xt)?))
            })?;
            Ok(features)
        }
        _ => Err(EvalError::Config(format!(
            "{} is a feature-level method",
            method.label()
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn text_features(
    (method, learning_rate, epochs): (DomainMethod, f64, usize),
    normalize: bool,
    (backbone, manifest): (&str, &tl_assets::manifest::Manifest),
    source: &Domain,
    (labels, labelled): (&[usize], &[usize]),
    target: &Domain,
    classes: usize,
    cache: &Cache,
    (seed, progress): (u64, bool),
    (pool, th): (&rayon::ThreadPool, Threads),
) -> Result<(Array2<f32>, Array2<f32>), EvalError> {
    let pre = tl_finetune::load_pretrained(manifest, cache, classes)?;
    let tokenizer = tokenizers::Tokenizer::from_file(&pre.tokenizer)
        .map_err(|e| EvalError::Config(format!("{}: {e}", pre.tokenizer.display())))?;
    let params = FinetuneParams {
        strategy: Strategy::Full,
        learning_rate: learning_rate as f32,
        epochs,
        seed,
        threads: th.0,
        ..FinetuneParams::default()
    };
    let texts = |d: &Domain| -> Result<Vec<Vec<u32>>, EvalError> {
        let t: Vec<String> = d
            .rows
            .iter()
            .map(|&i| match &d.ds.items[i] {
                Item::Text(t) => Ok(t.clone()),
                _ => Err(EvalError::Config(format!(
                    "{}: row {i} is not a text; {backbone} is a text model",
                    d.ds.name
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(tl_finetune::tokenize(&tokenizer, &t, params.max_length)?)
    };
    let (xs, xt) = (texts(source)?, texts(target)?);
    let mut model = pre.model;
    model.init_classifier();
    let train: Vec<Vec<u32>> = labelled.iter().map(|&i| xs[i].clone()).collect();
    let train_labels: Vec<usize> = labelled.iter().map(|&i| labels[i]).collect();
    tl_finetune::adapt_text(
        &mut model,
        method,
        &train,
        &train_labels,
        &xt,
        &params,
        &RunOptions {
            progress,
            ..RunOptions::default()
        },
    )?;
    let h = model.config.hidden_size;
    let vectors = |seqs: &[Vec<u32>]| {
        let mut v = pool.install(|| tl_finetune::sentence_vectors(&model, seqs, 64, th));
        if normalize {
            for row in v.chunks_exact_mut(h) {
                let n = row.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|a| *a /= n);
            }
        }
        Array2::from_shape_vec((seqs.len(), h), v).expect("rows x hidden")
    };
    Ok((vectors(&xs), vectors(&xt)))
}
