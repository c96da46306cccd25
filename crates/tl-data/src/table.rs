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
        DataError::format(path, None, None, "unknown table format: the file name must end in .csv, .tsv, .tab, .json, .jsonl, .ndjson or .parquet")
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
        // Lists and structs cast to strings like `{"pos"}` or `[1, 2]`: a class or a text
        // nobody wrote. Refuse them instead of inventing values.
        if matches!(
            c.dtype(),
            DataType::List(_) | DataType::Struct(_) | DataType::Binary
        ) {
            return Err(DataError::format(
                path,
                None,
                Some(col),
                format!(
                    "holds {} values; expected text or numbers",
                    match c.dtype() {
                        DataType::List(_) => "list (array)",
                        DataType::Struct(_) => "object (struct)",
                        _ => "binary",
                    }
                ),
            ));
        }
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
    let mut normalised = 0;
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
        if label.eq_ignore_ascii_case("nan") {
            return Err(DataError::format(
                path,
                Some(loc(row)),
                Some(&opts.label_column),
                format!(
                    "label {label:?} is not a class (a missing value?); give the row a label or remove it"
                ),
            ));
        }
        texts.push(text.to_string());
        match integral_label(label) {
            Some(int) => {
                normalised += 1;
                raw_labels.push(int);
            }
            None => raw_labels.push(label.to_string()),
        }
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
    if normalised > 0 {
        tracing::warn!(
            "{}: field `{}`: {normalised} labels written as decimals (e.g. 1.0) read as the integers they equal, so `1` and `1.0` are one class",
            path.display(),
            opts.label_column
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

/// `"1.0"`, `"2.00"` or `"1e1"` as the integer they equal (JSON and Parquet floats, or a
/// spreadsheet's export): otherwise `1` and `1.0` would be two classes.
fn integral_label(label: &str) -> Option<String> {
    if !label.contains(['.', 'e', 'E']) {
        return None;
    }
    let v: f64 = label.parse().ok()?;
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15).then(|| format!("{}", v as i64))
}

/// Deepest nesting a table file may have: a JSON table is an array of flat objects (depth 2;
/// a value that is itself an array or object is refused later, with its column named).
/// Bounding it before polars parses keeps a 3 KB file of nested brackets from taking
/// gigabytes or the stack.
pub const MAX_JSON_DEPTH: usize = 16;

/// Largest table file read (polars holds the whole file and its columns in memory).
pub const MAX_TABLE_BYTES: u64 = 8 << 30;

/// Where a JSON table is deeper than [`MAX_JSON_DEPTH`], or (`.json`) is not an array:
/// (location, message). JSON Lines are counted per line, JSON per top-level element.
fn check_json_shape(bytes: &[u8], format: TableFormat) -> Result<(), (String, String)> {
    let lines = format == TableFormat::JsonLines;
    let first = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if !lines && first.is_some_and(|i| bytes[i] != b'[') {
        return Err((
            "byte 1".into(),
            "expected a JSON array of row objects ([{...}, ...]); for one object per line use a .jsonl file".into(),
        ));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut row) = (1usize, 0usize);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                b'\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 2 && !lines {
                    row += 1;
                }
                if depth > MAX_JSON_DEPTH {
                    let at = if lines {
                        format!("line {line}")
                    } else {
                        format!("row {row} (line {line})")
                    };
                    return Err((
                        at,
                        format!(
                            "nested more than {MAX_JSON_DEPTH} levels deep; a table row is a flat object of texts and numbers"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    Ok(())
}

/// Where a JSON or JSON Lines file stops being valid JSON: (`line N`, message).
fn json_syntax_error(bytes: &[u8], format: TableFormat) -> Option<(String, String)> {
    use serde::de::IgnoredAny;
    if format == TableFormat::JsonLines {
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Err(e) = serde_json::from_slice::<IgnoredAny>(line) {
                return Some((format!("line {}", i + 1), format!("invalid JSON: {e}")));
            }
        }
        return None;
    }
    let e = serde_json::from_slice::<IgnoredAny>(bytes).err()?;
    Some((
        format!("line {}", e.line()),
        format!("invalid JSON at column {}: {e}", e.column()),
    ))
}

/// Orange's `.tab` header: a line of names, a line of types, a line of flags.
fn is_orange_header(bytes: &[u8]) -> bool {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (Some(_), Some(types), Some(flags)) = (lines.next(), lines.next(), lines.next()) else {
        return false;
    };
    let words = |l: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(l)
            .split('\t')
            .map(|w| w.trim().to_ascii_lowercase())
            .collect()
    };
    let type_ok = |w: &String| {
        [
            "d",
            "c",
            "s",
            "t",
            "discrete",
            "continuous",
            "string",
            "time",
            "",
        ]
        .contains(&w.as_str())
            || w.contains(' ')
    };
    let flag_ok = |w: &String| {
        ["class", "meta", "ignore", "weight", "i", "m", "c", "w", ""].contains(&w.as_str())
    };
    let (types, flags) = (words(types), words(flags));
    types.iter().all(type_ok) && flags.iter().all(flag_ok) && types.iter().any(|w| !w.is_empty())
}

/// Read a table as all-string columns, after checking the bytes are UTF-8 (so the error
/// can name the line). `skip_after_header` skips type lines (Orange's `.tab`).
pub(crate) fn read_frame(
    path: &Path,
    format: TableFormat,
    skip_after_header: usize,
) -> Result<DataFrame, DataError> {
    let size = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if size > MAX_TABLE_BYTES {
        return Err(DataError::format(
            path,
            None,
            None,
            format!(
                "{size} bytes; tables are read whole, up to {MAX_TABLE_BYTES} bytes: split the file or use Parquet shards"
            ),
        ));
    }
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
            // TSV has no quoting convention: a `"` in a text is just a character.
            let quote = (format == TableFormat::Csv).then_some(b'"');
            let skip_after_header = if skip_after_header == 0
                && format == TableFormat::Tsv
                && path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("tab"))
                && is_orange_header(&bytes)
            {
                tracing::info!(
                    "{}: Orange .tab header (types and flags lines skipped)",
                    path.display()
                );
                2
            } else {
                skip_after_header
            };
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
            check_json_shape(&bytes, format)
                .map_err(|(at, message)| DataError::format(path, Some(at), None, message))?;
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            let fmt = if format == TableFormat::Json {
                JsonFormat::Json
            } else {
                JsonFormat::JsonLines
            };
            crate::guard_panics(|| {
                JsonReader::new(file)
                    .with_json_format(fmt)
                    .infer_schema_len(None)
                    .finish()
            })
            .map_err(|m| DataError::format(path, None, None, format!("unreadable JSON ({m})")))?
            .map_err(|e| {
                // polars says what but not where: find the line with a JSON parser.
                match json_syntax_error(&bytes, format) {
                    Some((at, message)) => DataError::format(path, Some(at), None, message),
                    None => polars_err(e),
                }
            })
        }
        TableFormat::Parquet => {
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            crate::guard_panics(|| ParquetReader::new(file).finish())
                .map_err(|m| {
                    DataError::format(path, None, None, format!("damaged Parquet file ({m})"))
                })?
                .map_err(polars_err)
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
    use super::{TableFormat, check_json_shape, integral_label, is_orange_header, ragged_line};

    #[test]
    fn json_depth_is_bounded_before_parsing() {
        let deep = format!(
            "[{{\"text\": {}1{}, \"label\": 1}}]",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (at, msg) = check_json_shape(deep.as_bytes(), TableFormat::Json).unwrap_err();
        assert_eq!(at, "row 1 (line 1)");
        assert!(msg.contains("nested more than"), "{msg}");
        let lines = "{\"text\": \"a\", \"label\": 1}\n{\"text\": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]], \"label\": 1}\n";
        assert_eq!(
            check_json_shape(lines.as_bytes(), TableFormat::JsonLines)
                .unwrap_err()
                .0,
            "line 2"
        );
        // Brackets inside strings are text.
        let ok = format!(
            "[{{\"text\": \"{}\\\"{}\", \"label\": 1}}]",
            "[".repeat(50),
            "{".repeat(50)
        );
        assert!(check_json_shape(ok.as_bytes(), TableFormat::Json).is_ok());
        assert!(check_json_shape(b"{\"text\": \"a\", \"label\": 1}", TableFormat::Json).is_err());
    }

    #[test]
    fn decimal_labels_equal_to_integers_are_integers() {
        assert_eq!(integral_label("1.0").as_deref(), Some("1"));
        assert_eq!(integral_label("-2.00").as_deref(), Some("-2"));
        assert_eq!(integral_label("1e1").as_deref(), Some("10"));
        assert_eq!(integral_label("1.5"), None);
        assert_eq!(integral_label("1"), None);
        assert_eq!(integral_label("pos"), None);
        assert_eq!(integral_label("e.coli"), None);
    }

    #[test]
    fn orange_headers_are_recognised() {
        assert!(is_orange_header(
            b"text\tlabel\nstring\tdiscrete\nmeta\tclass\nhi\tpos\n"
        ));
        assert!(is_orange_header(b"text\tlabel\ns\td\n\tc\nhi\tpos\n"));
        assert!(!is_orange_header(
            b"text\tlabel\nhello there\tpos\nbye\tneg\n"
        ));
    }

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
