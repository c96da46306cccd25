//! The fingerprint of a backbone: what its vectors depend on, hashed, so that a cache key
//! changes whenever the vectors could.

use serde::Serialize;
use sha2::{Digest, Sha256};
use tl_assets::Manifest;
use tl_assets::manifest::{ImageSpec, Modality, ModelSpec, OutputRef, TextSpec};

/// Version of the fingerprint recipe; bump when preprocessing or batching code changes output
/// (2: text batches of one length, so vectors no longer depend on their batch).
pub const FINGERPRINT_VERSION: u32 = 2;

/// The fingerprint of `spec` with model (and tokenizer) files of these sha256 digests.
pub(crate) fn fingerprint_of(spec: &ModelSpec, model_sha: &str, tok_sha: Option<&str>) -> String {
    let fingerprint_input = FingerprintInput {
        version: FINGERPRINT_VERSION,
        model_sha256: model_sha,
        tokenizer_sha256: tok_sha,
        modality: spec.modality,
        output: &spec.output,
        dim: spec.dim,
        text: spec.text.as_ref(),
        image: spec.image.as_ref(),
    };
    let canonical = serde_json::to_vec(&fingerprint_input).expect("plain data serialises");
    hex::encode(Sha256::digest(&canonical))[..32].to_string()
}

/// The fingerprint a [`Backbone`] opened from model manifest `m` has, computed from the
/// manifest's pinned checksums without opening anything (a backbone re-hashes its files
/// and refuses any that differ, so the two agree). None for a manifest without a model.
/// Tells which model a saved classifier was trained on.
pub fn manifest_fingerprint(m: &Manifest) -> Option<String> {
    let spec = m.model.as_ref()?;
    let model_sha = &m.file(&spec.onnx)?.sha256;
    let tok_sha = match &spec.text {
        Some(t) => Some(m.file(&t.tokenizer)?.sha256.as_str()),
        None => None,
    };
    Some(fingerprint_of(spec, model_sha, tok_sha))
}

#[derive(Serialize)]
pub(crate) struct FingerprintInput<'a> {
    version: u32,
    model_sha256: &'a str,
    tokenizer_sha256: Option<&'a str>,
    modality: Modality,
    output: &'a OutputRef,
    dim: usize,
    text: Option<&'a TextSpec>,
    image: Option<&'a ImageSpec>,
}
