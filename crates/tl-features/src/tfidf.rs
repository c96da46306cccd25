//! TF-IDF bag of words: the text baseline that needs no pretrained model, an [`Embedder`]
//! fitted on one training part.

use std::collections::{BTreeMap, HashMap};

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tl_backbone::{Embeddings, OnError};
use tl_core::Csr;

use crate::FeatureError;
use crate::embedder::{Embedder, Inputs, plain_embeddings};

/// Vectoriser settings (scikit-learn's `TfidfVectorizer` defaults, plus sublinear tf).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TfidfParams {
    /// Ignore terms in fewer training documents than this.
    pub min_df: usize,
    /// Keep only this many terms, the most frequent over the training documents (none: the
    /// whole vocabulary, as scikit-learn; the experiment runner keeps the matrix sparse).
    pub max_features: Option<usize>,
    /// Use 1 + ln(tf) instead of tf.
    pub sublinear_tf: bool,
}

impl Default for TfidfParams {
    fn default() -> Self {
        TfidfParams {
            min_df: 2,
            max_features: None,
            sublinear_tf: true,
        }
    }
}

/// A fitted vocabulary with inverse document frequencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Tfidf {
    params: TfidfParams,
    vocab: HashMap<String, usize>,
    idf: Vec<f32>,
    /// BLAKE3 of the settings, terms and idf: two fits agree on every vector iff it matches.
    fingerprint: String,
}

/// Lowercased tokens of two or more word characters (scikit-learn's `\b\w\w+\b`).
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.chars().count() >= 2)
        .map(str::to_lowercase)
}

impl Tfidf {
    /// Learns the vocabulary and idf from training documents only.
    pub fn fit<S: AsRef<str>>(texts: &[S], params: &TfidfParams) -> Tfidf {
        let mut df: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for t in texts {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for tok in tokenize(t.as_ref()) {
                *seen.entry(tok).or_default() += 1;
            }
            for (tok, count) in seen {
                let e = df.entry(tok).or_default();
                e.0 += 1;
                e.1 += count;
            }
        }
        let mut terms: Vec<(String, usize, usize)> = df
            .into_iter()
            .filter(|(_, (d, _))| *d >= params.min_df.max(1))
            .map(|(t, (d, total))| (t, d, total))
            .collect();
        if let Some(cap) = params.max_features
            && terms.len() > cap
        {
            // Most frequent first; ties alphabetical, so the choice is deterministic.
            terms.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            terms.truncate(cap);
            terms.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let n = texts.len() as f32;
        let mut vocab = HashMap::with_capacity(terms.len());
        let mut idf = Vec::with_capacity(terms.len());
        let mut h = blake3::Hasher::new();
        h.update(b"tl-features/tfidf/1\0");
        h.update(&[u8::from(params.sublinear_tf)]);
        for (i, (t, d, _)) in terms.into_iter().enumerate() {
            let w = ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0;
            h.update(t.as_bytes());
            h.update(b"\0");
            h.update(&w.to_le_bytes());
            vocab.insert(t, i);
            idf.push(w);
        }
        Tfidf {
            params: params.clone(),
            vocab,
            idf,
            fingerprint: format!("tfidf-{}", &h.finalize().to_hex()[..32]),
        }
    }

    /// Number of terms kept.
    pub fn dim(&self) -> usize {
        self.idf.len()
    }

    /// Sparse, L2-normalised TF-IDF rows (scikit-learn's `TfidfVectorizer` output, in f32).
    /// Documents with no known term are empty rows.
    pub fn transform_sparse<S: AsRef<str>>(&self, texts: &[S]) -> Csr {
        let rows = texts.iter().map(|t| {
            let mut counts: HashMap<usize, f32> = HashMap::new();
            for tok in tokenize(t.as_ref()) {
                if let Some(&j) = self.vocab.get(&tok) {
                    *counts.entry(j).or_default() += 1.0;
                }
            }
            let mut row: Vec<(u32, f32)> = counts
                .into_iter()
                .map(|(j, c)| {
                    let tf = if self.params.sublinear_tf {
                        1.0 + c.ln()
                    } else {
                        c
                    };
                    (j as u32, tf * self.idf[j])
                })
                .collect();
            row.sort_unstable_by_key(|&(j, _)| j);
            row
        });
        let mut m = Csr::from_rows(self.dim(), rows);
        m.l2_normalize_rows();
        m
    }

    /// Dense, L2-normalised TF-IDF rows: [`transform_sparse`](Self::transform_sparse) with
    /// every zero stored (`texts.len() x dim` floats: cap the vocabulary for large corpora).
    pub fn transform<S: AsRef<str>>(&self, texts: &[S]) -> Array2<f32> {
        let m = self.transform_sparse(texts);
        Array2::from_shape_vec((m.nrows(), m.ncols()), m.to_dense_vec(0.0)).expect("rows x dim")
    }
}

impl Embedder for Tfidf {
    fn name(&self) -> &str {
        "tfidf"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> usize {
        Tfidf::dim(self)
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or(serde_json::Value::Null)
    }
    fn caches(&self) -> bool {
        false
    }
    fn embed(&self, inputs: &Inputs<'_>, _on_error: OnError) -> Result<Embeddings, FeatureError> {
        match inputs {
            Inputs::Texts(t) => Ok(plain_embeddings(self.transform(t), Vec::new())),
            Inputs::Images(_) => Err(FeatureError::Options(
                "tfidf baseline on images; use the raw-pixels baseline".into(),
            )),
        }
    }
}
