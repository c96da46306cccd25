//! The one seam every feature system goes through: ONNX backbones (pretrained or fine-tuned and
//! exported), the TF-IDF and raw-pixels baselines. The cache, the experiment runners, selection
//! and adaptation call [`Embedder::embed`] (through [`embed_cached`](crate::embed_cached)) and
//! never ask which kind of system they hold.

use std::fs;

use ndarray::Array2;
use rayon::prelude::*;
use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};
use tl_backbone::{Backbone, EmbedStats, Embeddings, ImageInput, ItemError, OnError, RawImage};
use tl_data::Item;

use crate::embed::{encoded_key, pixels_key, text_key};
use crate::{FeatureError, Key};

/// Encoder inputs of one call: all texts or all images. Built from data items by
/// [`Inputs::from_items`], the one conversion from items to what an encoder reads.
#[derive(Debug, Clone)]
pub enum Inputs<'a> {
    /// Texts, borrowed from the items.
    Texts(Vec<&'a str>),
    /// Images: file bytes read once (so the key is of the bytes embedded) or pixel arrays.
    Images(Vec<ImageInput>),
}

impl<'a> Inputs<'a> {
    /// Converts items (all texts or all images) into encoder inputs, reading image files.
    pub fn from_items<I>(items: I) -> Result<Inputs<'a>, FeatureError>
    where
        I: IntoIterator<Item = &'a Item>,
    {
        let mut texts = Vec::new();
        let mut images = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Item::Text(t) => texts.push(t.as_str()),
                Item::ImageFile(p) => {
                    let bytes = fs::read(p).map_err(|e| FeatureError::Io {
                        path: p.clone(),
                        source: e,
                    })?;
                    images.push(ImageInput::Encoded {
                        name: p.display().to_string(),
                        bytes,
                    });
                }
                Item::Pixels(_) => images.extend(image_input(item)),
            }
            if !texts.is_empty() && !images.is_empty() {
                // The item just pushed is the odd one out: the ones before it agreed.
                let (this, before) = match item {
                    Item::Text(_) => ("a text", "images"),
                    Item::ImageFile(_) | Item::Pixels(_) => ("an image", "texts"),
                };
                return Err(FeatureError::Options(format!(
                    "item {i} is {this} but the items before it are {before}"
                )));
            }
        }
        Ok(if images.is_empty() {
            Inputs::Texts(texts)
        } else {
            Inputs::Images(images)
        })
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Images(i) => i.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cache keys of the inputs under an encoder fingerprint (a path is keyed by its bytes).
    pub fn keys(&self, fingerprint: &str) -> Result<Vec<Key>, FeatureError> {
        match self {
            Inputs::Texts(t) => Ok(t.iter().map(|t| text_key(fingerprint, t)).collect()),
            Inputs::Images(images) => images
                .iter()
                .map(|input| match input {
                    ImageInput::Encoded { bytes, .. } => Ok(encoded_key(fingerprint, bytes)),
                    ImageInput::Pixels(p) => Ok(pixels_key(
                        fingerprint,
                        p.width,
                        p.height,
                        p.channels,
                        &p.data,
                    )),
                    ImageInput::Path(p) => {
                        let bytes = fs::read(p).map_err(|e| FeatureError::Io {
                            path: p.clone(),
                            source: e,
                        })?;
                        Ok(encoded_key(fingerprint, &bytes))
                    }
                })
                .collect(),
        }
    }
}

/// The backbone input of an image item (a file stays a path, read when decoded); none for a
/// text.
pub fn image_input(item: &Item) -> Option<ImageInput> {
    match item {
        Item::ImageFile(p) => Some(ImageInput::Path(p.clone())),
        Item::Pixels(p) => Some(ImageInput::Pixels(RawImage {
            width: p.width,
            height: p.height,
            channels: p.channels,
            data: p.data.clone(),
        })),
        Item::Text(_) => None,
    }
}

/// A function from items to fixed-length vectors: what every feature system is.
pub trait Embedder: Sync {
    /// Display name (`all-minilm-l6-v2`, `tfidf`, `raw-pixels`).
    fn name(&self) -> &str;
    /// Identity of the function: equal fingerprints give equal vectors for equal inputs (the
    /// cache key's first part).
    fn fingerprint(&self) -> &str;
    /// Vector length.
    fn dim(&self) -> usize;
    /// The settings recorded in the cache's manifest.
    fn settings(&self) -> serde_json::Value;
    /// Further outputs computed in the same pass (name, width; 0 = dynamic).
    fn extra_outputs(&self) -> Vec<(&str, usize)> {
        Vec::new()
    }
    /// Whether storing its vectors pays: false for encoders cheaper than a cache read or fitted
    /// to one training part (TF-IDF, raw pixels), which [`embed_cached`](crate::embed_cached)
    /// then computes without touching the store.
    fn caches(&self) -> bool {
        true
    }
    /// Embeds one batch of inputs, failing or skipping (NaN row) items it cannot embed.
    fn embed(&self, inputs: &Inputs<'_>, on_error: OnError) -> Result<Embeddings, FeatureError>;
}

impl Embedder for Backbone {
    fn name(&self) -> &str {
        Backbone::name(self)
    }
    fn fingerprint(&self) -> &str {
        Backbone::fingerprint(self)
    }
    fn dim(&self) -> usize {
        Backbone::dim(self)
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self.spec()).unwrap_or(serde_json::Value::Null)
    }
    fn extra_outputs(&self) -> Vec<(&str, usize)> {
        Backbone::extra_outputs(self)
    }
    fn embed(&self, inputs: &Inputs<'_>, on_error: OnError) -> Result<Embeddings, FeatureError> {
        Ok(match inputs {
            Inputs::Texts(t) => self.embed_texts(t, on_error)?,
            Inputs::Images(i) => self.embed_images(i, on_error)?,
        })
    }
}

/// Embeddings computed outside a backbone (no batches or tokens to count).
pub(crate) fn plain_embeddings(features: Array2<f32>, errors: Vec<ItemError>) -> Embeddings {
    Embeddings {
        stats: EmbedStats {
            items: features.nrows(),
            ..Default::default()
        },
        features,
        extra: Vec::new(),
        errors,
    }
}

/// The image baseline that needs no pretrained model: pixels scaled to [0, 1], as they are when
/// every image has one size, else resized (stretched) to 32 x 32 RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPixels {
    native: Option<(u32, u32, u8)>,
    fingerprint: String,
}

/// The resize of images that do not share one size.
const RAW_SPEC: ImageSpec = ImageSpec {
    size: 32,
    resize: Resize::Stretch,
    // [0, 1], as the native path: 0..255 made a dark-vs-bright folder score chance (the
    // head's regulariser) and slowed every fit.
    pixel_max: 1.0,
    mean: [0.0; 3],
    std: [1.0; 3],
    layout: Layout::Nchw,
    channels: ChannelOrder::Rgb,
};

impl RawPixels {
    /// The raw-pixels encoder for these items: their native size when all are pixel arrays of
    /// one size, else 32 x 32 RGB.
    pub fn for_items<'a, I>(items: I) -> RawPixels
    where
        I: IntoIterator<Item = &'a Item>,
    {
        let mut size = None;
        let mut same = true;
        for item in items {
            match item {
                Item::Pixels(p) => match size {
                    None => size = Some((p.width, p.height, p.channels)),
                    Some(s) => same &= s == (p.width, p.height, p.channels),
                },
                _ => same = false,
            }
        }
        let native = if same { size } else { None };
        let fingerprint = match native {
            Some((w, h, c)) => format!("raw-pixels-native-{w}x{h}x{c}"),
            None => "raw-pixels-rgb-32x32".to_string(),
        };
        RawPixels {
            native,
            fingerprint,
        }
    }
}

impl Embedder for RawPixels {
    fn name(&self) -> &str {
        "raw-pixels"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> usize {
        match self.native {
            Some((w, h, c)) => w as usize * h as usize * c as usize,
            None => 32 * 32 * 3,
        }
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "native": self.native.map(|(w, h, c)| [w, h, u32::from(c)]) })
    }
    fn caches(&self) -> bool {
        false
    }
    fn embed(&self, inputs: &Inputs<'_>, on_error: OnError) -> Result<Embeddings, FeatureError> {
        let Inputs::Images(images) = inputs else {
            return Err(FeatureError::Options(
                "raw-pixels baseline on texts; use the tfidf baseline".into(),
            ));
        };
        let dim = self.dim();
        let rows: Vec<Result<Vec<f32>, String>> = images
            .par_iter()
            .map(|input| match (self.native, input) {
                (Some(size), ImageInput::Pixels(p)) => {
                    if (p.width, p.height, p.channels) != size {
                        return Err(format!(
                            "{}x{}x{} pixels, expected {}x{}x{}",
                            p.width, p.height, p.channels, size.0, size.1, size.2
                        ));
                    }
                    Ok(p.data.iter().map(|&b| f32::from(b) / 255.0).collect())
                }
                _ => tl_backbone::preprocess_image(input, &RAW_SPEC),
            })
            .collect();
        let mut x = Array2::zeros((images.len(), dim));
        let mut errors = Vec::new();
        for (r, row) in rows.into_iter().enumerate() {
            match row {
                Ok(v) if v.len() == dim => {
                    x.row_mut(r).assign(&ndarray::ArrayView1::from(&v));
                }
                Ok(v) => {
                    return Err(FeatureError::Options(format!(
                        "item {r}: {} values, expected {dim}",
                        v.len()
                    )));
                }
                Err(message) => {
                    let item = images[r].describe();
                    if on_error == OnError::Fail {
                        return Err(FeatureError::Options(format!(
                            "item {r}: {item}: {message}"
                        )));
                    }
                    x.row_mut(r).fill(f32::NAN);
                    errors.push(ItemError {
                        index: r,
                        item,
                        message,
                    });
                }
            }
        }
        Ok(plain_embeddings(x, errors))
    }
}

#[cfg(test)]
mod tests {
    use tl_data::Pixels;

    use super::*;
    use crate::{CacheOptions, Store, Tfidf, TfidfParams, embed_cached};

    fn pixels(w: u32, value: u8) -> Item {
        Item::Pixels(Pixels {
            width: w,
            height: w,
            channels: 1,
            data: vec![value; (w * w) as usize],
        })
    }

    #[test]
    fn mixed_items_are_refused_naming_the_item() {
        let items = [Item::Text("a".into()), pixels(2, 0)];
        let err = Inputs::from_items(&items).unwrap_err().to_string();
        assert!(
            err.contains("item 1 is an image but the items before it are texts"),
            "{err}"
        );
        let items = [pixels(2, 0), pixels(2, 1), Item::Text("b".into())];
        let err = Inputs::from_items(&items).unwrap_err().to_string();
        assert!(
            err.contains("item 2 is a text but the items before it are images"),
            "{err}"
        );
        let items = [pixels(2, 0), Item::Text("b".into()), Item::Text("c".into())];
        let err = Inputs::from_items(&items).unwrap_err().to_string();
        assert!(
            err.contains("item 1 is a text but the items before it are images"),
            "{err}"
        );
    }

    #[test]
    fn baselines_go_through_the_cache_call_without_writing_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let images = [pixels(2, 255), pixels(2, 51)];
        let raw = RawPixels::for_items(&images);
        assert_eq!(Embedder::dim(&raw), 4);
        let out = embed_cached(&raw, &store, &images, &CacheOptions::default()).unwrap();
        assert_eq!(out.features.row(0).to_vec(), [1.0; 4]);
        assert_eq!(out.features.row(1).to_vec(), [0.2; 4]);
        assert_eq!((out.hits, out.computed), (0, 2));

        let texts = [
            Item::Text("good film".into()),
            Item::Text("bad film".into()),
        ];
        let docs = ["good film", "bad film", "good plot"];
        let tfidf = Tfidf::fit(&docs, &TfidfParams::default());
        let out = embed_cached(&tfidf, &store, &texts, &CacheOptions::default()).unwrap();
        assert_eq!(out.features, tfidf.transform(&["good film", "bad film"]));
        assert_eq!(std::fs::read_dir(dir.path()).map_or(0, |d| d.count()), 0);
        // Another vocabulary is another function: another fingerprint.
        let other = Tfidf::fit(&docs[..2], &TfidfParams::default());
        assert_ne!(tfidf.fingerprint(), other.fingerprint());
        assert!(embed_cached(&tfidf, &store, &images, &CacheOptions::default()).is_err());
    }

    #[test]
    fn raw_pixels_of_mixed_sizes_resize_and_a_wrong_size_is_named() {
        let images = [pixels(2, 255), pixels(3, 255)];
        let raw = RawPixels::for_items(&images);
        assert_eq!(Embedder::dim(&raw), 32 * 32 * 3);
        let native = RawPixels::for_items(&images[..1]);
        let err = native
            .embed(&Inputs::from_items(&images).unwrap(), OnError::Fail)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("item 1") && err.contains("expected 2x2x1"),
            "{err}"
        );
        let skipped = native
            .embed(&Inputs::from_items(&images).unwrap(), OnError::Skip)
            .unwrap();
        assert_eq!(skipped.errors.len(), 1);
        assert!(skipped.features.row(1).iter().all(|v| v.is_nan()));
    }
}
