//! Tables of texts and labels (CSV, TSV, JSON, JSON Lines, Parquet) through polars.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::{DataError, Dataset, Item, index_labels};

/// Table file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated, first line is the header.
    Csv,
    /// Tab-separated, first line is the header.
    Tsv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    JsonLines,
    /// Apache Parquet.
    Parquet,
}

impl TableFormat {
    /// The format a file extension stands for.
    pub fn from_path(path: &Path) -> Option<TableFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(TableFormat::Csv),
            "tsv" | "tab" => Some(TableFormat::Tsv),
            "json" => Some(TableFormat::Json),
            "jsonl" | "ndjson" => Some(TableFormat::JsonLines),
            "parquet" | "pq" => Some(TableFormat::Parquet),
            _ => None,
        }
    }
}

/// Which columns mean what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Column with the text (or, for [`crate::load_image_table`], the image path).
    pub text_column: String,
    /// Column with the label.
    pub label_column: String,
    /// Column naming each row's split (e.g. `train`/`test`); none: one split `all`.
    pub split_column: Option<String>,
    /// Column naming each row's domain.
    pub domain_column: Option<String>,
    /// Format; none: from the file extension.
    pub format: Option<TableFormat>,
    /// Label names by index, when the label column holds indices 0..n.
    pub label_names: Vec<String>,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            text_column: "text".into(),
            label_column: "label".into(),
            split_column: None,
            domain_column: None,
            format: None,
            label_names: Vec::new(),
        }
    }
}

/// Load a table of texts and labels. Rows whose text and label are both empty are
/// dropped (trailing blank records are common); any other missing value is an error
/// naming the row and field.
pub fn load_table(path: &Path, opts: &TableOptions) -> Result<Dataset, DataError> {
    let format = opts.format.or_else(|| TableFormat::from_path(path)).ok_or_else(|| {
        DataError::format(path, None, None, "unknown table format: use a .csv, .tsv, .json, .jsonl or .parquet file, or name the format")
    })?;
    let df = read_frame(path, format, 0)?;
    let columns = read_columns(path, &df, opts, "text")?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (items, labels, label_names, domains, splits) = assemble(path, format, columns, opts)?;
    Ok(Dataset {
        name,
        items: items.into_iter().map(Item::Text).collect(),
        labels,
        label_names,
        domains,
        splits,
        skipped: Vec::new(),
    })
}

/// Columns of interest as optional strings, row by row.
pub(crate) struct Columns {
    pub text: Vec<Option<String>>,
    pub label: Vec<Option<String>>,
    pub split: Option<Vec<Option<String>>>,
    pub domain: Option<Vec<Option<String>>>,
}

pub(crate) fn read_columns(
    path: &Path,
    df: &DataFrame,
    opts: &TableOptions,
    text_role: &'static str,
) -> Result<Columns, DataError> {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let get = |col: &str, role: &'static str| -> Result<Vec<Option<String>>, DataError> {
        let c = df.column(col).map_err(|_| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: col.to_string(),
            role,
            found: names.clone(),
        })?;
        let c = c.cast(&DataType::String).map_err(|e| {
            DataError::format(path, None, Some(col), format!("cannot read as text: {e}"))
        })?;
        let s = c
            .str()
            .map_err(|e| DataError::format(path, None, Some(col), e.to_string()))?;
        Ok(s.iter().map(|v| v.map(str::to_string)).collect())
    };
    Ok(Columns {
        text: get(&opts.text_column, text_role)?,
        label: get(&opts.label_column, "label")?,
        split: opts
            .split_column
            .as_deref()
            .map(|c| get(c, "split"))
            .transpose()?,
        domain: opts
            .domain_column
            .as_deref()
            .map(|c| get(c, "domain"))
            .transpose()?,
    })
}

type Assembled = (
    Vec<String>,
    Vec<usize>,
    Vec<String>,
    Option<Vec<String>>,
    BTreeMap<String, Vec<usize>>,
);

/// Check every row and turn the columns into dataset parts.
pub(crate) fn assemble(
    path: &Path,
    format: TableFormat,
    c: Columns,
    opts: &TableOptions,
) -> Result<Assembled, DataError> {
    let loc = |row: usize| match format {
        TableFormat::Csv | TableFormat::Tsv => format!("line {}", row + 2),
        TableFormat::JsonLines => format!("line {}", row + 1),
        _ => format!("row {}", row + 1),
    };
    let mut texts = Vec::with_capacity(c.text.len());
    let mut raw_labels = Vec::with_capacity(c.text.len());
    let mut domains = c.domain.as_ref().map(|_| Vec::new());
    let mut split_of = Vec::new();
    let mut blank = 0;
    for row in 0..c.text.len() {
        let text = c.text[row].as_deref();
        let label = c.label[row]
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty());
        if text.is_none_or(|t| t.trim().is_empty()) && label.is_none() {
            blank += 1;
            continue;
        }
        let Some(label) = label else {
            return Err(DataError::format(
                path,
                Some(loc(row)),
                Some(&opts.label_column),
                "missing label",
            ));
        };
        let Some(text) = text else {
            return Err(DataError::format(
                path,
                Some(loc(row)),
                Some(&opts.text_column),
                "missing value",
            ));
        };
        texts.push(text.to_string());
        raw_labels.push(label.to_string());
        if let (Some(d), Some(col)) = (domains.as_mut(), c.domain.as_ref()) {
            d.push(col[row].clone().unwrap_or_default());
        }
        if let Some(s) = &c.split {
            let split = s[row]
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    DataError::format(
                        path,
                        Some(loc(row)),
                        opts.split_column.as_deref(),
                        "missing split name",
                    )
                })?;
            split_of.push(split.to_string());
        }
    }
    if blank > 0 {
        tracing::info!(
            "{}: dropped {blank} blank rows (no text and no label)",
            path.display()
        );
    }
    if texts.is_empty() {
        return Err(DataError::format(
            path,
            None,
            None,
            "no data rows (empty file or header only)",
        ));
    }
    let (labels, names) = if opts.label_names.is_empty() {
        index_labels(&raw_labels)
    } else {
        let mut labels = Vec::with_capacity(raw_labels.len());
        for (row, l) in raw_labels.iter().enumerate() {
            let idx = l
                .parse::<usize>()
                .ok()
                .filter(|&i| i < opts.label_names.len())
                .ok_or_else(|| {
                    DataError::format(
                        path,
                        Some(format!("data row {}", row + 1)),
                        Some(&opts.label_column),
                        format!(
                            "label {l:?} is not an index below {}",
                            opts.label_names.len()
                        ),
                    )
                })?;
            labels.push(idx);
        }
        (labels, opts.label_names.clone())
    };
    let mut splits: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    if c.split.is_some() {
        for (i, s) in split_of.into_iter().enumerate() {
            splits.entry(s).or_default().push(i);
        }
    } else {
        splits.insert("all".into(), (0..texts.len()).collect());
    }
    Ok((texts, labels, names, domains, splits))
}

/// Read a table as all-string columns, after checking the bytes are UTF-8 (so the error
/// can name the line). `skip_after_header` skips type lines (Orange's `.tab`).
pub(crate) fn read_frame(
    path: &Path,
    format: TableFormat,
    skip_after_header: usize,
) -> Result<DataFrame, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DataError::format(path, None, None, "empty file"));
    }
    if format != TableFormat::Parquet
        && let Err(e) = std::str::from_utf8(&bytes)
    {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(DataError::format(
            path,
            Some(format!("line {line}")),
            None,
            format!("invalid UTF-8 at byte {at}; save the file as UTF-8"),
        ));
    }
    let polars_err = |e: PolarsError| DataError::format(path, None, None, e.to_string());
    match format {
        TableFormat::Csv | TableFormat::Tsv => {
            let sep = if format == TableFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let quote = (skip_after_header == 0).then_some(b'"');
            if let Some((line, found, want)) = ragged_line(&bytes, sep, quote) {
                return Err(DataError::format(
                    path,
                    Some(format!("line {line}")),
                    None,
                    format!("has {found} fields; the header has {want}"),
                ));
            }
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .with_skip_rows_after_header(skip_after_header)
                .with_parse_options(
                    CsvParseOptions::default()
                        .with_separator(sep)
                        .with_quote_char(quote)
                        .with_missing_is_null(true),
                )
                .try_into_reader_with_file_path(Some(PathBuf::from(path)))
                .map_err(polars_err)?
                .finish()
                .map_err(polars_err)
        }
        TableFormat::Json | TableFormat::JsonLines => {
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            let fmt = if format == TableFormat::Json {
                JsonFormat::Json
            } else {
                JsonFormat::JsonLines
            };
            JsonReader::new(file)
                .with_json_format(fmt)
                .infer_schema_len(None)
                .finish()
                .map_err(polars_err)
        }
        TableFormat::Parquet => {
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            ParquetReader::new(file).finish().map_err(polars_err)
        }
    }
}

/// The first line whose field count differs from the header's: (line, found, wanted).
/// Quote-aware, so separators inside quoted fields do not count.
fn ragged_line(bytes: &[u8], sep: u8, quote: Option<u8>) -> Option<(usize, usize, usize)> {
    let mut want = None;
    let mut fields = 1;
    let mut in_quotes = false;
    let mut line = 1;
    let mut line_start = 1;
    let mut empty = true;
    for &b in bytes {
        if Some(b) == quote {
            in_quotes = !in_quotes;
        } else if !in_quotes && b == sep {
            fields += 1;
        } else if !in_quotes && b == b'\n' {
            if !empty {
                match want {
                    None => want = Some(fields),
                    Some(w) if w != fields => return Some((line_start, fields, w)),
                    _ => {}
                }
            }
            fields = 1;
            empty = true;
            line += 1;
            line_start = line;
            continue;
        } else if b == b'\n' {
            line += 1;
        }
        if !b.is_ascii_whitespace() {
            empty = false;
        }
    }
    match want {
        Some(w) if !empty && w != fields => Some((line_start, fields, w)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ragged_line;

    #[test]
    fn ragged_lines_are_found_outside_quotes() {
        assert_eq!(
            ragged_line(b"a,b\n1,2\n3,4,5\n", b',', Some(b'"')),
            Some((3, 3, 2))
        );
        assert_eq!(ragged_line(b"a,b\n\"1,x\",2\n", b',', Some(b'"')), None);
        assert_eq!(
            ragged_line(b"a,b\n\"multi\nline\",2\n4\n", b',', Some(b'"')),
            Some((4, 1, 2))
        );
        assert_eq!(ragged_line(b"a,b\n1,2\n\n", b',', Some(b'"')), None);
    }
}
