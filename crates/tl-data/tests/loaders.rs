//! Loaders for users' data: every format, and every bad input with an error that names
//! the file, the line or row, and the field.

use std::path::{Path, PathBuf};

use tl_data::{Item, TableOptions, load_idx, load_image_folder, load_image_table, load_table};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err(r: Result<impl std::fmt::Debug, tl_data::DataError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn every_table_format_loads_the_same_data() {
    let d = tempfile::tempdir().unwrap();
    let csv = write(
        d.path(),
        "t.csv",
        b"text,label,split\n\"hello, world\",pos,train\nbad day,neg,train\nok,pos,test\n",
    );
    let tsv = write(
        d.path(),
        "t.tsv",
        b"text\tlabel\tsplit\nhello, world\tpos\ttrain\nbad day\tneg\ttrain\nok\tpos\ttest\n",
    );
    let json = write(d.path(), "t.json", br#"[{"text":"hello, world","label":"pos","split":"train"},{"text":"bad day","label":"neg","split":"train"},{"text":"ok","label":"pos","split":"test"}]"#);
    let jsonl = write(d.path(), "t.jsonl", b"{\"text\":\"hello, world\",\"label\":\"pos\",\"split\":\"train\"}\n{\"text\":\"bad day\",\"label\":\"neg\",\"split\":\"train\"}\n{\"text\":\"ok\",\"label\":\"pos\",\"split\":\"test\"}\n");
    // Parquet written by polars itself.
    let parquet = d.path().join("t.parquet");
    {
        use polars::prelude::*;
        let mut df = df!("text" => ["hello, world", "bad day", "ok"], "label" => ["pos", "neg", "pos"], "split" => ["train", "train", "test"]).unwrap();
        ParquetWriter::new(std::fs::File::create(&parquet).unwrap())
            .finish(&mut df)
            .unwrap();
    }
    let opts = TableOptions {
        split_column: Some("split".into()),
        ..TableOptions::default()
    };
    for p in [&csv, &tsv, &json, &jsonl, &parquet] {
        let ds = load_table(p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(
            ds.items[0],
            Item::Text("hello, world".into()),
            "{}",
            p.display()
        );
        assert_eq!(ds.label_names, ["neg", "pos"]);
        assert_eq!(ds.labels, [1, 0, 1]);
        assert_eq!(ds.split("train").unwrap(), [0, 1]);
        assert_eq!(ds.split("test").unwrap(), [2]);
    }
}

#[test]
fn integer_labels_sort_numerically() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "n.csv", b"text,label\na,10\nb,9\nc,2\n");
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.label_names, ["2", "9", "10"]);
    assert_eq!(ds.labels, [2, 1, 0]);
}

#[test]
fn custom_column_names() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.csv", b"review,stars\ngood,5\nbad,1\n");
    let opts = TableOptions {
        text_column: "review".into(),
        label_column: "stars".into(),
        ..Default::default()
    };
    assert_eq!(load_table(&p, &opts).unwrap().len(), 2);
}

#[test]
fn missing_label_column_lists_the_columns() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "m.csv", b"text,sentiment\na,1\n");
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(
        e.contains("m.csv") && e.contains("no column `label`") && e.contains("sentiment"),
        "{e}"
    );
}

#[test]
fn empty_and_header_only_files() {
    let d = tempfile::tempdir().unwrap();
    let e = err(load_table(
        &write(d.path(), "e.csv", b""),
        &TableOptions::default(),
    ));
    assert!(e.contains("e.csv") && e.contains("empty file"), "{e}");
    let e = err(load_table(
        &write(d.path(), "h.csv", b"text,label\n"),
        &TableOptions::default(),
    ));
    assert!(e.contains("h.csv") && e.contains("no data rows"), "{e}");
}

#[test]
fn ragged_rows_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "r.csv", b"text,label\na,1\nb,2,extra\nc,3\n");
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(
        e.contains("r.csv:line 3") && e.contains("3 fields; the header has 2"),
        "{e}"
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "u.csv", b"text,label\nfine,1\nbro\xffken,0\n");
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(
        e.contains("u.csv:line 3") && e.contains("invalid UTF-8"),
        "{e}"
    );
}

#[test]
fn missing_values_name_row_and_field() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "n.csv", b"text,label\na,1\nb,\nc,0\n");
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(
        e.contains("n.csv:line 3: field `label`: missing label"),
        "{e}"
    );
    let p = write(
        d.path(),
        "n.json",
        br#"[{"text":"a","label":1},{"label":0}]"#,
    );
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(e.contains("n.json:row 2: field `text`"), "{e}");
}

#[test]
fn blank_trailing_records_are_dropped() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "b.json",
        br#"[{"text":"a","class":1},{"text":"b","class":0},{"text":"","class":null}]"#,
    );
    let ds = load_table(
        &p,
        &TableOptions {
            label_column: "class".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 2);
}

#[test]
fn unknown_split_lists_the_splits() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "s.csv", b"text,label\na,1\nb,0\n");
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    let e = err(ds.split("validation"));
    assert!(
        e.contains("no split \"validation\"") && e.contains("[\"all\"]"),
        "{e}"
    );
}

#[test]
fn unknown_extension_says_which_are_known() {
    let d = tempfile::tempdir().unwrap();
    let e = err(load_table(
        &write(d.path(), "x.xlsx", b"text,label\n"),
        &TableOptions::default(),
    ));
    assert!(e.contains("x.xlsx") && e.contains(".csv"), "{e}");
}

#[test]
fn duplicates_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "d.csv", b"text,label\nsame,1\nother,0\nsame,1\n");
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.duplicates(), [(2, 0)]);
    assert!(ds.summary().to_string().contains("duplicates: 1"));
}

#[test]
fn image_folder_layouts_and_problems() {
    let d = tempfile::tempdir().unwrap();
    let png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tl-backbone/tests/fixtures/rgb.png"),
    )
    .unwrap();
    write(d.path(), "flat/cat/a.png", &png);
    write(d.path(), "flat/cat/b.PNG", &png);
    write(d.path(), "flat/dog/c.png", &png);
    write(d.path(), "flat/dog/notes.txt", b"not an image");
    write(d.path(), "flat/README.md", b"readme");
    let ds = load_image_folder(&d.path().join("flat")).unwrap();
    assert_eq!(ds.label_names, ["cat", "dog"]);
    assert_eq!(ds.labels, [0, 0, 1]);
    assert_eq!(
        ds.skipped.len(),
        2,
        "notes.txt and README.md are skipped and counted"
    );
    assert_eq!(ds.split("all").unwrap().len(), 3);

    write(d.path(), "split/train/cat/a.png", &png);
    write(d.path(), "split/train/dog/b.png", &png);
    write(d.path(), "split/test/cat/c.png", &png);
    let ds = load_image_folder(&d.path().join("split")).unwrap();
    assert_eq!(ds.split("train").unwrap().len(), 2);
    assert_eq!(ds.split("test").unwrap().len(), 1);

    write(d.path(), "empty/cat/a.png", &png);
    std::fs::create_dir_all(d.path().join("empty/dog")).unwrap();
    let e = err(load_image_folder(&d.path().join("empty")));
    assert!(e.contains("dog") && e.contains("holds no images"), "{e}");
}

#[test]
fn image_table_resolves_paths_next_to_the_table() {
    let d = tempfile::tempdir().unwrap();
    let png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tl-backbone/tests/fixtures/rgb.png"),
    )
    .unwrap();
    write(d.path(), "imgs/a.png", &png);
    let p = write(
        d.path(),
        "list.csv",
        b"path,label\nimgs/a.png,x\nimgs/missing.png,y\n",
    );
    let opts = TableOptions {
        text_column: "path".into(),
        ..Default::default()
    };
    let e = err(load_image_table(&p, &opts));
    assert!(
        e.contains("list.csv:data row 2: field `path`") && e.contains("missing.png does not exist"),
        "{e}"
    );
    let p = write(d.path(), "ok.csv", b"path,label\nimgs/a.png,x\n");
    let ds = load_image_table(&p, &opts).unwrap();
    assert_eq!(ds.items[0], Item::ImageFile(d.path().join("imgs/a.png")));
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn idx_files_and_their_problems() {
    let d = tempfile::tempdir().unwrap();
    let imgs = write(
        d.path(),
        "i",
        &idx(0x803, &[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    );
    let labels = write(d.path(), "l", &idx(0x801, &[2], &[7, 3]));
    let (items, l) = load_idx(&imgs, &labels).unwrap();
    assert_eq!(l, [7, 3]);
    assert_eq!(
        items[1],
        Item::Pixels(tl_data::Pixels {
            width: 3,
            height: 2,
            channels: 1,
            data: vec![7, 8, 9, 10, 11, 12]
        })
    );

    let e = err(load_idx(&labels, &labels));
    assert!(
        e.contains("field `magic`")
            && e.contains("0x00000801")
            && e.contains("expected 0x00000803"),
        "{e}"
    );
    let short = write(d.path(), "s", &idx(0x803, &[2, 2, 3], &[1, 2, 3]));
    let e = err(load_idx(&short, &labels));
    assert!(e.contains("need 12 data bytes, the file has 3"), "{e}");
    let few = write(d.path(), "f", &idx(0x801, &[1], &[7]));
    let e = err(load_idx(&imgs, &few));
    assert!(e.contains("1 labels for 2 images"), "{e}");
    let tiny = write(d.path(), "t", b"\0\0");
    assert!(err(load_idx(&tiny, &labels)).contains("IDX header"));
    // A zero side used to reach `chunks_exact(0)` (a panic).
    let flat = write(d.path(), "z", &idx(0x803, &[2, 0, 3], &[]));
    let e = err(load_idx(&flat, &labels));
    assert!(e.contains("images of 0 x 3 pixels"), "{e}");
    // Dimensions whose product overflows.
    let huge = write(
        d.path(),
        "h",
        &idx(0x803, &[u32::MAX, u32::MAX, u32::MAX], &[]),
    );
    assert!(err(load_idx(&huge, &labels)).contains("overflow"));
}

#[test]
fn digits_table_problems() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let gz = |text: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let row = |v: &str, label: &str| format!("{}{label}\n", format!("{v},").repeat(64));
    let ok = write(
        d.path(),
        "ok.csv.gz",
        &gz(&(row("16", "3") + &row("0", "4"))),
    );
    let (items, labels) = tl_data::load_digits_csv_gz(&ok).unwrap();
    assert_eq!(labels, [3, 4]);
    let Item::Pixels(p) = &items[0] else { panic!() };
    assert!(p.data.iter().all(|&v| v == 255));
    let bad = write(
        d.path(),
        "bad.csv.gz",
        &gz(&(row("1", "3") + &row("17", "4"))),
    );
    let e = err(tl_data::load_digits_csv_gz(&bad));
    assert!(
        e.contains("bad.csv.gz:line 2: field `pixel 0`") && e.contains("outside 0..=16"),
        "{e}"
    );
    let plain = write(d.path(), "plain.csv.gz", b"not gzip");
    assert!(err(tl_data::load_digits_csv_gz(&plain)).contains("not a gzipped"));
}

#[test]
fn concat_keeps_domains_and_refuses_mismatched_labels() {
    let d = tempfile::tempdir().unwrap();
    let a = load_table(
        &write(d.path(), "a.csv", b"text,label\nx,1\ny,0\n"),
        &TableOptions::default(),
    )
    .unwrap();
    let b = load_table(
        &write(d.path(), "b.csv", b"text,label\nz,1\nw,0\n"),
        &TableOptions::default(),
    )
    .unwrap();
    let c = tl_data::Dataset::concat("ab", &[a.clone(), b]).unwrap();
    assert_eq!(c.len(), 4);
    assert_eq!(c.domains.as_deref().unwrap(), ["a", "a", "b", "b"]);
    assert_eq!(c.split("all").unwrap(), [0, 1, 2, 3]);
    let other = load_table(
        &write(d.path(), "o.csv", b"text,label\nz,cat\n"),
        &TableOptions::default(),
    )
    .unwrap();
    assert!(tl_data::Dataset::concat("x", &[a, other]).is_err());
}

/// Bad tables as data: (file name, contents, fragments the error must contain).
const BAD_TABLES: &[(&str, &str, &[&str])] = &[
    (
        "nan.csv",
        "text,label\ngood,pos\nbad,NaN\n",
        &["nan.csv:line 3", "field `label`", "\"NaN\" is not a class"],
    ),
    (
        "nan.json",
        r#"[{"text":"a","label":1.0},{"text":"b","label":"nan"}]"#,
        &["nan.json:row 2", "is not a class"],
    ),
    (
        "object-label.json",
        r#"[{"text":"a","label":{"x":"pos"}},{"text":"b","label":{"x":"neg"}}]"#,
        &[
            "object-label.json",
            "field `label`",
            "object (struct) values",
        ],
    ),
    (
        "list-text.jsonl",
        "{\"text\":[1,2],\"label\":\"pos\"}\n{\"text\":[3],\"label\":\"neg\"}\n",
        &["list-text.jsonl", "field `text`", "list (array) values"],
    ),
    (
        "one-object.json",
        r#"{"text":"a","label":"pos"}"#,
        &["one-object.json:byte 1", "JSON array of row objects"],
    ),
    (
        "deep.jsonl",
        "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":[[[[[[[[[[[[[[[[[[[[\"x\"]]]]]]]]]]]]]]]]]]]],\"label\":\"neg\"}\n",
        &["deep.jsonl:line 2", "nested more than 16 levels"],
    ),
    (
        "syntax.json",
        "[{\"text\": \"a\", \"label\": \"pos\"},\n {\"text\": \"b\" \"label\": \"neg\"}]",
        &["syntax.json:line 2", "invalid JSON"],
    ),
    (
        "syntax.jsonl",
        "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": neg}\n",
        &["syntax.jsonl:line 2", "invalid JSON"],
    ),
    (
        "weird.txt",
        "text,label\na,b\n",
        &["weird.txt", "must end in .csv, .tsv, .tab"],
    ),
];

#[test]
fn bad_tables_are_refused_with_file_row_and_field() {
    let d = tempfile::tempdir().unwrap();
    for (name, body, want) in BAD_TABLES {
        let p = write(d.path(), name, body.as_bytes());
        let e = err(load_table(&p, &TableOptions::default()));
        for w in *want {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn a_json_table_nested_a_hundred_thousand_deep_is_refused_without_parsing() {
    let d = tempfile::tempdir().unwrap();
    let body = format!(
        "[{{\"text\": {}\"x\"{}, \"label\": \"a\"}}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let p = write(d.path(), "deep.json", body.as_bytes());
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(e.contains("deep.json:row 1") && e.contains("nested"), "{e}");
}

#[test]
fn labels_written_as_decimals_are_the_integers_they_equal() {
    let d = tempfile::tempdir().unwrap();
    // JSON numbers: 1 and 1.0 are one class.
    let p = write(
        d.path(),
        "mixed.json",
        br#"[{"text":"a","label":1},{"text":"b","label":1.0},{"text":"c","label":2.0}]"#,
    );
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.label_names, ["1", "2"]);
    assert_eq!(ds.labels, [0, 0, 1]);
    let p = write(d.path(), "mixed.csv", b"text,label\na,1\nb,1.0\nc,2.5\n");
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.labels, [0, 0, 1]);
    assert_eq!(ds.label_names, ["1", "2.5"]);
}

#[test]
fn tsv_quotes_are_ordinary_characters() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "q.tsv",
        b"text\tlabel\nshe said \"great\" twice\tpos\n\"quoted start\tneg\n5\" screen, \"meh\tneg\n",
    );
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.items[0], Item::Text("she said \"great\" twice".into()));
    assert_eq!(ds.items[1], Item::Text("\"quoted start".into()));
    assert_eq!(ds.labels, [1, 0, 0]);
}

#[test]
fn orange_tab_files_skip_their_type_and_flag_lines() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "o.tab",
        b"text\tlabel\nstring\tdiscrete\nmeta\tclass\ngood film\tpos\nbad film\tneg\n",
    );
    let ds = load_table(&p, &TableOptions::default()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.label_names, ["neg", "pos"]);
    // A plain .tab (no Orange header) is a TSV.
    let p = write(d.path(), "plain.tab", b"text\tlabel\ngood\tpos\nbad\tneg\n");
    assert_eq!(load_table(&p, &TableOptions::default()).unwrap().len(), 2);
}

#[test]
fn parquet_struct_labels_are_refused() {
    use polars::prelude::*;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.parquet");
    let labels = df!("x" => ["pos", "neg"])
        .unwrap()
        .into_struct("label".into())
        .into_series();
    let mut df = DataFrame::new(
        2,
        vec![Series::new("text".into(), ["a", "b"]).into(), labels.into()],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&p).unwrap())
        .finish(&mut df)
        .unwrap();
    let e = err(load_table(&p, &TableOptions::default()));
    assert!(
        e.contains("field `label`") && e.contains("object (struct)"),
        "{e}"
    );
}

#[test]
fn an_idx_pair_loads_as_a_dataset_from_a_file_or_a_folder() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let images = idx(0x803, &[3, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let labels = idx(0x801, &[3], &[1, 0, 1]);
    write(d.path(), "train-images-idx3-ubyte", &images);
    write(d.path(), "train-labels-idx1-ubyte", &labels);
    // The test pair gzipped, as MNIST ships.
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    write(d.path(), "t10k-images-idx3-ubyte.gz", &gz(&images[..]));
    write(d.path(), "t10k-labels-idx1-ubyte.gz", &gz(&labels[..]));
    let ds = tl_data::load_idx_dataset(d.path()).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.split("train").unwrap(), [0, 1, 2]);
    assert_eq!(ds.split("test").unwrap(), [3, 4, 5]);
    assert_eq!(ds.label_names, ["0", "1"]);
    let one = tl_data::load_idx_dataset(&d.path().join("train-images-idx3-ubyte")).unwrap();
    assert_eq!(one.labels, [1, 0, 1]);
    let lonely = write(d.path(), "x-images-idx3-ubyte", &images);
    let e = err(tl_data::load_idx_dataset(&lonely));
    assert!(e.contains("needs its label file"), "{e}");
}
