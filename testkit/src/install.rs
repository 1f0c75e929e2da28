//! Finding the machine's PostgreSQL server programs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestkitError;

/// A directory holding `initdb`, `pg_ctl`, `postgres` and `psql`.
#[derive(Clone, Debug)]
pub struct Bindir(PathBuf);

impl Bindir {
    pub fn program(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Looks in `SHARDLINE_PG_BINDIR`, `pg_config --bindir`, `PATH`, then the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<Bindir, TestkitError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("SHARDLINE_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    }
    candidates
        .into_iter()
        .find(|d| has_server(d))
        // A PATH entry may hold symlinks to the real directory; resolve
        // them so the server finds its share/ and lib/ next to itself.
        .map(|d| {
            let real = std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|p| has_server(p))
                .unwrap_or(d);
            Bindir(real)
        })
        .ok_or(TestkitError::PostgresNotFound)
}
