//! Export against real servers; every file the tests write is read back
//! with pyarrow (`read_parquet.py`) and compared, column by column, with
//! the values PostgreSQL itself renders.

mod failures;
mod layout;
mod shards;
mod types;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use shardline_export::{export, ExportError, ExportRequest, Progress, Summary};
use shardline_testkit::PgServer;
use shardline_topology::Topology;
use tokio_postgres::NoTls;

/// A topology whose source is `source`, plus `extra` TOML (else a
/// context in another database of the same server, as one is required).
pub fn topology(source: &PgServer, extra: &str) -> Topology {
    let extra = if extra.is_empty() {
        source.create_database("other").unwrap();
        format!(
            "[contexts.other]\ntables = [\"elsewhere\"]\nurl = \"{}\"\n",
            source.url("other")
        )
    } else {
        extra.to_string()
    };
    let text = format!("[source]\nurl = \"{}\"\n{extra}", source.url("postgres"));
    Topology::parse(&text, Path::new("t.toml")).unwrap()
}

pub async fn run(topology: &Topology, request: &ExportRequest) -> Result<Summary, ExportError> {
    export(topology, request, &Progress::default(), None).await
}

/// What pyarrow reads from a file or directory.
pub fn read_parquet(path: &Path, hive: bool) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_parquet.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(path);
    if hive {
        cmd.arg("--hive");
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader prints JSON")
}

/// Rows of a result as text (None for NULL), as the reader renders them.
pub fn rows_of(v: &Value) -> Vec<Vec<Option<String>>> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

/// The source's rows rendered by PostgreSQL: `sql` selects text columns.
pub async fn pg_rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Compares rows, sorted by their first column as an integer, naming the
/// first differing column.
pub fn assert_same_rows(
    columns: &[&str],
    mut got: Vec<Vec<Option<String>>>,
    mut want: Vec<Vec<Option<String>>>,
) {
    let key = |r: &Vec<Option<String>>| r[0].as_deref().unwrap_or("0").parse::<i64>().unwrap();
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got.len(), want.len(), "row counts differ");
    for (g, w) in got.iter().zip(&want) {
        for (i, name) in columns.iter().enumerate() {
            assert_eq!(
                g[i], w[i],
                "row {:?}, column {name}: parquet {:?} but PostgreSQL {:?}",
                w[0], g[i], w[i]
            );
        }
    }
}

/// Every file name under `dir`, relative, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}
