//! Resolving a dataset argument: a built-in name (fetched on first use), `sentiment` (all three
//! sentiment domains), a table file, an image folder or IDX files. Every command and both
//! kinds of experiment go through [`load_dataset`], so one argument means one dataset
//! everywhere.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Registry, ensure_fetched};

use crate::{DataError, Dataset, TableOptions};

/// Column names for table files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableSettings {
    /// Column holding the text.
    pub text_column: String,
    /// Column holding the label.
    pub label_column: String,
    /// Optional column naming each row's split.
    pub split_column: Option<String>,
}

impl Default for TableSettings {
    fn default() -> Self {
        let d = TableOptions::default();
        TableSettings {
            text_column: d.text_column,
            label_column: d.label_column,
            split_column: d.split_column,
        }
    }
}

/// What a dataset argument names, by [`dataset_source`]'s rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetSource<'a> {
    /// A file or folder.
    Path(&'a Path),
    /// A built-in dataset (or `sentiment`).
    Builtin(&'a str),
}

/// The rule that tells a path from a built-in name, so a local `./optdigits` of two images
/// never silently replaces the 1,797 digits: an argument is a path when it contains a path
/// separator, has an extension or starts with `.` or `~`; `builtin:NAME` is always the
/// built-in; any other word is a built-in name (a local file of that name is then refused
/// with a hint to write `./NAME`).
pub fn dataset_source(name: &str) -> DatasetSource<'_> {
    if let Some(rest) = name.strip_prefix("builtin:") {
        return DatasetSource::Builtin(rest);
    }
    let path = Path::new(name);
    let looks_like_path = name.contains('/')
        || name.contains(std::path::MAIN_SEPARATOR)
        || name.starts_with('.')
        || name.starts_with('~')
        || path.extension().is_some();
    if looks_like_path {
        DatasetSource::Path(path)
    } else {
        DatasetSource::Builtin(name)
    }
}

/// Loads a dataset by name or path (the rule: [`dataset_source`]).
pub fn load_dataset(
    registry: &Registry,
    cache: &Cache,
    name: &str,
    table: &TableSettings,
) -> Result<Dataset, DataError> {
    let name = match dataset_source(name) {
        DatasetSource::Builtin(n) => n,
        DatasetSource::Path(path) => return load_path(path, table),
    };
    load_builtin_named(registry, cache, name)
}

fn load_path(path: &Path, table: &TableSettings) -> Result<Dataset, DataError> {
    if !path.exists() {
        return Err(DataError::Resolve(format!(
            "dataset {}: no such file or folder",
            path.display()
        )));
    }
    // MNIST-style IDX pairs: an image file (its labels beside it) or a folder of pairs.
    let idx_folder = path.is_dir()
        && std::fs::read_dir(path).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| crate::idx_labels_for(&e.path()).is_some())
        });
    Ok(if idx_folder || crate::idx_labels_for(path).is_some() {
        crate::load_idx_dataset(path)?
    } else if path.is_dir() {
        crate::load_image_folder(path)?
    } else {
        let opts = TableOptions {
            text_column: table.text_column.clone(),
            label_column: table.label_column.clone(),
            split_column: table.split_column.clone(),
            ..TableOptions::default()
        };
        crate::load_table(path, &opts)?
    })
}

/// Which of the two a dataset argument named, for the line a run prints ("built-in" or
/// "file ./x.csv" / "folder ./imgs").
pub fn describe_source(name: &str) -> String {
    match dataset_source(name) {
        DatasetSource::Builtin(_) => "built-in".into(),
        DatasetSource::Path(p) if p.is_dir() => format!("folder {}", p.display()),
        DatasetSource::Path(p) => format!("file {}", p.display()),
    }
}

fn load_builtin_named(
    registry: &Registry,
    cache: &Cache,
    name: &str,
) -> Result<Dataset, DataError> {
    let names: Vec<String> = if name == "sentiment" {
        ["amazon", "imdb", "yelp"]
            .iter()
            .map(|d| format!("sentiment-{d}"))
            .collect()
    } else {
        vec![name.to_string()]
    };
    let mut parts = Vec::new();
    for n in &names {
        let m = registry.get(n).map_err(|_| {
            let known: Vec<&str> = registry
                .iter()
                .filter(|m| m.dataset.is_some())
                .map(|m| m.name.as_str())
                .collect();
            let local = if Path::new(name).exists() {
                format!(" (a local {name:?} exists: write ./{name} to use it)")
            } else {
                String::new()
            };
            DataError::Resolve(format!(
                "dataset {name:?} is neither a file nor a known dataset{local}; known: sentiment, {}; a path needs a '/' or an extension",
                known.join(", ")
            ))
        })?;
        if m.dataset.is_none() {
            return Err(DataError::Resolve(format!(
                "{n} is a {:?} asset, not a dataset",
                m.kind
            )));
        }
        if Path::new(n).exists() {
            tracing::warn!(
                "dataset {n}: the built-in dataset (a local {n:?} exists: write ./{n} to use it)"
            );
        }
        ensure_fetched(m, cache)?;
        parts.push(crate::load_builtin(m, cache)?);
    }
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Ok(Dataset::concat(name, &parts)?)
    }
}
