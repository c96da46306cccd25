//! A human-readable summary of a dataset (`tl data info`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::{Dataset, Item};

/// Counts per class and split, item size statistics, duplicates.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Dataset name.
    pub name: String,
    /// Number of items.
    pub items: usize,
    /// Label names.
    pub label_names: Vec<String>,
    /// Split -> items per class.
    pub class_counts: BTreeMap<String, Vec<usize>>,
    /// For texts: length in characters at the 5th, 25th, 50th, 75th, 95th percentile
    /// and the maximum; for images: none.
    pub text_length_percentiles: Option<[usize; 6]>,
    /// For images: "WxH" (or "file") -> count.
    pub image_sizes: BTreeMap<String, usize>,
    /// Items equal to an earlier item.
    pub duplicates: usize,
    /// Files skipped while loading.
    pub skipped: usize,
    /// Domains and their sizes.
    pub domains: BTreeMap<String, usize>,
}

impl Summary {
    pub(crate) fn of(ds: &Dataset) -> Summary {
        let class_counts = ds
            .splits
            .iter()
            .map(|(k, v)| (k.clone(), ds.class_counts(v)))
            .collect();
        let mut lens: Vec<usize> = ds
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Text(t) => Some(t.chars().count()),
                _ => None,
            })
            .collect();
        lens.sort_unstable();
        let text_length_percentiles = (!lens.is_empty()).then(|| {
            let q = |p: f64| lens[((lens.len() - 1) as f64 * p).round() as usize];
            [
                q(0.05),
                q(0.25),
                q(0.5),
                q(0.75),
                q(0.95),
                *lens.last().expect("non-empty"),
            ]
        });
        let mut image_sizes = BTreeMap::new();
        for item in &ds.items {
            let key = match item {
                Item::Pixels(p) => format!("{}x{}", p.width, p.height),
                Item::ImageFile(_) => "image file".to_string(),
                Item::Text(_) => continue,
            };
            *image_sizes.entry(key).or_insert(0) += 1;
        }
        let mut domains = BTreeMap::new();
        for d in ds.domains.iter().flatten() {
            *domains.entry(d.clone()).or_insert(0) += 1;
        }
        Summary {
            name: ds.name.clone(),
            items: ds.len(),
            label_names: ds.label_names.clone(),
            class_counts,
            text_length_percentiles,
            image_sizes,
            duplicates: ds.duplicates().len(),
            skipped: ds.skipped.len(),
            domains,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dataset {}: {} items, {} classes",
            self.name,
            self.items,
            self.label_names.len()
        )?;
        let width = self
            .label_names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(5)
            .max(5);
        write!(f, "  {:<width$}", "class")?;
        for split in self.class_counts.keys() {
            write!(f, " {split:>8}")?;
        }
        writeln!(f)?;
        for (c, name) in self.label_names.iter().enumerate() {
            write!(f, "  {name:<width$}")?;
            for counts in self.class_counts.values() {
                write!(f, " {:>8}", counts[c])?;
            }
            writeln!(f)?;
        }
        write!(f, "  {:<width$}", "total")?;
        for counts in self.class_counts.values() {
            write!(f, " {:>8}", counts.iter().sum::<usize>())?;
        }
        writeln!(f)?;
        if let Some(p) = self.text_length_percentiles {
            writeln!(
                f,
                "  text length (characters): p5 {} | p25 {} | median {} | p75 {} | p95 {} | max {}",
                p[0], p[1], p[2], p[3], p[4], p[5]
            )?;
        }
        for (size, n) in &self.image_sizes {
            writeln!(f, "  images {size}: {n}")?;
        }
        if !self.domains.is_empty() {
            let d: Vec<String> = self
                .domains
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  domains: {}", d.join(", "))?;
        }
        writeln!(
            f,
            "  duplicates: {} | skipped files: {}",
            self.duplicates, self.skipped
        )
    }
}
