//! The ONNX converter (tools/convert): deterministic output, and the rebuilt graphs
//! classify ImageNet sanity photos correctly. Needs `cargo xtask fetch` (run by
//! `cargo xtask test`) and the helper virtualenv.

use std::path::{Path, PathBuf};
use std::process::Command;

use tl_assets::{Cache, Fetcher, Manifest, Registry, sha256_file};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetched(name: &str) -> (Manifest, Fetcher) {
    let m = Registry::builtin().unwrap().get(name).unwrap().clone();
    let f = Fetcher::new(Cache::from_env()).progress(false);
    for (path, state) in f.verify(&m).unwrap() {
        assert_eq!(
            state,
            tl_assets::FileState::Ok,
            "{} is not fetched: run `cargo xtask fetch {name}` (or `cargo xtask test`)",
            path.display()
        );
    }
    (m, f)
}

fn python(f: &Fetcher) -> PathBuf {
    f.python_env().expect("helper virtualenv")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn conversions_are_deterministic() {
    for name in ["efficientnet-lite0", "mobilenetv2", "open-nsfw"] {
        let (m, f) = fetched(name);
        let spec = m.file("model.onnx").unwrap();
        let tl_assets::manifest::Source::Convert { tool, inputs, args } = &spec.sources[0] else {
            panic!("{name}: model.onnx is not converted");
        };
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("model.onnx");
        let mut cmd = Command::new(python(&f));
        cmd.arg(repo().join("tools/convert/convert.py")).arg(tool);
        for i in inputs {
            cmd.arg(f.cache().file_path(&m, i));
        }
        run(cmd.arg(&out).args(args));
        assert_eq!(
            sha256_file(&out).unwrap(),
            spec.sha256,
            "{name}: converter output changed"
        );
    }
}

fn sanity_dir() -> PathBuf {
    let (m, f) = fetched("imagenet-sanity");
    f.cache().asset_dir(&m)
}

#[test]
fn efficientnet_lite0_passes_imagenet_checks() {
    let (m, f) = fetched("efficientnet-lite0");
    let text = run(Command::new(python(&f))
        .arg(repo().join("tools/convert/check_imagenet.py"))
        .arg(f.cache().file_path(&m, "model.onnx"))
        .arg("efficientnet-lite0")
        .arg(sanity_dir()));
    assert!(text.contains("coffee.png: top-1 967"), "{text}");
    assert!(text.contains("ImageNet checks passed"), "{text}");
}

#[test]
fn mobilenetv2_passes_neighbour_checks() {
    let (m, f) = fetched("mobilenetv2");
    let text = run(Command::new(python(&f))
        .arg(repo().join("tools/convert/check_imagenet.py"))
        .arg(f.cache().file_path(&m, "model.onnx"))
        .arg("mobilenetv2")
        .arg(sanity_dir()));
    assert!(text.contains("ImageNet checks passed"), "{text}");
}

#[test]
fn open_nsfw_exposes_the_pooled_tensor() {
    let (m, f) = fetched("open-nsfw");
    let script = "import sys, numpy as np, onnxruntime as ort\n\
s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
print([o.name for o in s.get_outputs()])\n\
x = np.random.default_rng(0).uniform(-120, 130, (2, 224, 224, 3)).astype(np.float32)\n\
p, f = s.run(['outputs', 'Reshape:0'], {'input:0': x})\n\
print(p.shape, f.shape, float(abs(p.sum(1) - 1).max()))\n";
    let text = run(Command::new(python(&f))
        .args(["-c", script])
        .arg(f.cache().file_path(&m, "model.onnx")));
    assert!(text.contains("['outputs', 'Reshape:0']"), "{text}");
    assert!(text.contains("(2, 2) (2, 1024)"), "{text}");
}
