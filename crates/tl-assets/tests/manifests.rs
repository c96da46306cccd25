//! Manifest parsing and validation. Bad manifests are data: each file in
//! `tests/bad-manifests/` starts with `# expect: TEXT`, and parsing it must fail with an
//! error containing TEXT and naming the file.

use std::path::Path;

use tl_assets::manifest::{Modality, OutputRef, Pooling, Resize};
use tl_assets::{AssetKind, Manifest, ManifestError, Registry};

#[test]
fn every_bad_manifest_fails_with_its_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-manifests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` line", path.display()));
        let origin = path.file_name().unwrap().to_string_lossy().into_owned();
        match Manifest::parse(&origin, &text) {
            Ok(_) => panic!("{origin}: parsed, expected an error containing {expect:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{origin}: error {msg:?} lacks {expect:?}"
                );
                assert!(
                    msg.starts_with(&origin),
                    "{origin}: error {msg:?} does not name the file"
                );
                assert!(!msg.contains('\n') || matches!(e, ManifestError::Parse { .. }));
            }
        }
        n += 1;
    }
    assert!(n >= 25, "only {n} bad manifests found");
}

#[test]
fn builtin_manifests_parse_and_match_the_files_on_disk() {
    let registry = Registry::builtin().expect("built-in manifests are valid");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut on_disk = Vec::new();
    for dir in ["runtime", "models", "datasets"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                on_disk.push(format!(
                    "{dir}/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    on_disk.sort();
    let mut builtin: Vec<String> = tl_assets::builtin_manifest_paths()
        .map(String::from)
        .collect();
    builtin.sort();
    assert_eq!(
        builtin, on_disk,
        "a manifest on disk is not embedded in tl-assets (lib.rs BUILTIN), or the reverse"
    );
    assert_eq!(registry.iter().count(), on_disk.len());
    // Each asset kind lives in the folder of its kind.
    for (path, m) in tl_assets::builtin_manifest_paths().zip(registry.iter()) {
        assert!(
            path.starts_with(m.kind.dir_name()),
            "{path} holds a {:?}",
            m.kind
        );
        assert_eq!(path, format!("{}/{}.toml", m.kind.dir_name(), m.name));
    }
}

#[test]
fn builtin_facts_match_shared_sources() {
    let r = Registry::builtin().unwrap();
    let ort = r.get("onnxruntime").unwrap();
    assert_eq!(ort.kind, AssetKind::Runtime);
    assert_eq!(
        ort.files[0].sha256,
        "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"
    );

    let l6 = r.get("all-minilm-l6-v2").unwrap().model.as_ref().unwrap();
    assert_eq!(l6.modality, Modality::Text);
    assert_eq!(l6.inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    let t = l6.text.as_ref().unwrap();
    assert_eq!(
        (t.max_length, t.pooling, t.normalize),
        (256, Pooling::Mean, true)
    );

    let l3 = r
        .get("paraphrase-minilm-l3-v2")
        .unwrap()
        .model
        .as_ref()
        .unwrap();
    assert_eq!(l3.output, OutputRef::Index(3));
    assert_eq!(l3.text.as_ref().unwrap().max_length, 128);

    let eff = r.get("efficientnet-lite0").unwrap().model.as_ref().unwrap();
    let im = eff.image.as_ref().unwrap();
    assert_eq!(im.resize, Resize::ShorterCrop { shorter: 256 });
    assert_eq!((im.pixel_max, im.mean[0], im.std[0]), (255.0, 127.0, 128.0));
    assert_eq!(eff.extra_outputs, ["logits"]);

    let nsfw = r.get("open-nsfw").unwrap().model.as_ref().unwrap();
    let im = nsfw.image.as_ref().unwrap();
    assert_eq!(nsfw.output, OutputRef::Name("Reshape:0".into()));
    assert_eq!(im.mean, [104.0, 117.0, 123.0]);

    let ng = r.get("20newsgroups").unwrap().dataset.as_ref().unwrap();
    assert_eq!(ng.counts["train"], 11293);
    assert_eq!(ng.counts["test"], 7528);
    for d in ["amazon", "imdb", "yelp"] {
        let ds = r
            .get(&format!("sentiment-{d}"))
            .unwrap()
            .dataset
            .as_ref()
            .unwrap();
        assert_eq!(ds.domain.as_deref(), Some(d));
        assert_eq!(ds.counts["all"], 1000);
    }
    assert_eq!(
        r.get("mnist").unwrap().dataset.as_ref().unwrap().counts["train"],
        60000
    );
    assert_eq!(
        r.get("optdigits").unwrap().dataset.as_ref().unwrap().counts["all"],
        1797
    );
}

#[test]
fn unknown_name_lists_the_known_ones() {
    let r = Registry::builtin().unwrap();
    let e = r.get("minilm").unwrap_err().to_string();
    assert!(e.contains("unknown asset \"minilm\""), "{e}");
    assert!(e.contains("all-minilm-l6-v2"), "{e}");
}

#[test]
fn duplicate_names_are_refused() {
    let mut r = Registry::builtin().unwrap();
    let m = r.get("mnist").unwrap().clone();
    let e = r.add("mine.toml", m).unwrap_err().to_string();
    assert!(
        e.contains("mine.toml: asset name \"mnist\" is already used by datasets/mnist.toml"),
        "{e}"
    );
}

#[test]
fn user_manifest_dir_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mobilenetv2.toml"),
    )
    .unwrap()
    .replace("name = \"mobilenetv2\"", "name = \"my-mobilenet\"");
    std::fs::write(dir.path().join("my.toml"), text).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let mut r = Registry::builtin().unwrap();
    r.add_dir(dir.path()).unwrap();
    assert!(r.get("my-mobilenet").is_ok());

    std::fs::write(dir.path().join("broken.toml"), "name = 3").unwrap();
    let e = Registry::builtin()
        .unwrap()
        .add_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.toml"), "{e}");
}

#[test]
fn manifests_round_trip_through_toml() {
    for m in Registry::builtin().unwrap().iter() {
        let text = toml::to_string(m).unwrap();
        let back = Manifest::parse("round-trip", &text).unwrap();
        assert_eq!(&back, m);
    }
}

#[test]
fn every_asset_is_attributed_in_third_party_md() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../THIRD_PARTY.md"))
            .unwrap();
    for m in Registry::builtin().unwrap().iter() {
        assert!(
            text.contains(&format!("`{}`", m.name)),
            "THIRD_PARTY.md does not mention `{}`",
            m.name
        );
    }
}
