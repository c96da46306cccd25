//! The targets: one per parser of outside data. Each writes the input where the parser reads
//! it (a file with the right extension, a shard named by its hash), runs it, and checks that
//! whatever it accepted is consistent.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};

/// A fuzz target.
pub struct Target {
    /// Name for `cargo xtask fuzz NAME`.
    pub name: &'static str,
    /// What it parses.
    pub about: &'static str,
    /// Runs one input; true when the input was accepted. Panics are findings.
    pub run: fn(&[u8], &Path) -> bool,
    /// Valid inputs to start from (may write helper files into the scratch folder).
    pub seeds: fn(&Path) -> Vec<Vec<u8>>,
    /// Tokens of the format for the mutator.
    pub dict: &'static [&'static [u8]],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "table-csv",
        about: "CSV tables (tl_data::load_table)",
        run: |b, s| table(b, s, "csv"),
        seeds: |_| table_seeds("csv"),
        dict: &[
            b"text", b"label", b"\"", b"\"\"", b",", b"\n", b"\r\n", b"NaN", b"1.0",
        ],
    },
    Target {
        name: "table-tsv",
        about: "TSV and Orange .tab tables",
        run: |b, s| table(b, s, "tab"),
        seeds: |_| table_seeds("tab"),
        dict: &[
            b"text",
            b"label",
            b"\t",
            b"\n",
            b"string",
            b"discrete",
            b"class",
            b"meta",
            b"\"",
        ],
    },
    Target {
        name: "table-json",
        about: "JSON array tables",
        run: |b, s| table(b, s, "json"),
        seeds: |_| table_seeds("json"),
        dict: &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"text\":",
            b"\"label\":",
            b"null",
            b"1.0",
            b"{\"a\":1}",
            b"\\u0000",
            b"\\\"",
        ],
    },
    Target {
        name: "table-jsonl",
        about: "JSON Lines tables",
        run: |b, s| table(b, s, "jsonl"),
        seeds: |_| table_seeds("jsonl"),
        dict: &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"text\":",
            b"\"label\":",
            b"\n",
            b"null",
            b"[[[[",
        ],
    },
    Target {
        name: "table-parquet",
        about: "Parquet tables",
        run: |b, s| table(b, s, "parquet"),
        seeds: |_| table_seeds("parquet"),
        dict: &[b"PAR1", b"text", b"label"],
    },
    Target {
        name: "idx",
        about: "IDX image and label files (MNIST format); the first byte splits the input",
        run: idx,
        seeds: |_| idx_seeds(),
        dict: &[
            b"\x00\x00\x08\x03",
            b"\x00\x00\x08\x01",
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\xff",
        ],
    },
    Target {
        name: "digits",
        about: "the gzipped 8x8 digits table (the input is gzipped by the target)",
        run: digits,
        seeds: |_| vec![digits_seed()],
        dict: &[b",", b"\n", b"16", b"0", b"-1", b"17", b"1e9"],
    },
    Target {
        name: "image",
        about: "image decoding and preprocessing (JPEG, PNG, WebP, GIF, BMP)",
        run: image,
        seeds: |_| image_seeds(),
        dict: &[
            b"\x89PNG\r\n\x1a\n",
            b"IHDR",
            b"IDAT",
            b"IEND",
            b"\xff\xd8\xff",
            b"GIF89a",
            b"BM",
            b"RIFF",
            b"WEBP",
        ],
    },
    Target {
        name: "manifest",
        about: "asset manifests (tl_assets::Manifest::parse)",
        run: manifest,
        seeds: |_| repo_files(&["models", "datasets", "runtime"], "toml"),
        dict: &[
            b"[[files]]",
            b"[[files.sources]]",
            b"[model]",
            b"[model.text]",
            b"[model.image]",
            b"[dataset]",
            b"sha256 = ",
            b"type = \"pypi\"",
            b"size = ",
            b"dim = ",
            b"optional = true",
        ],
    },
    Target {
        name: "experiment",
        about: "experiment files, both kinds (tl_eval::Experiment, AdaptationExperiment)",
        run: experiment,
        seeds: |_| repo_files(&["experiments"], "toml"),
        dict: &[
            b"[protocol]",
            b"[[heads]]",
            b"[few_shot]",
            b"[subsample]",
            b"pairs = ",
            b"[[methods]]",
            b"bootstrap = ",
            b"repeats = ",
            b"shots = [",
            b"kind = \"cv\"",
            b"folds = ",
            b"c = ",
        ],
    },
    Target {
        name: "classifier",
        about: "saved classifiers (tl_heads::Classifier::load, then predict)",
        run: classifier,
        seeds: |_| classifier_seeds(),
        dict: &[
            b"\"dim\":",
            b"\"data\":",
            b"\"classes\":",
            b"\"label_names\":",
            b"1e308",
            b"-0.0",
            b"\"kind\":\"knn\"",
            b"\"variance\":",
        ],
    },
    Target {
        name: "shard",
        about: "feature cache shards (looked up through tl_features::BackboneStore)",
        run: shard,
        seeds: shard_seeds,
        dict: &[b"PAR1", b"key", b"embedding"],
    },
    Target {
        name: "store-manifest",
        about: "feature store manifests (tl_features::Store::backbone)",
        run: store_manifest,
        seeds: |_| vec![serde_json::to_vec_pretty(&store_manifest_for(4)).expect("serialises")],
        dict: &[
            b"\"dim\":",
            b"\"version\":",
            b"\"dtype\":",
            b"\"float32\"",
            b"\"fingerprint\":",
        ],
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).expect("scratch folder is writable");
    p
}

/// What any loaded dataset must satisfy.
fn check_dataset(ds: &tl_data::Dataset) {
    assert_eq!(ds.items.len(), ds.labels.len(), "one label per item");
    assert!(
        ds.labels.iter().all(|&l| l < ds.label_names.len()),
        "label index out of range"
    );
    for (name, idx) in &ds.splits {
        assert!(
            idx.iter().all(|&i| i < ds.len()),
            "split {name} out of range"
        );
    }
    if let Some(d) = &ds.domains {
        assert_eq!(d.len(), ds.len(), "one domain per item");
    }
    assert!(
        ds.label_names
            .iter()
            .all(|n| !n.is_empty() && !n.eq_ignore_ascii_case("nan")),
        "empty or NaN class name {:?}",
        ds.label_names
    );
}

fn table(bytes: &[u8], scratch: &Path, ext: &str) -> bool {
    let p = write(scratch, &format!("t.{ext}"), bytes);
    match tl_data::load_table(&p, &tl_data::TableOptions::default()) {
        Ok(ds) => {
            check_dataset(&ds);
            true
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("t."), "error does not name the file: {m}");
            false
        }
    }
}

fn table_seeds(ext: &str) -> Vec<Vec<u8>> {
    let rows = [
        ("great blender, works", "pos"),
        ("broke in a week", "neg"),
        ("she said \"fine\"", "pos"),
        ("", "neg"),
    ];
    match ext {
        "csv" => vec![
            b"text,label\n\"great, really\",pos\nbad,neg\n\"multi\nline\",pos\n".to_vec(),
            b"text,label,split\na,1,train\nb,2.0,test\n".to_vec(),
        ],
        "tab" => vec![
            b"text\tlabel\nstring\tdiscrete\nmeta\tclass\ngood film\tpos\nbad\tneg\n".to_vec(),
            b"text\tlabel\n5\" screen\tpos\n\"q\tneg\n".to_vec(),
        ],
        "json" => vec![
            serde_json::to_vec(
                &rows
                    .iter()
                    .map(|(t, l)| serde_json::json!({"text": t, "label": l}))
                    .collect::<Vec<_>>(),
            )
            .expect("serialises"),
            br#"[{"text":"a","label":1},{"text":"b","label":2.5}]"#.to_vec(),
        ],
        "jsonl" => vec![
            rows.iter()
                .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
                .collect::<String>()
                .into_bytes(),
        ],
        _ => {
            use polars::prelude::*;
            let mut df =
                df!("text" => ["a", "b", "c"], "label" => ["x", "y", "x"]).expect("small frame");
            let mut buf = Vec::new();
            ParquetWriter::new(&mut buf)
                .finish(&mut df)
                .expect("parquet in memory");
            vec![buf]
        }
    }
}

fn idx(bytes: &[u8], scratch: &Path) -> bool {
    let Some((&split, rest)) = bytes.split_first() else {
        return false;
    };
    let at = (split as usize * rest.len() / 255).min(rest.len());
    let images = write(scratch, "images.idx", &rest[..at]);
    let labels = write(scratch, "labels.idx", &rest[at..]);
    match tl_data::load_idx(&images, &labels) {
        Ok((items, labels)) => {
            assert_eq!(items.len(), labels.len());
            for it in &items {
                if let tl_data::Item::Pixels(p) = it {
                    assert_eq!(
                        p.data.len(),
                        (p.width * p.height) as usize * p.channels as usize
                    );
                }
            }
            true
        }
        Err(_) => false,
    }
}

fn idx_seeds() -> Vec<Vec<u8>> {
    let header = |magic: u32, dims: &[u32]| {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v
    };
    let mut images = header(0x803, &[3, 2, 2]);
    images.extend(0u8..12);
    let mut labels = header(0x801, &[3]);
    labels.extend([1u8, 0, 7]);
    let split = ((images.len() * 255).div_ceil(images.len() + labels.len())) as u8;
    // The split byte maps back to the boundary only approximately; find the exact one.
    let total = images.len() + labels.len();
    let split = (0..=255u8)
        .find(|&s| s as usize * total / 255 == images.len())
        .unwrap_or(split);
    let mut seed = vec![split];
    seed.extend(images);
    seed.extend(labels);
    vec![seed]
}

fn digits(bytes: &[u8], scratch: &Path) -> bool {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("in memory");
    let p = write(scratch, "digits.csv.gz", &gz.finish().expect("in memory"));
    match tl_data::load_digits_csv_gz(&p) {
        Ok((items, labels)) => {
            assert_eq!(items.len(), labels.len());
            true
        }
        Err(_) => false,
    }
}

fn digits_seed() -> Vec<u8> {
    let mut s = String::new();
    for label in 0..3 {
        let px: Vec<String> = (0..64)
            .map(|i| ((i * 7 + label) % 17).to_string())
            .collect();
        s.push_str(&format!("{},{label}\n", px.join(",")));
    }
    s.into_bytes()
}

fn image(bytes: &[u8], _scratch: &Path) -> bool {
    let specs = [
        ImageSpec {
            size: 32,
            resize: Resize::ShorterCrop { shorter: 36 },
            pixel_max: 1.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: Layout::Nchw,
            channels: ChannelOrder::Rgb,
        },
        ImageSpec {
            size: 8,
            resize: Resize::Stretch,
            pixel_max: 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: Layout::Nhwc,
            channels: ChannelOrder::Bgr,
        },
    ];
    let input = tl_backbone::ImageInput::Encoded {
        name: "fuzz".into(),
        bytes: bytes.to_vec(),
    };
    let mut ok = false;
    for spec in &specs {
        if let Ok(v) = tl_backbone::preprocess_image(&input, spec) {
            assert_eq!(v.len(), (spec.size * spec.size * 3) as usize);
            assert!(v.iter().all(|x| x.is_finite()), "non-finite pixel value");
            ok = true;
        }
    }
    ok
}

fn image_seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tl-backbone/tests/fixtures");
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            // The decompression-bomb fixture is a finding by design, not a seed to mutate.
            let small = fs::metadata(&p).is_ok_and(|m| m.len() < 64 * 1024);
            if small && !p.to_string_lossy().contains("bomb") {
                out.extend(fs::read(&p).ok());
            }
        }
    }
    out
}

fn manifest(bytes: &[u8], _scratch: &Path) -> bool {
    let text = String::from_utf8_lossy(bytes);
    tl_assets::Manifest::parse("fuzz.toml", &text).is_ok()
}

fn experiment(bytes: &[u8], _scratch: &Path) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let origin = Path::new("fuzz.toml");
    let a = tl_eval::Experiment::from_toml(&text, origin).is_ok();
    let b = tl_eval::AdaptationExperiment::from_toml(&text, origin).is_ok();
    a || b
}

fn repo_files(dirs: &[&str], ext: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = fs::read_dir(root.join(d)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        out.extend(paths.iter().filter_map(|p| fs::read(p).ok()));
    }
    out
}

fn classifier(bytes: &[u8], scratch: &Path) -> bool {
    let p = write(scratch, "classifier.json", bytes);
    let Ok(c) = tl_heads::Classifier::load(&p) else {
        return false;
    };
    // A classifier that loads must predict; bounded so a huge `dim` is not a memory test.
    let dim = c.features.dim;
    if dim > 100_000 {
        return true;
    }
    let x = Array2::from_shape_fn((3, dim), |(i, j)| ((i * 31 + j * 7) % 11) as f32 - 5.0);
    let proba = c
        .predict_proba(x.view())
        .expect("validated classifier predicts");
    assert!(
        proba
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
        "a loaded classifier gave probabilities outside [0, 1]: {proba:?}"
    );
    let pred = c.predict(x.view()).expect("validated classifier predicts");
    assert!(pred.iter().all(|&p| p < c.label_names.len()));
    true
}

fn classifier_seeds() -> Vec<Vec<u8>> {
    use tl_heads::{HeadConfig, HeadSpec, Preprocess};
    let x = Array2::from_shape_fn((12, 4), |(i, j)| {
        ((i % 3) * 2 + j % 2) as f32 + 0.1 * i as f32
    });
    let y: Vec<usize> = (0..12).map(|i| i % 3).collect();
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    for kind in ["logistic", "linear-svm", "knn", "centroid", "ridge"] {
        let Ok(spec) = HeadSpec::from_kind(kind) else {
            continue;
        };
        let config = HeadConfig {
            preprocess: Preprocess {
                standardize: kind != "knn",
                ..Preprocess::default()
            },
            ..HeadConfig::new(spec)
        };
        if let Ok(c) = config.fit(x.view(), &y, &names, Some("feedc0de")) {
            out.push(c.to_json().into_bytes());
        }
    }
    out
}

const FP: &str = "f0220000";

fn store_manifest_for(dim: usize) -> tl_features::StoreManifest {
    tl_features::StoreManifest {
        version: tl_features::STORE_VERSION,
        fingerprint: FP.into(),
        model: "fuzz".into(),
        settings: serde_json::json!({}),
        dim,
        dtype: "float32".into(),
    }
}

fn shard_keys() -> Vec<tl_features::Key> {
    (0..4)
        .map(|i| tl_features::text_key(FP, &format!("item {i}")))
        .collect()
}

fn shard(bytes: &[u8], scratch: &Path) -> bool {
    let root = scratch.join("store");
    let _ = fs::remove_dir_all(&root);
    let store = tl_features::Store::new(&root);
    let b = store
        .backbone(store_manifest_for(4))
        .expect("fresh store opens");
    let name = format!("shard-{}.parquet", blake3::hash(bytes).to_hex());
    fs::write(b.dir().join("shards").join(name), bytes).expect("scratch is writable");
    let keys = shard_keys();
    let mut out = Array2::<f32>::zeros((keys.len(), 4));
    let mut found = vec![false; keys.len()];
    match b.lookup(&keys, &mut out, &mut found) {
        Ok(_) => {
            for (i, f) in found.iter().enumerate() {
                if *f {
                    assert!(
                        out.row(i).iter().all(|v| v.is_finite()),
                        "a served vector is not finite"
                    );
                }
            }
            found.iter().any(|f| *f)
        }
        Err(_) => false,
    }
}

fn shard_seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let root = scratch.join("seed-store");
    let _ = fs::remove_dir_all(&root);
    let b = tl_features::Store::new(&root)
        .backbone(store_manifest_for(4))
        .expect("fresh store opens");
    let v = Array2::from_shape_fn((4, 4), |(i, j)| (i * 4 + j) as f32 * 0.25 - 1.0);
    let path = b.append(&shard_keys(), v.view()).expect("seed shard");
    fs::read(path).map(|b| vec![b]).unwrap_or_default()
}

fn store_manifest(bytes: &[u8], scratch: &Path) -> bool {
    let root = scratch.join("manifest-store");
    let dir = root.join(FP);
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&dir).expect("scratch is writable");
    fs::write(dir.join("manifest.json"), bytes).expect("scratch is writable");
    tl_features::Store::new(&root)
        .backbone(store_manifest_for(4))
        .is_ok()
}
