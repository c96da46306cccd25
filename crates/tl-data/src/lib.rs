//! Datasets for transfer-learning-rs: one [`Dataset`] shape for the whole workspace,
//! loaders for users' data and for the built-in benchmark sets. (Splits of its rows come
//! from `tl-core`.)
//!
//! A dataset is a list of items (a text, an image file, or raw pixels), one label per
//! item (an index into `label_names`), an optional domain per item, and named splits
//! (lists of item indices). Loaders exist for tables (CSV, TSV, JSON, JSON Lines,
//! Parquet, through polars), image folders (`root/<class>/<file>`, optionally
//! `root/<split>/<class>/<file>`), tables of image paths, IDX files (MNIST family) and
//! 8x8 digit tables. [`load_builtin`] reads any dataset described by a manifest in
//! `datasets/` once `cargo xtask fetch` has brought it.
//!
//! ```
//! use tl_data::{load_table, TableOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let csv = dir.path().join("reviews.csv");
//! std::fs::write(&csv, "text,label\ngreat,pos\nawful,neg\nfine,pos\nbad,neg\n")?;
//! let ds = load_table(&csv, &TableOptions::default())?;
//! assert_eq!(ds.label_names, ["neg", "pos"]);
//! assert_eq!(ds.split("all")?, [0, 1, 2, 3]);
//! assert_eq!(ds.class_counts(ds.split("all")?), [2, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod builtin;
mod guard;
mod images;
mod resolve;
mod summary;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub use builtin::load_builtin;
pub use guard::{guard_panics, inside_guard, panic_message};
pub use images::{
    MAX_IDX_BYTES, idx_labels_for, load_digits_csv_gz, load_idx, load_idx_dataset,
    load_image_folder, load_image_table,
};
pub use resolve::{DatasetSource, TableSettings, dataset_source, describe_source, load_dataset};
pub use summary::Summary;
pub use table::{TableFormat, TableOptions, load_table};

/// One item of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    /// A text.
    Text(String),
    /// An image file.
    ImageFile(PathBuf),
    /// An in-memory 8-bit image.
    Pixels(Pixels),
}

/// Raw 8-bit pixels, row-major height x width x channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pixels {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A labelled dataset with named splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Name, for reports.
    pub name: String,
    /// The items.
    pub items: Vec<Item>,
    /// Label index of each item.
    pub labels: Vec<usize>,
    /// Label names, indexed by label.
    pub label_names: Vec<String>,
    /// Domain of each item, when the data comes from several domains.
    pub domains: Option<Vec<String>>,
    /// Named splits: item indices, ascending. A dataset without splits has `all`.
    pub splits: BTreeMap<String, Vec<usize>>,
    /// Files that were skipped while loading (e.g. non-images in an image folder).
    pub skipped: Vec<PathBuf>,
}

/// Everything that can go wrong while loading or splitting data. Messages name the
/// file, the row or line, and the field.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is not what the format says.
    #[error("{path}{}{}: {message}", location.as_ref().map(|l| format!(":{l}")).unwrap_or_default(), field.as_ref().map(|f| format!(": field `{f}`")).unwrap_or_default())]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in the file (`line 3`, `row 7`, `byte 12`).
        location: Option<String>,
        /// The column or field.
        field: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A required column is absent.
    #[error("{path}: no column `{column}` (the {role} column); the file has columns {found:?}")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: String,
        /// What it was for (`text`, `label`, `split`...).
        role: &'static str,
        /// The columns present.
        found: Vec<String>,
    },
    /// A split name that the dataset does not have.
    #[error("dataset {dataset} has no split {name:?}; its splits are {known:?}")]
    UnknownSplit {
        /// Dataset name.
        dataset: String,
        /// The split asked for.
        name: String,
        /// The splits present.
        known: Vec<String>,
    },
    /// A splitting request that cannot be met.
    #[error("cannot split: {message}")]
    Split {
        /// Why.
        message: String,
    },
    /// A built-in dataset whose files are not in the cache.
    #[error("{path} is missing: run `cargo xtask fetch {asset}`")]
    NotFetched {
        /// The expected file.
        path: PathBuf,
        /// The asset to fetch.
        asset: String,
    },
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] tl_assets::ManifestError),
    /// A dataset argument that names no file, folder or built-in dataset (the message lists
    /// the known ones and says how to write a path).
    #[error("{0}")]
    Resolve(String),
    /// Fetching a built-in dataset failed.
    #[error(transparent)]
    Fetch(#[from] tl_assets::FetchError),
}

impl DataError {
    pub(crate) fn format(
        path: impl Into<PathBuf>,
        location: Option<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> DataError {
        DataError::Format {
            path: path.into(),
            location,
            field: field.map(String::from),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

impl Dataset {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.label_names.len()
    }

    /// The indices of split `name`.
    pub fn split(&self, name: &str) -> Result<&[usize], DataError> {
        self.splits
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| DataError::UnknownSplit {
                dataset: self.name.clone(),
                name: name.to_string(),
                known: self.splits.keys().cloned().collect(),
            })
    }

    /// Items per class among `indices`.
    pub fn class_counts(&self, indices: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; self.n_classes()];
        for &i in indices {
            counts[self.labels[i]] += 1;
        }
        counts
    }

    /// Pairs (duplicate, first occurrence) of items equal to an earlier item.
    pub fn duplicates(&self) -> Vec<(usize, usize)> {
        let mut first: HashMap<&Item, usize> = HashMap::with_capacity(self.items.len());
        let mut dups = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            match first.get(item) {
                Some(&j) => dups.push((i, j)),
                None => {
                    first.insert(item, i);
                }
            }
        }
        dups
    }

    /// Concatenate datasets with the same label names into one, keeping each part's
    /// name as the domain of its items; splits with the same name are merged.
    pub fn concat(name: &str, parts: &[Dataset]) -> Result<Dataset, DataError> {
        let Some(first) = parts.first() else {
            return Err(DataError::Split {
                message: "nothing to concatenate".into(),
            });
        };
        let mut out = Dataset {
            name: name.to_string(),
            items: Vec::new(),
            labels: Vec::new(),
            label_names: first.label_names.clone(),
            domains: Some(Vec::new()),
            splits: BTreeMap::new(),
            skipped: Vec::new(),
        };
        for part in parts {
            if part.label_names != out.label_names {
                return Err(DataError::Split {
                    message: format!(
                        "{} has labels {:?}, {} has {:?}",
                        part.name, part.label_names, first.name, first.label_names
                    ),
                });
            }
            let offset = out.items.len();
            out.items.extend(part.items.iter().cloned());
            out.labels.extend_from_slice(&part.labels);
            let domains = out.domains.as_mut().expect("set above");
            match &part.domains {
                Some(d) => domains.extend(d.iter().cloned()),
                None => domains.extend(std::iter::repeat_n(part.name.clone(), part.len())),
            }
            for (split, idx) in &part.splits {
                out.splits
                    .entry(split.clone())
                    .or_default()
                    .extend(idx.iter().map(|i| i + offset));
            }
            out.skipped.extend(part.skipped.iter().cloned());
        }
        Ok(out)
    }

    /// Counts per class and split, text lengths or image sizes, duplicates.
    pub fn summary(&self) -> Summary {
        Summary::of(self)
    }
}

/// Label indices and names from string labels: names sorted (numerically when every
/// label is an integer, so "10" follows "9"), each item mapped to its name's index.
pub(crate) fn index_labels(raw: &[String]) -> (Vec<usize>, Vec<String>) {
    let mut names: Vec<String> = raw.to_vec();
    names.sort_unstable();
    names.dedup();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().expect("checked"));
    }
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    (raw.iter().map(|r| index[r.as_str()]).collect(), names)
}
