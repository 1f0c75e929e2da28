//! Bad input and unreachable servers fail before anything is written,
//! and never leave a file that looks complete.

use shardline_export::{ExportError, ExportRequest, From, PartitionBy, What};
use shardline_testkit::PgServer;

use crate::{listing, run, topology};

#[tokio::test]
async fn bad_requests_are_refused_and_leave_nothing() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int, at timestamptz, note text); INSERT INTO t VALUES (1, now(), 'x');",
    )
    .unwrap();
    let topo = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let table = |name: &str| {
        let mut r = ExportRequest::new(What::Table(name.into()), &out);
        r.from = From::Source;
        r
    };

    let err = run(&topo, &table("nope")).await.unwrap_err();
    assert!(
        matches!(&err, ExportError::MissingTable { table, .. } if table == "nope"),
        "{err}"
    );
    assert!(!out.exists());

    let mut r = table("t");
    r.partition_by = Some(PartitionBy::parse("colour").unwrap());
    let err = run(&topo, &r).await.unwrap_err();
    assert!(
        matches!(&err, ExportError::UnknownColumn { column, columns } if column == "colour" && columns == "id, at, note"),
        "{err}"
    );
    assert!(!out.exists());

    let mut r = table("t");
    r.partition_by = Some(PartitionBy::parse("day(note)").unwrap());
    let err = run(&topo, &r).await.unwrap_err();
    assert!(matches!(&err, ExportError::PartitionType { .. }), "{err}");

    let mut r = table("t");
    r.from = From::Context("nowhere".into());
    let err = run(&topo, &r).await.unwrap_err();
    assert!(matches!(&err, ExportError::UnknownContext { .. }), "{err}");

    // A non-empty directory is refused (and left alone) unless --overwrite.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let err = run(&topo, &table("t")).await.unwrap_err();
    assert!(matches!(&err, ExportError::NotEmpty { .. }), "{err}");
    assert_eq!(listing(&out), ["keep.txt"]);
    // --overwrite replaces an export, never files it did not write.
    let mut r = table("t");
    r.overwrite = true;
    let err = run(&topo, &r).await.unwrap_err();
    assert!(matches!(&err, ExportError::Foreign { .. }), "{err}");
    assert_eq!(listing(&out), ["keep.txt"]);
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    run(&topo, &r).await.unwrap();
    // A failed overwrite keeps the old export.
    let mut bad = table("nope");
    bad.overwrite = true;
    run(&topo, &bad).await.unwrap_err();
    assert_eq!(
        listing(&out),
        ["_MANIFEST", "_SUCCESS", "part-000-00000.parquet"]
    );
    run(&topo, &r).await.unwrap();
    assert_eq!(
        listing(&out),
        ["_MANIFEST", "_SUCCESS", "part-000-00000.parquet"]
    );

    // An output path under a file cannot be created.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let mut r = table("t");
    r.out = blocker.join("out");
    let err = run(&topo, &r).await.unwrap_err();
    assert!(matches!(&err, ExportError::Unwritable { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_a_hint() {
    let mut pg = PgServer::start().unwrap();
    let topo = topology(&pg, "");
    pg.stop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut r = ExportRequest::new(What::Query("SELECT 1".into()), &out);
    r.from = From::Source;
    let err = run(&topo, &r).await.unwrap_err();
    assert!(matches!(&err, ExportError::Connect(_)), "{err}");
    assert!(err.to_string().contains(&pg.port().to_string()), "{err}");
    assert!(err.hint().contains("server running"), "{}", err.hint());
    assert!(!out.exists());
}
