//! The output directory: staged, then committed with a `_SUCCESS` marker.
//!
//! Files are written under `DIR/_temporary/` (readers skip names starting
//! with `_` or `.`). Only when every stream has finished are the staged
//! partition directories and files renamed into `DIR` and the empty
//! `_SUCCESS` file written last, so a crash at any instant leaves nothing
//! that looks like a complete export; a failed export removes its staging
//! directory. With `overwrite`, an existing export in `DIR` is removed only
//! at commit time, so a failed run leaves the previous one in place.

use std::path::{Path, PathBuf};

use crate::error::ExportError;

pub const STAGING: &str = "_temporary";
pub const SUCCESS: &str = "_SUCCESS";

#[derive(Debug)]
pub struct Output {
    dir: PathBuf,
    staging: PathBuf,
    overwrite: bool,
    created: bool,
}

impl Output {
    /// Checks `dir` and creates the staging directory in it. Refuses a
    /// non-empty `dir` unless `overwrite`.
    pub fn prepare(dir: &Path, overwrite: bool) -> Result<Self, ExportError> {
        let unwritable = |cause: String| ExportError::Unwritable {
            dir: dir.to_path_buf(),
            cause,
        };
        let mut created = false;
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() && !overwrite {
                    return Err(ExportError::NotEmpty {
                        dir: dir.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| unwritable(e.to_string()))?;
                created = true;
            }
            Err(e) => return Err(unwritable(e.to_string())),
        }
        let staging = dir.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| unwritable(e.to_string()))?;
        }
        std::fs::create_dir(&staging).map_err(|e| unwritable(e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            staging,
            overwrite,
            created,
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
        if self.overwrite {
            if marker.exists() {
                std::fs::remove_file(&marker).map_err(|e| io(&marker, e))?;
            }
            for entry in std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
                let entry = entry.map_err(|e| io(&self.dir, e))?;
                if entry.file_name() == STAGING {
                    continue;
                }
                let path = entry.path();
                let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| io(&path, e))?;
            }
        }
        for entry in std::fs::read_dir(&self.staging).map_err(|e| io(&self.staging, e))? {
            let entry = entry.map_err(|e| io(&self.staging, e))?;
            let to = self.dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(|e| io(&to, e))?;
        }
        std::fs::remove_dir(&self.staging).map_err(|e| io(&self.staging, e))?;
        sync_dir(&self.dir);
        std::fs::write(&marker, b"").map_err(|e| io(&marker, e))?;
        sync_dir(&self.dir);
        Ok(self.dir.clone())
    }

    /// Removes everything this run wrote.
    pub fn abort(self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
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

    #[test]
    fn a_non_empty_directory_is_refused_unless_overwriting() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("old.parquet"), b"x").unwrap();
        assert!(matches!(
            Output::prepare(tmp.path(), false),
            Err(ExportError::NotEmpty { .. })
        ));
        let out = Output::prepare(tmp.path(), true).unwrap();
        std::fs::write(out.staging().join("part-000-00000.parquet"), b"new").unwrap();
        // Until the commit the old export stays whole.
        assert!(tmp.path().join("old.parquet").exists());
        out.commit().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["_SUCCESS", "part-000-00000.parquet"]);
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
