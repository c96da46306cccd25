//! Datasets described by a manifest in `datasets/` and fetched into the cache.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tl_assets::manifest::DatasetFormat;
use tl_assets::{Cache, Manifest};

use crate::images::{load_digits_csv_gz, load_idx};
use crate::table::{TableFormat, TableOptions, assemble, read_columns, read_frame};
use crate::{DataError, Dataset, Item, index_labels};

/// Load a fetched dataset asset. Every split is loaded; counts are checked against
/// the manifest's published figures.
pub fn load_builtin(manifest: &Manifest, cache: &Cache) -> Result<Dataset, DataError> {
    let spec = manifest.dataset.as_ref().ok_or_else(|| DataError::Split {
        message: format!("{} is not a dataset", manifest.name),
    })?;
    let file = |p: &str| -> Result<PathBuf, DataError> {
        let path = cache.file_path(manifest, p);
        if path.is_file() {
            Ok(path)
        } else {
            Err(DataError::NotFetched {
                path,
                asset: manifest.name.clone(),
            })
        }
    };
    let mut items: Vec<Item> = Vec::new();
    let mut raw_labels: Vec<String> = Vec::new();
    let mut label_idx: Vec<usize> = Vec::new();
    let mut splits: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let opts = TableOptions {
        text_column: spec.text_column.clone().unwrap_or_else(|| "text".into()),
        label_column: spec.label_column.clone().unwrap_or_else(|| "label".into()),
        label_names: spec.label_names.clone(),
        ..TableOptions::default()
    };
    let by_index = !spec.label_names.is_empty();
    // Train first, so item order follows the published files' usual order.
    let mut order: Vec<(&String, &Vec<String>)> = spec.splits.iter().collect();
    order.sort_by_key(|(name, _)| (name.as_str() != "train", name.as_str()));
    for (split, files) in order {
        let start = items.len();
        // The manifest check accepts any file list; the formats need a fixed count.
        let want = match spec.format {
            DatasetFormat::Idx => Some(2),
            DatasetFormat::LabelledImages => None,
            _ => Some(1),
        };
        if want.is_some_and(|n| files.len() != n) || files.is_empty() {
            return Err(DataError::format(
                cache.asset_dir(manifest),
                None,
                Some(&format!("dataset.splits.{split}")),
                format!(
                    "{} files listed; a {:?} split needs {}",
                    files.len(),
                    spec.format,
                    match want {
                        Some(2) => "two (images, then labels)".to_string(),
                        Some(n) => n.to_string(),
                        None => "at least one".to_string(),
                    }
                ),
            ));
        }
        match spec.format {
            DatasetFormat::OrangeTab | DatasetFormat::JsonArray => {
                let path = file(&files[0])?;
                let (format, skip) = if spec.format == DatasetFormat::OrangeTab {
                    // Orange's header: names, then a types line and a flags line.
                    (TableFormat::Tsv, 2)
                } else {
                    (TableFormat::Json, 0)
                };
                let df = read_frame(&path, format, skip)?;
                let cols = read_columns(&path, &df, &opts, "text")?;
                let (texts, labels, names, _, _) = assemble(&path, format, cols, &opts)?;
                items.extend(texts.into_iter().map(Item::Text));
                if by_index {
                    label_idx.extend(labels);
                } else {
                    raw_labels.extend(labels.into_iter().map(|l| names[l].clone()));
                }
            }
            DatasetFormat::Idx => {
                let (imgs, labels) = load_idx(&file(&files[0])?, &file(&files[1])?)?;
                items.extend(imgs);
                label_idx.extend(labels);
            }
            DatasetFormat::DigitsCsvGz => {
                let (imgs, labels) = load_digits_csv_gz(&file(&files[0])?)?;
                items.extend(imgs);
                label_idx.extend(labels);
            }
            DatasetFormat::LabelledImages => {
                for f in files {
                    let path = file(f)?;
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let label = stem.rsplit('_').next().unwrap_or_default().to_string();
                    items.push(Item::ImageFile(path));
                    raw_labels.push(label);
                }
            }
        }
        splits.insert(split.clone(), (start..items.len()).collect());
        if let Some(&want) = spec.counts.get(split) {
            let got = items.len() - start;
            if got != want {
                return Err(DataError::format(
                    cache.asset_dir(manifest),
                    None,
                    None,
                    format!("split {split:?} has {got} items; the manifest says {want}"),
                ));
            }
        }
    }
    let (labels, label_names) = if by_index || raw_labels.is_empty() {
        let names = if spec.label_names.is_empty() {
            let n = label_idx.iter().max().map_or(0, |m| m + 1);
            (0..n).map(|i| i.to_string()).collect()
        } else {
            spec.label_names.clone()
        };
        if let Some(bad) = label_idx.iter().find(|&&l| l >= names.len()) {
            return Err(DataError::format(
                cache.asset_dir(manifest),
                None,
                Some("label"),
                format!("label {bad} has no name among {names:?}"),
            ));
        }
        (label_idx, names)
    } else {
        index_labels(&raw_labels)
    };
    let n = items.len();
    Ok(Dataset {
        name: manifest.name.clone(),
        items,
        labels,
        label_names,
        domains: spec.domain.as_ref().map(|d| vec![d.clone(); n]),
        splits,
        skipped: Vec::new(),
    })
}
