//! Export of a dataset's features with ids and labels, for tools outside this toolkit.

use std::fs;
use std::path::Path;

use ndarray::ArrayView2;
use polars::prelude::*;

use crate::FeatureError;

/// Writes `id`, `label`, `f0` ... `f{d-1}` columns to `path`, as Parquet or CSV by its
/// extension (`.parquet` / `.csv`), atomically.
pub fn export_features(
    path: &Path,
    ids: &[String],
    labels: &[String],
    features: ArrayView2<f32>,
) -> Result<(), FeatureError> {
    let n = features.nrows();
    if ids.len() != n || labels.len() != n {
        return Err(FeatureError::Options(format!(
            "export needs one id and one label per row: {n} rows, {} ids, {} labels",
            ids.len(),
            labels.len()
        )));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "parquet" && ext != "csv" {
        return Err(FeatureError::Options(format!(
            "{}: export format comes from the extension, `.parquet` or `.csv`",
            path.display()
        )));
    }
    let mut columns = vec![
        Column::new("id".into(), ids),
        Column::new("label".into(), labels),
    ];
    for (j, col) in features.columns().into_iter().enumerate() {
        columns.push(Column::new(format!("f{j}").into(), col.to_vec()));
    }
    let polars = |e: PolarsError| FeatureError::Export {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut df = DataFrame::new(n, columns).map_err(polars)?;
    let mut buf = Vec::new();
    if ext == "parquet" {
        ParquetWriter::new(&mut buf)
            .with_compression(ParquetCompression::Snappy)
            .finish(&mut df)
            .map_err(polars)?;
    } else {
        CsvWriter::new(&mut buf).finish(&mut df).map_err(polars)?;
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| FeatureError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FeatureError::Options(format!("{}: not a file name", path.display())))?;
    crate::store::write_atomic(dir, name, &buf)?;
    Ok(())
}
