//! Loading the fetched ONNX Runtime and opening a model with it.

use tl_assets::{Cache, Registry};

#[test]
fn the_fetched_runtime_loads_once_and_opens_a_model() {
    let path = tl_backbone::runtime_library_path().unwrap();
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask fetch onnxruntime`",
        path.display()
    );
    let env = tl_backbone::environment().unwrap();
    // A second call returns the same process-wide environment.
    let again = tl_backbone::environment().unwrap();
    assert!(std::ptr::eq(env, again));

    let registry = Registry::builtin().unwrap();
    let m = registry.get("all-minilm-l6-v2").unwrap();
    let onnx = Cache::from_env().file_path(m, "model.onnx");
    let session = ort::session::Session::builder(env)
        .unwrap()
        .commit_from_file(&onnx)
        .unwrap();
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    assert_eq!(inputs, ["input_ids", "attention_mask", "token_type_ids"]);
}
