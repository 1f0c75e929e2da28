//! The output directory: staged, then committed with a `_SUCCESS` marker.
//!
//! Files are written under `DIR/_temporary/` (readers skip names starting
//! with `_` or `.`). Only when every stream has finished are the staged
//! partition directories and files renamed into `DIR`, the list of what
//! was written (`_MANIFEST`, one path per line) and then the empty
//! `_SUCCESS` file written last, so a crash at any instant leaves nothing
//! that looks like a complete export; a failed export removes its staging
//! directory.
//!
//! With `overwrite`, an earlier export in `DIR` is replaced at commit time,
//! so a failed run leaves the previous one in place. Only what that
//! export's manifest lists is removed: a directory holding anything else
//! (someone's files, or an export without a manifest) is refused before
//! anything is read. One export at a time writes into a directory: a lock
//! file (`_shardline_export.lock`, holding its pid) refuses a second one
//! while the first lives; a lock left by a killed export is taken over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::ExportError;

pub const STAGING: &str = "_temporary";
pub const SUCCESS: &str = "_SUCCESS";
pub const MANIFEST: &str = "_MANIFEST";
pub const LOCK: &str = "_shardline_export.lock";

#[derive(Debug)]
pub struct Output {
    dir: PathBuf,
    staging: PathBuf,
    overwrite: bool,
    created: bool,
    lock: Lock,
}

impl Output {
    /// Checks `dir`, takes its lock and creates the staging directory in
    /// it. Refuses a non-empty `dir` unless `overwrite`, and with it a
    /// `dir` holding anything an earlier export did not write.
    pub fn prepare(dir: &Path, overwrite: bool) -> Result<Self, ExportError> {
        let unwritable = |cause: String| ExportError::Unwritable {
            dir: dir.to_path_buf(),
            cause,
        };
        let mut created = false;
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(unwritable("it is a file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| unwritable(e.to_string()))?;
                created = true;
            }
            Err(e) => return Err(unwritable(e.to_string())),
        }
        let lock = match Lock::take(dir) {
            Ok(lock) => lock,
            Err(e) => {
                if created {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e);
            }
        };
        let fail = |e: ExportError, lock: Lock| {
            drop(lock);
            if created {
                let _ = std::fs::remove_dir(dir);
            }
            Err(e)
        };
        let present = match contents(dir) {
            Ok(p) => p,
            Err(e) => return fail(unwritable(e.to_string()), lock),
        };
        if !present.is_empty() {
            if !overwrite {
                return fail(
                    ExportError::NotEmpty {
                        dir: dir.to_path_buf(),
                    },
                    lock,
                );
            }
            let listed = manifest(dir);
            if let Some(entry) = present.iter().find(|p| !listed.contains(*p)) {
                return fail(
                    ExportError::Foreign {
                        dir: dir.to_path_buf(),
                        entry: entry.clone(),
                    },
                    lock,
                );
            }
        }
        let staging = dir.join(STAGING);
        if staging.exists() {
            // A killed export's: its lock was stale, or it would not be ours.
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                return fail(unwritable(e.to_string()), lock);
            }
        }
        if let Err(e) = std::fs::create_dir(&staging) {
            return fail(unwritable(e.to_string()), lock);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            staging,
            overwrite,
            created,
            lock,
        })
    }

    pub fn staging(&self) -> &Path {
        &self.staging
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the staged export into place and marks it complete. Returns
    /// how a staged path maps to its final path.
    pub fn commit(self) -> Result<PathBuf, ExportError> {
        let io = |path: &Path, e: std::io::Error| ExportError::Io {
            path: path.to_path_buf(),
            cause: e.to_string(),
        };
        let marker = self.dir.join(SUCCESS);
        let written = files_under(&self.staging).map_err(|e| io(&self.staging, e))?;
        if self.overwrite {
            if marker.exists() {
                std::fs::remove_file(&marker).map_err(|e| io(&marker, e))?;
            }
            // Only what the earlier export listed; its directories go once
            // empty (deepest first).
            let listed = manifest(&self.dir);
            let mut dirs = BTreeSet::new();
            for entry in &listed {
                let path = self.dir.join(entry);
                if path.is_file() {
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                }
                let mut parent = Path::new(entry).parent();
                while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                    dirs.insert(p.to_path_buf());
                    parent = p.parent();
                }
            }
            let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(self.dir.join(d));
            }
            let old = self.dir.join(MANIFEST);
            if old.exists() {
                std::fs::remove_file(&old).map_err(|e| io(&old, e))?;
            }
        }
        for entry in std::fs::read_dir(&self.staging).map_err(|e| io(&self.staging, e))? {
            let entry = entry.map_err(|e| io(&self.staging, e))?;
            let to = self.dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(|e| io(&to, e))?;
        }
        std::fs::remove_dir(&self.staging).map_err(|e| io(&self.staging, e))?;
        let list = self.dir.join(MANIFEST);
        let mut text = String::new();
        for w in &written {
            text.push_str(w);
            text.push('\n');
        }
        std::fs::write(&list, text).map_err(|e| io(&list, e))?;
        sync_dir(&self.dir);
        std::fs::write(&marker, b"").map_err(|e| io(&marker, e))?;
        sync_dir(&self.dir);
        drop(self.lock);
        Ok(self.dir)
    }

    /// Removes everything this run wrote.
    pub fn abort(self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        drop(self.lock);
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The lock file of an export running into a directory; removed on drop.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(dir: &Path) -> Result<Self, ExportError> {
        let path = dir.join(LOCK);
        let me = std::process::id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = writeln!(f, "{me}");
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if pid != me && Path::new(&format!("/proc/{pid}")).exists() => {
                            return Err(ExportError::Busy {
                                dir: dir.to_path_buf(),
                                pid,
                            });
                        }
                        // Its process is gone (killed): the lock is stale.
                        _ => {
                            tracing::info!(lock = %path.display(), "taking over the lock of an export that is gone");
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => {
                    return Err(ExportError::Unwritable {
                        dir: dir.to_path_buf(),
                        cause: e.to_string(),
                    })
                }
            }
        }
        Err(ExportError::Busy {
            dir: dir.to_path_buf(),
            pid: 0,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `dir` holds besides the export's own bookkeeping: file paths
/// relative to it, and directories without files as `name/`.
fn contents(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if [STAGING, SUCCESS, MANIFEST, LOCK].contains(&name.as_str()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            let inner = files_under(&entry.path())?;
            if inner.is_empty() {
                out.push(format!("{name}/"));
            }
            out.extend(inner.into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    Ok(out)
}

/// Every file under `dir`, as paths relative to it, in order.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            out.extend(
                files_under(&entry.path())?
                    .into_iter()
                    .map(|f| format!("{name}/{f}")),
            );
        } else {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The paths an earlier export's `_MANIFEST` lists (none without one).
fn manifest(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(MANIFEST))
        .map(|t| {
            t.lines()
                .filter(|l| !l.is_empty() && !l.contains(".."))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Makes renames in `dir` durable; best effort (not every filesystem
/// lets a directory be opened for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn overwrite_replaces_only_what_an_earlier_export_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let out = Output::prepare(tmp.path(), false).unwrap();
        std::fs::create_dir(out.staging().join("m=1")).unwrap();
        std::fs::write(out.staging().join("m=1/part-000-00000.parquet"), b"old").unwrap();
        out.commit().unwrap();
        assert_eq!(names(tmp.path()), ["_MANIFEST", "_SUCCESS", "m=1"]);
        assert!(matches!(
            Output::prepare(tmp.path(), false),
            Err(ExportError::NotEmpty { .. })
        ));
        let out = Output::prepare(tmp.path(), true).unwrap();
        std::fs::write(out.staging().join("part-000-00000.parquet"), b"new").unwrap();
        // Until the commit the old export stays whole.
        assert!(tmp.path().join("m=1/part-000-00000.parquet").exists());
        out.commit().unwrap();
        assert_eq!(
            names(tmp.path()),
            ["_MANIFEST", "_SUCCESS", "part-000-00000.parquet"]
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(MANIFEST)).unwrap(),
            "part-000-00000.parquet\n"
        );

        // Anything else in the directory is refused, and left alone.
        std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let err = Output::prepare(tmp.path(), true).unwrap_err();
        assert!(
            matches!(&err, ExportError::Foreign { entry, .. } if entry == "notes.txt"),
            "{err}"
        );
        std::fs::create_dir(tmp.path().join("m=1")).unwrap();
        std::fs::write(tmp.path().join("m=1/x.parquet"), b"mine").unwrap();
        std::fs::remove_file(tmp.path().join("notes.txt")).unwrap();
        let err = Output::prepare(tmp.path(), true).unwrap_err();
        assert!(
            matches!(&err, ExportError::Foreign { entry, .. } if entry == "m=1/x.parquet"),
            "{err}"
        );
        assert!(tmp.path().join("m=1/x.parquet").exists());
        assert!(!tmp.path().join(LOCK).exists());
    }

    #[test]
    fn a_directory_without_a_manifest_is_never_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("old.parquet"), b"x").unwrap();
        assert!(matches!(
            Output::prepare(tmp.path(), true),
            Err(ExportError::Foreign { .. })
        ));
        assert_eq!(names(tmp.path()), ["old.parquet"]);
    }

    #[test]
    fn a_second_export_into_the_same_directory_is_refused_and_a_stale_lock_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Output::prepare(tmp.path(), false).unwrap();
        // The lock names a live process: this one's parent, as another
        // export would.
        let parent = std::os::unix::process::parent_id();
        std::fs::write(tmp.path().join(LOCK), format!("{parent}\n")).unwrap();
        let err = Output::prepare(tmp.path(), true).unwrap_err();
        assert!(
            matches!(err, ExportError::Busy { pid, .. } if pid == parent),
            "{err}"
        );
        assert!(first.staging().exists(), "the running export is untouched");
        first.abort();
        // A lock whose process is gone (a killed export) is stale.
        std::fs::create_dir_all(tmp.path().join(STAGING)).unwrap();
        std::fs::write(tmp.path().join(LOCK), "999999999\n").unwrap();
        let out = Output::prepare(tmp.path(), false).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(LOCK))
                .unwrap()
                .trim(),
            std::process::id().to_string()
        );
        out.commit().unwrap();
        assert!(!tmp.path().join(LOCK).exists());
    }

    #[test]
    fn an_aborted_export_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        let out = Output::prepare(&dir, false).unwrap();
        std::fs::write(out.staging().join("part-000-00000.parquet"), b"half").unwrap();
        out.abort();
        assert!(!dir.exists());
    }
}
