//! Image datasets: folders of class sub-folders, tables of paths, IDX files, 8x8 digits.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::table::{TableFormat, TableOptions, assemble, read_columns, read_frame};
use crate::{DataError, Dataset, Item, Pixels, index_labels};

/// File extensions taken as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// Split folder names recognised in `root/<split>/<class>/` layouts.
const SPLIT_NAMES: &[&str] = &["train", "test", "val", "valid", "validation", "dev"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Load `root/<class>/<image>` or, when every sub-folder of `root` is a split name
/// (`train`, `test`, `val`...), `root/<split>/<class>/<image>`. Files that are not
/// images (by extension) are skipped and listed in [`Dataset::skipped`]; a class
/// folder without images is an error.
pub fn load_image_folder(root: &Path) -> Result<Dataset, DataError> {
    let dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if dirs.is_empty() {
        return Err(DataError::format(
            root,
            None,
            None,
            "no class folders (expected root/<class>/<image files>)",
        ));
    }
    let split_layout = dirs.iter().all(|d| {
        d.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SPLIT_NAMES.contains(&n.to_ascii_lowercase().as_str()))
    });
    let groups: Vec<(String, PathBuf)> = if split_layout {
        dirs.iter()
            .map(|d| {
                (
                    d.file_name().expect("dir").to_string_lossy().into_owned(),
                    d.clone(),
                )
            })
            .collect()
    } else {
        vec![("all".to_string(), root.to_path_buf())]
    };
    let mut items = Vec::new();
    let mut raw_labels = Vec::new();
    let mut splits: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (split, dir) in groups {
        for class_dir in sorted_entries(&dir)? {
            if !class_dir.is_dir() {
                skipped.push(class_dir);
                continue;
            }
            let class = class_dir
                .file_name()
                .expect("dir")
                .to_string_lossy()
                .into_owned();
            let mut n = 0;
            for f in sorted_entries(&class_dir)? {
                if f.is_file() && is_image(&f) {
                    splits.entry(split.clone()).or_default().push(items.len());
                    items.push(Item::ImageFile(f));
                    raw_labels.push(class.clone());
                    n += 1;
                } else {
                    skipped.push(f);
                }
            }
            if n == 0 {
                return Err(DataError::format(
                    &class_dir,
                    None,
                    None,
                    format!(
                        "class folder {class:?} holds no images ({})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(
            "{}: skipped {} files that are not images",
            root.display(),
            skipped.len()
        );
    }
    let (labels, label_names) = index_labels(&raw_labels);
    Ok(Dataset {
        name: root
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        items,
        labels,
        label_names,
        domains: None,
        splits,
        skipped,
    })
}

/// Load a table of image paths and labels; `opts.text_column` names the path column
/// (paths relative to the table's folder). Every path must exist.
pub fn load_image_table(path: &Path, opts: &TableOptions) -> Result<Dataset, DataError> {
    let format = opts
        .format
        .or_else(|| TableFormat::from_path(path))
        .ok_or_else(|| {
            DataError::format(
                path,
                None,
                None,
                "unknown table format: use .csv, .tsv, .json, .jsonl or .parquet",
            )
        })?;
    let df = read_frame(path, format, 0)?;
    let columns = read_columns(path, &df, opts, "image path")?;
    let (paths, labels, label_names, domains, splits) = assemble(path, format, columns, opts)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::with_capacity(paths.len());
    for (row, p) in paths.iter().enumerate() {
        let full = base.join(p.trim());
        if !full.is_file() {
            return Err(DataError::format(
                path,
                Some(format!("data row {}", row + 1)),
                Some(&opts.text_column),
                format!("image {} does not exist", full.display()),
            ));
        }
        items.push(Item::ImageFile(full));
    }
    Ok(Dataset {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        items,
        labels,
        label_names,
        domains,
        splits,
        skipped: Vec::new(),
    })
}

/// Largest IDX file read (decompressed): MNIST's training images are 47 MB.
pub const MAX_IDX_BYTES: u64 = 4 << 30;

fn read_idx(path: &Path, want_magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    // MNIST-style sets ship gzipped (`train-images-idx3-ubyte.gz`).
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::format(path, None, None, format!("not a readable gzip file: {e}"))
            })?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(DataError::format(
                path,
                None,
                None,
                format!("decompresses to more than {MAX_IDX_BYTES} bytes"),
            ));
        }
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            Some("byte 0".into()),
            None,
            format!(
                "file is {} bytes; an IDX header needs at least 4",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != want_magic {
        return Err(DataError::format(
            path,
            Some("byte 0".into()),
            Some("magic"),
            format!(
                "magic number {magic:#010x}; expected {want_magic:#010x} (unsigned bytes, {} dimensions)",
                want_magic & 0xff
            ),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            None,
            None,
            format!("truncated header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let need = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            DataError::format(
                path,
                Some("byte 4".into()),
                Some("dimensions"),
                format!("dimensions {dims:?} overflow; not an IDX file"),
            )
        })?;
    let have = bytes.len() - header;
    if have != need {
        return Err(DataError::format(
            path,
            Some(format!("byte {header}")),
            None,
            format!(
                "dimensions {dims:?} need {need} data bytes, the file has {have} (truncated or wrong file)"
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// The label file next to an IDX image file: `*-images-idx3-ubyte[.gz]` (or `.idx3`) has
/// `*-labels-idx1-ubyte[.gz]`.
pub fn idx_labels_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    if !name.contains("idx3") {
        return None;
    }
    let labels = name.replace("images", "labels").replace("idx3", "idx1");
    let path = images.with_file_name(labels);
    path.is_file().then_some(path)
}

/// Load an IDX data set given as one image file (its label file found by name, see
/// [`idx_labels_for`]) or a folder of such pairs, one split per pair named by the file's
/// prefix (`train-…` is `train`, `t10k-…` and `test-…` are `test`).
pub fn load_idx_dataset(path: &Path) -> Result<Dataset, DataError> {
    let pairs: Vec<(PathBuf, PathBuf)> = if path.is_dir() {
        sorted_entries(path)?
            .into_iter()
            .filter_map(|p| idx_labels_for(&p).map(|l| (p, l)))
            .collect()
    } else {
        let labels = idx_labels_for(path).ok_or_else(|| {
            DataError::format(
                path,
                None,
                None,
                "an IDX image file needs its label file beside it (`*-images-idx3-ubyte` -> `*-labels-idx1-ubyte`)",
            )
        })?;
        vec![(path.to_path_buf(), labels)]
    };
    if pairs.is_empty() {
        return Err(DataError::format(
            path,
            None,
            None,
            "no IDX image/label file pairs (`*-images-idx3-ubyte[.gz]` with `*-labels-idx1-ubyte[.gz]`)",
        ));
    }
    // Training rows first, as the built-in loader orders them.
    let mut pairs = pairs;
    pairs.sort_by_key(|(img, _)| {
        let name = img.file_name().map(|n| n.to_string_lossy().into_owned());
        (
            !name.as_deref().is_some_and(|n| n.starts_with("train")),
            name,
        )
    });
    let mut items = Vec::new();
    let mut labels = Vec::new();
    let mut splits: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (img, lab) in &pairs {
        let name = img.file_name().and_then(|n| n.to_str()).unwrap_or("all");
        let prefix = name.split(['-', '.', '_']).next().unwrap_or("all");
        let split = match prefix {
            "t10k" | "test" => "test",
            "" => "all",
            p => p,
        };
        let (imgs, ls) = load_idx(img, lab)?;
        let start = items.len();
        items.extend(imgs);
        labels.extend(ls);
        splits
            .entry(split.to_string())
            .or_default()
            .extend(start..items.len());
    }
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    Ok(Dataset {
        name: path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        items,
        labels,
        label_names: (0..n_classes).map(|i| i.to_string()).collect(),
        domains: None,
        splits,
        skipped: Vec::new(),
    })
}

/// Load one split from an IDX image file (magic 0x803) and label file (0x801), raw or
/// gzipped.
pub fn load_idx(images: &Path, labels: &Path) -> Result<(Vec<Item>, Vec<usize>), DataError> {
    let (dims, pixels) = read_idx(images, 0x0803)?;
    let (ldims, raw_labels) = read_idx(labels, 0x0801)?;
    if dims[0] != ldims[0] {
        return Err(DataError::format(
            labels,
            None,
            None,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                dims[0],
                images.display()
            ),
        ));
    }
    let (h, w) = (dims[1], dims[2]);
    if h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(DataError::format(
            images,
            Some("byte 8".into()),
            Some("dimensions"),
            format!("images of {h} x {w} pixels; expected both sides at least 1"),
        ));
    }
    let items = pixels
        .chunks_exact(h * w)
        .map(|px| {
            Item::Pixels(Pixels {
                width: w as u32,
                height: h as u32,
                channels: 1,
                data: px.to_vec(),
            })
        })
        .collect();
    Ok((items, raw_labels.iter().map(|&l| l as usize).collect()))
}

/// Load the gzipped 8x8 digits table: 64 pixel values in 0..=16 then the label, per
/// line. Pixels are scaled to 0..=255.
pub fn load_digits_csv_gz(path: &Path) -> Result<(Vec<Item>, Vec<usize>), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| {
            DataError::format(path, None, None, format!("not a gzipped UTF-8 CSV: {e}"))
        })?;
    let mut items = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || Some(format!("line {}", n + 1));
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != 65 {
            return Err(DataError::format(
                path,
                at(),
                None,
                format!(
                    "has {} fields; expected 64 pixels and a label",
                    values.len()
                ),
            ));
        }
        let mut data = Vec::with_capacity(64);
        for (k, v) in values[..64].iter().enumerate() {
            let p: f64 = v.trim().parse().map_err(|_| {
                DataError::format(
                    path,
                    at(),
                    Some(&format!("pixel {k}")),
                    format!("{v:?} is not a number"),
                )
            })?;
            if !(0.0..=16.0).contains(&p) {
                return Err(DataError::format(
                    path,
                    at(),
                    Some(&format!("pixel {k}")),
                    format!("{p} is outside 0..=16"),
                ));
            }
            data.push((p * 255.0 / 16.0).round() as u8);
        }
        let label: f64 = values[64].trim().parse().map_err(|_| {
            DataError::format(
                path,
                at(),
                Some("label"),
                format!("{:?} is not a digit", values[64]),
            )
        })?;
        if !(0.0..=9.0).contains(&label) || label.fract() != 0.0 {
            return Err(DataError::format(
                path,
                at(),
                Some("label"),
                format!("{label} is not a digit 0-9"),
            ));
        }
        items.push(Item::Pixels(Pixels {
            width: 8,
            height: 8,
            channels: 1,
            data,
        }));
        labels.push(label as usize);
    }
    if items.is_empty() {
        return Err(DataError::format(path, None, None, "no rows"));
    }
    Ok((items, labels))
}
