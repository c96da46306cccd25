//! The library as its users meet it: the README's program built in a fresh workspace that
//! depends on the crates by path, and every publishable crate packaged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The marker line above the README's user's-eye program.
const MARKER: &str = "<!-- user's-eye program";

/// The crates a registry user can depend on (the rest are `publish = false`: xtask, benches,
/// the fuzzer).
pub const PUBLISHED: &[&str] = &[
    "tl-core",
    "tl-assets",
    "tl-data",
    "tl-backbone",
    "tl-features",
    "tl-heads",
    "tl-eval",
    "tl-finetune",
    "transfer-learning",
    "tl-cli",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// The first Rust code block after the marker in `readme`.
pub fn readme_program(readme: &str) -> Result<String> {
    let after = readme
        .split_once(MARKER)
        .context("README.md has no user's-eye program marker")?
        .1;
    let body = after
        .split_once("```rust\n")
        .context("no ```rust block after the marker")?
        .1;
    let code = body
        .split_once("\n```")
        .context("the ```rust block is not closed")?
        .0;
    Ok(format!("{code}\n"))
}

/// The `[profile.*]` tables of a workspace manifest, as written: they come last in ours, and
/// any other table after the first of them is an error (it would be copied along).
pub fn profiles(manifest: &str) -> Result<String> {
    let start = manifest
        .find("\n[profile.")
        .context("Cargo.toml has no [profile.*] table")?
        + 1;
    let tail = &manifest[start..];
    if let Some(other) = tail
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[profile."))
    {
        bail!("Cargo.toml has {other} after its [profile.*] tables; keep the profiles last");
    }
    Ok(tail.to_string())
}

/// Builds the README's program in a new workspace under a temporary folder and runs it from
/// outside the checkout, with an empty `$TL_HOME` and a platform cache folder that links to
/// this checkout's cache (so nothing is fetched twice, and the cache rule is exercised: a
/// program outside the checkout uses the platform cache). It must print `["pos", "neg"]`,
/// leave its classifier file in its working folder, and write nothing into the crates' source.
pub fn users_eye() -> Result<()> {
    let start = Instant::now();
    let repo = repo();
    let readme = std::fs::read_to_string(repo.join("README.md")).context("reading README.md")?;
    let program = readme_program(&readme)?;
    let tmp = std::env::temp_dir().join(format!("tl-users-eye-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let app = tmp.join("app");
    std::fs::create_dir_all(app.join("src"))?;
    let facade = repo.join("crates/transfer-learning");
    // This workspace's profiles and lock file, so the shared target folder's compiled
    // dependencies are reused instead of rebuilt (with only part of the profile, polars and
    // all that depends on it compiled a second time: 15 of CI's 40 minutes, and ~1 GB).
    let manifest =
        std::fs::read_to_string(repo.join("Cargo.toml")).context("reading Cargo.toml")?;
    std::fs::write(
        app.join("Cargo.toml"),
        format!(
            "[package]\nname = \"users-eye\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [dependencies]\ntransfer-learning = {{ path = {:?} }}\n\n[workspace]\n\n{}",
            facade.display().to_string(),
            profiles(&manifest)?
        ),
    )?;
    std::fs::copy(repo.join("Cargo.lock"), app.join("Cargo.lock")).context("copying Cargo.lock")?;
    std::fs::write(app.join("src/main.rs"), &program)?;
    let cargo = crate::cargo();
    let target = repo.join("target");
    let status = Command::new(&cargo)
        .args(["build", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&app)
        .status()
        .context("running cargo build for the user's-eye program")?;
    if !status.success() {
        bail!("the README's library program does not build in a fresh workspace ({status})");
    }
    let run_dir = tmp.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let exe = run_dir.join("users-eye");
    std::fs::copy(target.join("debug/users-eye"), &exe).context("copying the program")?;
    let xdg = tmp.join("xdg");
    std::fs::create_dir_all(&xdg)?;
    let cache = tl_assets::Cache::from_env();
    let cache_root = cache
        .root()
        .canonicalize()
        .with_context(|| format!("the cache {} is not there", cache.root().display()))?;
    std::os::unix::fs::symlink(&cache_root, xdg.join("transfer-learning-rs"))?;
    let out = Command::new(&exe)
        .current_dir(&run_dir)
        .env_remove("TL_HOME")
        .env_remove("TL_FEATURES_DIR")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("ORT_DYLIB_PATH")
        .env("XDG_CACHE_HOME", &xdg)
        .output()
        .context("running the user's-eye program")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim() != r#"["pos", "neg"]"# {
        bail!(
            "the README's program printed {stdout:?} ({}), expected [\"pos\", \"neg\"]; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !run_dir.join("sentiment.json").is_file() {
        bail!("the README's program left no sentiment.json in its working folder");
    }
    let strays: Vec<_> = ["crates/transfer-learning/.tl-cache", "crates/.tl-cache"]
        .iter()
        .filter(|p| repo.join(p).exists())
        .collect();
    if !strays.is_empty() {
        bail!("the program wrote into the crates' source: {strays:?}");
    }
    std::fs::remove_dir_all(&tmp).ok();
    eprintln!(
        "user's-eye program: built in a fresh workspace and printed {} ({:.0} s)",
        stdout.trim(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo package` for every publishable crate: each must build from its own packaged
/// files alone (manifests and the default experiment are inside the crates that embed them).
/// `verify` also compiles each package; without it the file lists and metadata are checked.
pub fn package(verify: bool) -> Result<()> {
    let start = Instant::now();
    let outside = includes_outside_crates()?;
    if !outside.is_empty() {
        bail!(
            "these crates embed files from outside themselves and would not build from their packages:\n{}",
            outside.join("\n")
        );
    }
    let cargo = crate::cargo();
    let mut cmd = Command::new(&cargo);
    cmd.args(["package", "--quiet", "--allow-dirty"]);
    for c in PUBLISHED {
        cmd.args(["-p", c]);
    }
    if verify {
        // The workspace's profile for dependencies, so the verification builds reuse the
        // dependencies `cargo test` compiled instead of rebuilding the tree at opt-level 0.
        cmd.args([
            "--config",
            "profile.dev.package.\"*\".opt-level=2",
            "--config",
            "profile.dev.package.\"*\".debug=false",
            "--config",
            "profile.dev.debug=\"line-tables-only\"",
        ]);
    } else {
        cmd.arg("--no-verify");
    }
    let status = cmd
        .current_dir(repo())
        .status()
        .context("running cargo package")?;
    if !status.success() {
        bail!("cargo package failed ({status})");
    }
    eprintln!(
        "cargo package: {} crates packaged{} ({:.0} s)",
        PUBLISHED.len(),
        if verify {
            " and built from their packages"
        } else {
            ""
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `include_str!`/`include_bytes!` paths in the sources of the publishable crates that leave
/// their crate (a packaged crate would not build): (file, line) of each.
pub fn includes_outside_crates() -> Result<Vec<String>> {
    let mut bad = Vec::new();
    for c in PUBLISHED {
        let dir = repo().join("crates").join(c);
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p)?;
                for (i, line) in text.lines().enumerate() {
                    let Some(at) = line
                        .find("include_str!(\"")
                        .or(line.find("include_bytes!(\""))
                    else {
                        continue;
                    };
                    let rel = line[at..].split('"').nth(1).unwrap_or("");
                    // Judged on the path as written: a link inside the crate to a file
                    // outside it is packaged as a copy, a path through `..` out of the
                    // crate is not packaged at all.
                    let escapes = {
                        let mut depth: i32 = p
                            .strip_prefix(&dir)
                            .map(|r| r.components().count() as i32 - 1)
                            .unwrap_or(0);
                        let mut out = false;
                        for part in rel.split('/') {
                            match part {
                                ".." => depth -= 1,
                                "." | "" => {}
                                _ => depth += 1,
                            }
                            out |= depth < 0;
                        }
                        out
                    };
                    if escapes {
                        bad.push(format!("{}:{}: {rel}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_eye_workspace_gets_every_profile_table_and_nothing_else() {
        let ours = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
        let p = profiles(&ours).unwrap();
        assert!(p.starts_with("[profile."), "{p}");
        assert!(p.contains("[profile.dev.package.polars]") && p.contains("[profile.release]"));
        assert!(!p.contains("[workspace"));
        let with =
            |tail: &str| format!("[workspace]\nmembers = []\n\n[profile.dev]\ndebug = 0\n{tail}");
        assert_eq!(profiles(&with("")).unwrap(), "[profile.dev]\ndebug = 0\n");
        let err = profiles(&with("\n[patch.crates-io]\n")).unwrap_err();
        assert!(err.to_string().contains("[patch.crates-io]"), "{err}");
        assert!(profiles("[workspace]\n").is_err());
    }

    #[test]
    fn no_published_crate_embeds_a_file_outside_itself() {
        let bad = includes_outside_crates().unwrap();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn the_readme_program_is_found_and_is_a_program() {
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        let p = readme_program(&readme).unwrap();
        assert!(
            p.contains("fn main()") && p.contains("transfer_learning"),
            "{p}"
        );
        assert!(readme_program("no marker").is_err());
        assert!(readme_program("<!-- user's-eye program -->\n```rust\nfn main() {}").is_err());
    }
}
