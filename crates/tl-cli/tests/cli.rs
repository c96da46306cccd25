//! The real `tl` binary on small data: output, exit codes, bad arguments.

use std::process::Command;

fn tl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn data_info_on_a_user_table() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("reviews.csv");
    std::fs::write(&p, "review,stars\ngood,5\nbad,1\ngreat,5\n").unwrap();
    let (code, out, err) = tl(&[
        "data",
        "info",
        p.to_str().unwrap(),
        "--text-column",
        "review",
        "--label-column",
        "stars",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dataset reviews: 3 items, 2 classes"), "{out}");
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.csv");
    std::fs::write(&p, "text,label\na,1\nb,2,3\n").unwrap();
    let (code, _, err) = tl(&["data", "info", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("r.csv:line 3") && err.contains("3 fields"),
        "{err}"
    );

    let (code, _, err) = tl(&["data", "info", "no-such-dataset"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("neither a file nor a known dataset") && err.contains("20newsgroups"),
        "{err}"
    );

    let (code, _, err) = tl(&["embed", "--batch-size", "many"]);
    assert_eq!(code, 2, "clap usage errors exit 2");
    assert!(err.contains("--batch-size"), "{err}");

    let (code, _, err) = tl(&["embed", "--model", "mnist"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("mnist is a Dataset asset, not a model"),
        "{err}"
    );
}

#[test]
fn help_has_examples() {
    let (code, out, _) = tl(&["embed", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("tl embed --model"),
        "{out}"
    );
}
