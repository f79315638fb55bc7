//! How a run directory stays consistent whatever happens to the process writing it: one writer at
//! a time (an OS file lock, which dies with its process, so a killed run never blocks the next),
//! derived files replaced whole (written under a temporary name, synced, renamed), and a full disk
//! reported as such, naming the file.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory. Its content (the owner's pid) is informational only:
/// ownership is the OS lock on it, released when the process exits however it exits.
pub const LOCK_FILE: &str = "LOCK";

/// Exclusive ownership of a run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the run directory's lock, or says which folder is busy and who holds it.
pub fn lock(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| write_error(e, &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = owner.trim();
            let by = if owner.is_empty() { String::new() } else { format!(" (pid {owner})") };
            bail!("{} is in use by another specdec run{by}: wait for it to finish or stop it, then --resume", dir.display());
        }
        Err(TryLockError::Error(e)) => return Err(anyhow!(e).context(format!("locking {}", path.display()))),
    }
    file.set_len(0).and_then(|_| file.write_all(std::process::id().to_string().as_bytes())).map_err(|e| write_error(e, &path))?;
    Ok(RunLock { _file: file })
}

/// An I/O error while writing `path`, with a full disk (or quota) said in plain words.
pub fn write_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        anyhow!("no space left on device writing {}", path.display())
    } else {
        anyhow!(e).context(format!("writing {}", path.display()))
    }
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old file or the new one,
/// never a mix: written to a temporary name in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(e, path));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(e, path)
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// `dir/.NAME.PID.tmp`: hidden, in the same directory (so the rename is atomic), per process.
pub fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Makes renames and new files in `dir` durable. Best effort: not every filesystem syncs
/// directories, and a failure here loses nothing already written.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Moves the files of `staged` (written into a scratch directory) over their namesakes in `dir`,
/// each rename atomic, then removes the scratch directory; returns the final paths.
pub fn publish(staged: &[PathBuf], scratch: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for file in staged {
        let name = file.file_name().context("a staged file has no name")?;
        let target = dir.join(name);
        std::fs::rename(file, &target).map_err(|e| write_error(e, &target))?;
        out.push(target);
    }
    let _ = std::fs::remove_dir_all(scratch);
    sync_dir(dir);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("specdec-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_held_lock_refuses_a_second_owner_and_is_free_once_dropped() {
        let d = scratch("lock");
        let held = lock(&d).unwrap();
        let e = lock(&d).unwrap_err().to_string();
        assert!(e.contains(&d.display().to_string()) && e.contains("in use") && e.contains(&std::process::id().to_string()), "{e}");
        drop(held);
        lock(&d).expect("free after the owner is gone");
    }

    #[test]
    fn atomic_writes_replace_whole_and_leave_no_temporary() {
        let d = scratch("atomic");
        let p = d.join("summary.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["summary.json"]);
    }

    #[test]
    fn a_full_disk_is_named_with_the_file() {
        let e = write_error(std::io::Error::from(ErrorKind::StorageFull), Path::new("/r/records.jsonl")).to_string();
        assert_eq!(e, "no space left on device writing /r/records.jsonl");
        let e = format!("{:#}", write_error(std::io::Error::from(ErrorKind::PermissionDenied), Path::new("/r/x")));
        assert!(e.starts_with("writing /r/x: ") && !e.contains("no space"), "{e}");
    }
}
