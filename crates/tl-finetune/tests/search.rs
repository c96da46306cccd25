//! The fine-tuning search end to end on a tiny model: successive halving stops the
//! hopeless configurations first, stays within its budget, and the chosen model is
//! exactly the one its configuration trains alone (pausing a run changes nothing).

use tl_finetune::ops::hash_uniform;
use tl_finetune::search::SearchEvent;
use tl_finetune::{
    BertClassifier, BertConfig, FinetuneParams, RunOptions, SearchSpace, Strategy, finetune,
    search_text,
};

/// Random tokens 5..30 between [CLS] = 1 and [SEP] = 2, with a marker token (3 or 4)
/// somewhere: the label is which marker.
fn marker_task(n: usize, seed: u64) -> (Vec<Vec<u32>>, Vec<usize>) {
    (0..n as u64)
        .map(|i| {
            let len = 4 + (hash_uniform(seed, 10 * i) * 8.0) as usize;
            let mut s: Vec<u32> = (0..len)
                .map(|j| 5 + (hash_uniform(seed, 10 * i + 1 + j as u64 * 1000) * 25.0) as u32)
                .collect();
            let label = (hash_uniform(seed, 10 * i + 2) * 2.0) as usize;
            let at = (hash_uniform(seed, 10 * i + 3) * len as f32) as usize;
            s[at] = 3 + label as u32;
            s.insert(0, 1);
            s.push(2);
            (s, label)
        })
        .unzip()
}

fn base() -> FinetuneParams {
    FinetuneParams {
        learning_rate: 3e-3,
        epochs: 4,
        batch_size: 16,
        dropout: 0.0,
        // The first rung comes after a fraction of an epoch: no warm-up, so that the
        // good learning rates are already at work there.
        warmup_fraction: 0.0,
        validation_fraction: 0.2,
        threads: 1,
        ..FinetuneParams::default()
    }
}

#[test]
fn the_search_stops_hopeless_configurations_and_its_choice_trains_the_same_alone() {
    let (seqs, labels) = marker_task(800, 3);
    let model = BertClassifier::random(BertConfig::tiny(32, 32, 2, 4), 2, 0);
    // Learning rates of 1e-6 learn nothing in a few hundred steps: all six must stop at
    // the first rung.
    let space = SearchSpace {
        learning_rate: vec![1e-6, 3e-3, 1e-3],
        batch_size: vec![16, 32],
        epochs: vec![3, 4],
        ..SearchSpace::default()
    };
    let mut events = Vec::new();
    let (tuned, chosen, report, search) = search_text(
        &model,
        &seqs,
        &labels,
        &base(),
        &space,
        &RunOptions::default(),
        &mut |e| events.push(e.clone()),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(search.trials.len(), 12);
    assert_eq!(search.trials[0].config.learning_rate, 3e-3, "base first");
    for t in &search.trials {
        if t.config.learning_rate == 1e-6 {
            assert_eq!(t.stopped_at, Some(0), "{:?}", t);
            // Trained to the rung and no further (a step is never cut).
            let rung = search.plan.rungs[0].units;
            assert!(t.units >= rung && t.units < rung + t.config.batch_size as u64);
        }
    }
    assert_eq!(
        search
            .trials
            .iter()
            .filter(|t| t.stopped_at.is_none())
            .count(),
        1
    );
    assert_ne!(chosen.learning_rate, 1e-6);
    assert_eq!(search.chosen_config().learning_rate, chosen.learning_rate);
    // Within the budget: at most three runs of the base configuration.
    assert!(
        search.cost_in_runs <= 3.0,
        "cost {} runs ({:?})",
        search.cost_in_runs,
        search.plan
    );
    let last = search.trials[search.chosen].scores.last().unwrap();
    assert!(last.accuracy > 0.9, "chosen validation accuracy {last:?}");
    // Its final score is the kept epoch's, accuracy and tie-breaking loss alike.
    let kept = &report.epochs[report.best_epoch - 1];
    assert_eq!(kept.epoch, report.best_epoch);
    assert_eq!(Some(last.accuracy), kept.validation_accuracy);
    assert_eq!(last.validation_loss, kept.validation_loss);
    assert!(
        kept.validation_loss
            .is_some_and(|l| l.is_finite() && l > 0.0),
        "{kept:?}"
    );
    // Events: one score per trial per rung reached, and one cut per rung.
    let scored = events
        .iter()
        .filter(|e| matches!(e, SearchEvent::Scored { .. }))
        .count();
    let reached: usize = search.trials.iter().map(|t| t.scores.len()).sum();
    assert_eq!(scored, reached);
    let cuts = events
        .iter()
        .filter(|e| matches!(e, SearchEvent::Cut { .. }))
        .count();
    assert_eq!(cuts, search.plan.rungs.len());
    // The chosen configuration trained alone gives the same weights and epochs.
    let mut alone = model.clone();
    let alone_report =
        finetune(&mut alone, &seqs, &labels, &chosen, &RunOptions::default()).unwrap();
    assert_eq!(
        alone.params, tuned.params,
        "a paused run trains differently"
    );
    assert_eq!(alone_report.best_epoch, report.best_epoch);
    assert_eq!(alone_report.epochs.len(), report.epochs.len());
}

#[test]
fn a_search_without_validation_rows_or_with_contrastive_is_refused() {
    let (seqs, labels) = marker_task(60, 1);
    let model = BertClassifier::random(BertConfig::tiny(32, 16, 1, 2), 2, 0);
    let space = SearchSpace {
        learning_rate: vec![1e-3, 3e-3],
        ..SearchSpace::default()
    };
    let run = |p: FinetuneParams, s: &SearchSpace| {
        search_text(
            &model,
            &seqs,
            &labels,
            &p,
            s,
            &RunOptions::default(),
            &mut |_| {},
            &mut |_, _| {},
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = run(
        FinetuneParams {
            validation_fraction: 0.0,
            ..base()
        },
        &space,
    );
    assert!(e.contains("validation_fraction"), "{e}");
    let e = run(
        FinetuneParams {
            strategy: Strategy::Contrastive,
            ..base()
        },
        &space,
    );
    assert!(e.contains("contrastive"), "{e}");
    let e = run(base(), &SearchSpace::default());
    assert!(e.contains("nothing to search"), "{e}");
    let e = run(
        base(),
        &SearchSpace {
            configurations: 200,
            budget: 1.0,
            learning_rate: vec![1e-3, 2e-3, 3e-3, 4e-3, 5e-3],
            batch_size: vec![4, 8, 16, 32],
            epochs: vec![4, 5, 6, 7, 8],
            ..SearchSpace::default()
        },
    );
    assert!(e.contains("fewer configurations"), "{e}");
}

#[test]
fn an_image_search_chooses_a_learning_rate_that_learns() {
    use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};
    use tl_backbone::{ImageInput, RawImage};
    use tl_finetune::{Augment, ConvNet, ImageParams, conv::Padding, search_images};

    // Dark vs bright images of a few sizes.
    let spec = ImageSpec {
        size: 16,
        resize: Resize::Stretch,
        pixel_max: 1.0,
        mean: [0.5; 3],
        std: [0.25; 3],
        layout: Layout::Nchw,
        channels: ChannelOrder::Rgb,
    };
    let images: Vec<ImageInput> = (0..120u32)
        .map(|i| {
            let v = if i % 2 == 0 { 60 } else { 190 } + (i % 7) as u8;
            ImageInput::Pixels(RawImage {
                width: 12 + i % 5,
                height: 12,
                channels: 1,
                data: vec![v; (12 * (12 + i % 5)) as usize],
            })
        })
        .collect();
    let labels: Vec<usize> = (0..120).map(|i| i % 2).collect();
    let net = ConvNet::tiny(&[8, 8], 16, 2, Padding::SameUpper, 0);
    let base = ImageParams {
        learning_rate: 1e-2,
        epochs: 4,
        batch_size: 8,
        warmup_fraction: 0.0,
        validation_fraction: 0.25,
        threads: 1,
        augment: Augment::none(),
        ..ImageParams::default()
    };
    let space = SearchSpace {
        learning_rate: vec![1e-7, 1e-2],
        batch_size: vec![8, 16],
        ..SearchSpace::default()
    };
    let (tuned, chosen, _, search) = search_images(
        &net,
        &images,
        &labels,
        &spec,
        &base,
        &space,
        &RunOptions::default(),
        &mut |_| {},
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(search.trials.len(), 4);
    assert_eq!(chosen.learning_rate, 1e-2);
    assert!(search.cost_in_runs <= 3.0, "{}", search.cost_in_runs);
    assert!(search.trials[search.chosen].scores.last().unwrap().accuracy > 0.95);
    // The same configuration alone trains the same network.
    let mut alone = net.clone();
    tl_finetune::finetune_images(
        &mut alone,
        &images,
        &labels,
        &spec,
        &chosen,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(alone.params, tuned.params);
}
