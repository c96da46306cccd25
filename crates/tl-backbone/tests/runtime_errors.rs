//! Runtime loading failures. A separate test binary (process) from the successful load,
//! because a process holds one ONNX Runtime.

use tl_backbone::{BackboneError, init_from};

#[test]
fn missing_library_says_how_to_fetch_it() {
    let e = init_from(std::path::Path::new(
        "/nonexistent/libonnxruntime.so.1.31.1",
    ))
    .unwrap_err();
    assert!(matches!(e, BackboneError::RuntimeMissing { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/libonnxruntime.so.1.31.1"),
        "{msg}"
    );
    assert!(msg.contains("cargo xtask fetch onnxruntime"), "{msg}");
    assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
}

#[test]
fn a_file_that_is_not_the_library_is_a_load_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let e = init_from(&fake).unwrap_err();
    assert!(matches!(e, BackboneError::RuntimeLoad { .. }), "{e:?}");
    assert!(e.to_string().contains(&fake.display().to_string()), "{e}");
}

#[test]
fn a_truncated_library_is_refused_before_loading() {
    // Loading a truncated copy used to kill the process with SIGBUS and no message.
    let real = tl_backbone::runtime_library_path().unwrap();
    let bytes = std::fs::read(&real)
        .unwrap_or_else(|e| panic!("{}: {e}: run cargo xtask fetch onnxruntime", real.display()));
    assert!(tl_backbone::check_elf(&real).is_ok());
    let tmp = tempfile::tempdir().unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 4096, 100] {
        let cut = tmp.path().join(format!("libonnxruntime-{keep}.so"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let e = init_from(&cut).unwrap_err();
        assert!(matches!(e, BackboneError::RuntimeLoad { .. }), "{e:?}");
        assert!(e.to_string().contains("truncated"), "{keep}: {e}");
    }
}
