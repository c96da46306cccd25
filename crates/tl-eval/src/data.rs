//! Resolving a dataset argument: a built-in name (fetched on first use), `sentiment` (all three
//! sentiment domains), a table file or an image folder.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Fetcher, Manifest, Registry};
use tl_data::{Dataset, TableOptions};

use crate::EvalError;

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

/// Fetches `m` if any of its files is missing or corrupt (a quick check otherwise).
pub fn ensure_fetched(m: &Manifest, cache: &Cache) -> Result<(), EvalError> {
    let report = Fetcher::new(cache.clone()).fetch(m)?;
    if !report.was_noop() {
        tracing::info!("fetched {}", m.name);
    }
    Ok(())
}

/// Loads a dataset by name or path (see the module doc).
pub fn load_dataset(
    registry: &Registry,
    cache: &Cache,
    name: &str,
    table: &TableSettings,
) -> Result<Dataset, EvalError> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(if path.is_dir() {
            tl_data::load_image_folder(path)?
        } else {
            let opts = TableOptions {
                text_column: table.text_column.clone(),
                label_column: table.label_column.clone(),
                split_column: table.split_column.clone(),
                ..TableOptions::default()
            };
            tl_data::load_table(path, &opts)?
        });
    }
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
            EvalError::Config(format!(
                "dataset {name:?} is neither a file nor a known dataset; known: sentiment, {}",
                known.join(", ")
            ))
        })?;
        if m.dataset.is_none() {
            return Err(EvalError::Config(format!(
                "{n} is a {:?} asset, not a dataset",
                m.kind
            )));
        }
        ensure_fetched(m, cache)?;
        parts.push(tl_data::load_builtin(m, cache)?);
    }
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Ok(Dataset::concat(name, &parts)?)
    }
}
