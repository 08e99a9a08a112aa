//! The floor under scenario 1 of `bench/compare.py`: how long this machine
//! takes to land a tree's files in an empty directory when nothing else is
//! done. The files are read into memory first (not timed); then directories
//! are made and every file is created and written by `THREADS` threads (no
//! network, no hashing, no modes or times, no fsync); then one `syncfs`
//! makes them durable, as a mirror must before it commits a snapshot.
//!
//! With `--distinct`, each distinct content is landed once, at
//! `<2 hex>/<64 hex>` of its blake3 as a mirror's store keeps blobs: what
//! a push into an empty mirror must write.
//!
//! `cargo run --release --example land -- SOURCE EMPTY_DEST THREADS [--distinct]`
//!
//! Prints one JSON line: files, bytes, write_s (wall), cpu_s (user + sys of
//! the write), sync_s (wall of the `syncfs`).

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

struct Tree {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn read(root: &Path, rel: &Path, tree: &mut Tree) -> std::io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tree.dirs.push(path.clone());
            read(root, &path, tree)?;
        } else if kind.is_file() {
            let data = fs::read(root.join(&path))?;
            tree.files.push((path, data));
        }
    }
    Ok(())
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers (all zeroes is a value), and
    // getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn land(tree: &Tree, dest: &Path, threads: usize) -> std::io::Result<()> {
    fs::create_dir(dest)?;
    for dir in &tree.dirs {
        fs::create_dir(dest.join(dir))?;
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn(move || -> std::io::Result<()> {
                    for (path, data) in tree.files.iter().skip(i).step_by(threads) {
                        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(dest.join(path))?;
                        f.write_all(data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("writer thread panicked"))
    })
}

fn syncfs(dest: &Path) -> std::io::Result<()> {
    let dir = fs::File::open(dest)?;
    // SAFETY: syncfs takes an open descriptor and nothing else.
    match unsafe { libc::syncfs(dir.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The tree as a content-addressed store holds it: each distinct content
/// once, named by its blake3 under a directory of its first two hex digits.
fn distinct(tree: Tree) -> Tree {
    let mut files = std::collections::HashMap::new();
    for (_, data) in tree.files {
        let hex = blake3::hash(&data).to_hex().to_string();
        files.entry(hex).or_insert(data);
    }
    let dirs: std::collections::BTreeSet<PathBuf> = files.keys().map(|hex| PathBuf::from(&hex[..2])).collect();
    Tree {
        dirs: dirs.into_iter().collect(),
        files: files.into_iter().map(|(hex, data)| (PathBuf::from(&hex[..2]).join(&hex), data)).collect(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let threads = args.get(3).and_then(|t| t.parse::<usize>().ok()).filter(|&t| t > 0);
    let mode = match args.get(4).map(String::as_str) {
        None => Some(false),
        Some("--distinct") => Some(true),
        Some(_) => None,
    };
    let (Some(source), Some(dest), Some(threads), Some(by_content), None) =
        (args.get(1), args.get(2), threads, mode, args.get(5))
    else {
        eprintln!("usage: land SOURCE EMPTY_DEST THREADS [--distinct] (THREADS at least 1)");
        return ExitCode::from(2);
    };
    let (source, dest) = (Path::new(source), Path::new(dest));
    let mut tree = Tree { dirs: Vec::new(), files: Vec::new() };
    if let Err(e) = read(source, Path::new(""), &mut tree) {
        eprintln!("land: reading {}: {e}", source.display());
        return ExitCode::FAILURE;
    }
    if by_content {
        tree = distinct(tree);
    }
    let (cpu, started) = (cpu_seconds(), Instant::now());
    if let Err(e) = land(&tree, dest, threads) {
        eprintln!("land: writing into {}: {e}", dest.display());
        return ExitCode::FAILURE;
    }
    let (write_s, cpu_s) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let started = Instant::now();
    if let Err(e) = syncfs(dest) {
        eprintln!("land: syncfs {}: {e}", dest.display());
        return ExitCode::FAILURE;
    }
    let bytes: usize = tree.files.iter().map(|(_, d)| d.len()).sum();
    println!(
        "{{\"files\": {}, \"bytes\": {bytes}, \"write_s\": {write_s:.4}, \"cpu_s\": {cpu_s:.4}, \"sync_s\": {:.4}}}",
        tree.files.len(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
