//! Tokenisation, length-sorted batching and pooling for text backbones.

use std::path::Path;

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::BackboneError;

/// One tokenised text: ids and type ids, special tokens included, truncated.
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// A tokenizer set up for batching: truncation at the model's length, no padding (we
/// pad each batch to its own longest sequence, whatever the file says).
pub(crate) fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, BackboneError> {
    let mut tok = Tokenizer::from_file(path).map_err(|e| BackboneError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| BackboneError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(tok)
}

/// Bytes of text kept per token of `max_length` before tokenising: a token covers at least
/// one character, and English averages about 4 bytes per BERT token, so 16 leaves a wide
/// margin; a prefix that still yields too few tokens is retried longer, then whole.
const BYTES_PER_TOKEN: usize = 16;

/// Tokenise every text in parallel; one failure does not stop the others. A text far longer
/// than `max_length` tokens is cut (at a whitespace) before tokenising: a 10 MB text used to
/// take seconds and a gigabyte to produce 256 tokens. The result equals tokenising the whole
/// text: the cut is taken only when the prefix itself overflows `max_length`, and the
/// pre-tokenisers split at whitespace, so the words before the cut tokenise alike.
pub(crate) fn tokenize<S: AsRef<str> + Sync>(
    tok: &Tokenizer,
    texts: &[S],
    max_length: usize,
) -> Vec<Result<Tokens, String>> {
    texts
        .par_iter()
        .map(|t| {
            let enc = encode_prefix(tok, t.as_ref(), max_length)?;
            if enc.get_ids().is_empty() {
                return Err("tokenizer produced no tokens".into());
            }
            Ok(Tokens {
                ids: enc.get_ids().iter().map(|&v| v as i64).collect(),
                type_ids: enc.get_type_ids().iter().map(|&v| v as i64).collect(),
            })
        })
        .collect()
}

fn encode_prefix(
    tok: &Tokenizer,
    text: &str,
    max_length: usize,
) -> Result<tokenizers::Encoding, String> {
    let mut budget = max_length.saturating_mul(BYTES_PER_TOKEN).max(1024);
    while budget < text.len() {
        let mut end = budget;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if let Some(cut) = text[..end].rfind(char::is_whitespace) {
            let enc = tok.encode(&text[..cut], true).map_err(|e| e.to_string())?;
            // Overflowing parts exist only when the prefix alone was truncated.
            if !enc.get_overflowing().is_empty() {
                return Ok(enc);
            }
        }
        budget = budget.saturating_mul(4);
    }
    tok.encode(text, true).map_err(|e| e.to_string())
}

/// Indices of `lens` in batches of at most `batch` items that all have the same length, so
/// that no batch is padded.
///
/// Why exact lengths: ONNX Runtime's kernels round differently when a sequence is padded
/// (the masked positions still enter the vectorised sums) and when a batch holds one item
/// (another matrix-product path), so a vector used to depend by a few ulps on which other
/// texts shared its batch. Batches of one length and at least two rows make each vector a
/// function of the model and the text alone: the same bits in one process or split over
/// many workers, and in whatever order the texts come. A length held by one text alone is
/// run as a batch of two copies of it. Padding waste, which length sorting only reduced,
/// is gone; the price is one more run per distinct length.
pub(crate) fn length_batches(lens: &[(usize, usize)], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = lens.to_vec();
    order.sort_by_key(|&(i, len)| (len, i));
    let mut batches = Vec::new();
    for group in order.chunk_by(|a, b| a.1 == b.1) {
        for c in group.chunks(batch.max(2)) {
            let mut b: Vec<usize> = c.iter().map(|&(i, _)| i).collect();
            if b.len() == 1 {
                b.push(b[0]);
            }
            batches.push(b);
        }
    }
    batches
}

/// Mean of token states over the attention mask, as sentence-transformers computes it.
pub(crate) fn mean_pool(states: &[f32], seq: usize, dim: usize, mask: &[i64], out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    let mut count = 0f32;
    for t in 0..seq {
        if mask[t] == 0 {
            continue;
        }
        count += 1.0;
        let row = &states[t * dim..(t + 1) * dim];
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
    let count = count.max(1e-9);
    out.iter_mut().for_each(|v| *v /= count);
}

pub(crate) use tl_core::vector::l2_normalize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_length_and_at_least_two_rows() {
        let lens: Vec<(usize, usize)> = [5, 1, 9, 1, 3, 5, 1, 5, 5]
            .into_iter()
            .enumerate()
            .collect();
        let b = length_batches(&lens, 3);
        // Length 1: rows 1, 3, 6; length 3: row 4 alone (run twice); length 5: rows 0, 5, 7,
        // 8 in batches of at most 3; length 9: row 2 alone.
        assert_eq!(
            b,
            vec![
                vec![1, 3, 6],
                vec![4, 4],
                vec![0, 5, 7],
                vec![8, 8],
                vec![2, 2]
            ]
        );
        // A batch size of 1 still pairs rows: a batch of one takes another kernel path.
        assert_eq!(length_batches(&lens[..2], 1), vec![vec![1, 1], vec![0, 0]]);
    }

    #[test]
    fn mean_pool_ignores_masked_tokens() {
        let states = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mut out = [0.0; 2];
        mean_pool(&states, 3, 2, &[1, 1, 0], &mut out);
        assert_eq!(out, [2.0, 3.0]);
    }

    #[test]
    fn l2_normalize_handles_zero() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}

/// The embedding loop, as a method of [`crate::Backbone`].
mod embed_loop {

    use std::time::Instant;

    use ort::value::Tensor;

    use tl_assets::manifest::Pooling;

    use crate::*;

    impl crate::Backbone {
        /// Embed texts. Empty or whitespace-only texts embed the special tokens alone; long
        /// texts are truncated at the model's maximum length.
        pub fn embed_texts<S: AsRef<str> + Sync>(
            &self,
            texts: &[S],
            on_error: OnError,
        ) -> Result<Embeddings, BackboneError> {
            let start = Instant::now();
            let Encoder::Text { tokenizer, spec } = &self.encoder else {
                return Err(self.wrong_modality("images"));
            };
            let mut result = self.empty(texts.len());
            let t0 = Instant::now();
            let tokens = crate::text::tokenize(tokenizer, texts, spec.max_length);
            result.stats.timings.prepare = t0.elapsed();
            let mut lens = Vec::with_capacity(texts.len());
            for (i, t) in tokens.iter().enumerate() {
                match t {
                    Ok(t) => lens.push((i, t.ids.len())),
                    Err(message) => self.item_failed(
                        &mut result,
                        on_error,
                        i,
                        shorten(texts[i].as_ref()),
                        message.clone(),
                    )?,
                }
            }
            let bar = self.bar(lens.len());
            for batch in crate::text::length_batches(&lens, self.config.batch_size) {
                let seq = batch
                    .iter()
                    .map(|&i| tokens[i].as_ref().map_or(0, |t| t.ids.len()))
                    .max()
                    .unwrap_or(0);
                let n = batch.len();
                // A lone text is run as two copies (see `length_batches`); count it once.
                let unique = if batch.windows(2).all(|w| w[0] == w[1]) {
                    1
                } else {
                    n
                };
                let t0 = Instant::now();
                let mut ids = vec![0i64; n * seq];
                let mut mask = vec![0i64; n * seq];
                let mut types = vec![0i64; n * seq];
                for (r, &i) in batch.iter().enumerate() {
                    let t = tokens[i]
                        .as_ref()
                        .expect("only tokenised items are batched");
                    let len = t.ids.len();
                    ids[r * seq..r * seq + len].copy_from_slice(&t.ids);
                    mask[r * seq..r * seq + len].fill(1);
                    types[r * seq..r * seq + len].copy_from_slice(&t.type_ids);
                    if r < unique {
                        result.stats.real_tokens += len;
                    }
                }
                result.stats.processed_tokens += n * seq;
                result.stats.timings.prepare += t0.elapsed();
                // Each graph input name appears once, so ids and type ids can be moved into
                // their tensors; the mask is still needed for pooling.
                let (mut ids, mut types) = (Some(ids), Some(types));
                let mut inputs = Vec::with_capacity(self.input_names.len());
                for name in &self.input_names {
                    let data = match name.as_str() {
                        "input_ids" => ids.take().unwrap_or_default(),
                        "attention_mask" => mask.clone(),
                        _ => types.take().unwrap_or_default(),
                    };
                    let tensor = Tensor::from_array(([n, seq], data)).map_err(|e| self.ort(e))?;
                    inputs.push((name.clone(), tensor.into_dyn()));
                }
                let dim = self.spec.dim;
                self.run_batch(
                    inputs,
                    &batch,
                    &mut result,
                    |out, r, row| match spec.pooling {
                        Pooling::Mean => crate::text::mean_pool(
                            &out[r * seq * dim..(r + 1) * seq * dim],
                            seq,
                            dim,
                            &mask[r * seq..(r + 1) * seq],
                            row,
                        ),
                        Pooling::Cls => {
                            row.copy_from_slice(&out[r * seq * dim..r * seq * dim + dim])
                        }
                        Pooling::Output => row.copy_from_slice(&out[r * dim..(r + 1) * dim]),
                    },
                    spec.normalize,
                )?;
                bar.inc(unique as u64);
            }
            bar.finish_and_clear();
            result.stats.timings.total = start.elapsed();
            Ok(result)
        }
    }
}
