//! Messages a real PostgreSQL writes with pgoutput decode to what happened.

use bytes::Bytes;
use shardline_cdc::pgoutput::{decode, ColumnValue, LogicalMessage, OldTuple, ReplicaIdentity};
use shardline_testkit::PgServer;
use shardline_topology::ConnString;

async fn changes(client: &tokio_postgres::Client) -> Vec<LogicalMessage> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| decode(Bytes::from(r.get::<_, Vec<u8>>(0))).unwrap())
        .collect()
}

fn text(v: &ColumnValue) -> &str {
    match v {
        ColumnValue::Text(b) => std::str::from_utf8(b).unwrap(),
        other => panic!("expected a text value, got {other:?}"),
    }
}

#[tokio::test]
async fn pgoutput_from_postgres_decodes_every_change_kind() {
    let server = PgServer::start().unwrap();
    let client = ConnString::parse(&server.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let big = "x".repeat(5000);
    let setup = [
        "CREATE TABLE pay (merchant_id bigint, id bigint, note text, amount numeric(18,2), PRIMARY KEY (merchant_id, id))",
        "ALTER TABLE pay ALTER note SET STORAGE EXTERNAL",
        "CREATE TABLE audit (id int)",
        "ALTER TABLE audit REPLICA IDENTITY FULL",
        "CREATE PUBLICATION p FOR TABLE pay, audit",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
    ];
    let insert = format!("INSERT INTO pay VALUES (7, 1, '{big}', 10.50), (7, 2, NULL, 0.00)");
    let workload = [
        insert.as_str(),
        "UPDATE pay SET amount = 11.00 WHERE id = 1",
        "UPDATE pay SET merchant_id = 8 WHERE id = 2",
        "DELETE FROM pay WHERE id = 1",
        "INSERT INTO audit VALUES (5)",
        "DELETE FROM audit",
        "SELECT pg_logical_emit_message(true, 'shardline', 'hello')",
        "TRUNCATE audit",
    ];
    // One statement per simple query: each is its own transaction.
    for sql in setup.iter().chain(&workload) {
        client.simple_query(sql).await.unwrap();
    }
    let msgs = changes(&client).await;
    let kinds: Vec<&str> = msgs
        .iter()
        .map(|m| match m {
            LogicalMessage::Begin { .. } => "B",
            LogicalMessage::Commit { .. } => "C",
            LogicalMessage::Relation(_) => "R",
            LogicalMessage::Insert { .. } => "I",
            LogicalMessage::Update { .. } => "U",
            LogicalMessage::Delete { .. } => "D",
            LogicalMessage::Truncate { .. } => "T",
            LogicalMessage::Message { .. } => "M",
            LogicalMessage::Type { .. } => "Y",
            LogicalMessage::Origin { .. } => "O",
        })
        .collect();
    assert_eq!(kinds.join(""), "BRIICBUCBUCBDCBRICBDCBMCBRTC", "{msgs:#?}");

    let LogicalMessage::Relation(pay) = &msgs[1] else {
        unreachable!()
    };
    assert_eq!(
        (pay.namespace.as_str(), pay.name.as_str()),
        ("public", "pay")
    );
    assert_eq!(pay.replica_identity, ReplicaIdentity::Default);
    let keys: Vec<&str> = pay
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(keys, ["merchant_id", "id"]);
    assert_eq!(
        pay.columns[3].type_modifier,
        (18 << 16 | 2) + 4,
        "numeric(18,2) typmod"
    );

    let LogicalMessage::Insert { new, .. } = &msgs[2] else {
        unreachable!()
    };
    assert_eq!(text(&new.0[2]).len(), 5000);
    assert_eq!(text(&new.0[3]), "10.50");
    let LogicalMessage::Insert { new, .. } = &msgs[3] else {
        unreachable!()
    };
    assert_eq!(new.0[2], ColumnValue::Null);

    // The TOASTed note did not change: it is not sent, and must be kept.
    let LogicalMessage::Update { old, new, .. } = &msgs[6] else {
        unreachable!()
    };
    assert!(old.is_none());
    assert_eq!(new.0[2], ColumnValue::UnchangedToast);
    assert_eq!(text(&new.0[3]), "11.00");

    // A changed key sends the old key.
    let LogicalMessage::Update {
        old: Some(OldTuple::Key(old)),
        new,
        ..
    } = &msgs[9]
    else {
        panic!("{:?}", msgs[9])
    };
    assert_eq!((text(&old.0[0]), text(&new.0[0])), ("7", "8"));

    let LogicalMessage::Delete {
        old: OldTuple::Key(old),
        ..
    } = &msgs[12]
    else {
        unreachable!()
    };
    assert_eq!((text(&old.0[0]), text(&old.0[1])), ("7", "1"));
    assert_eq!(
        old.0[2],
        ColumnValue::Null,
        "non-key columns of a key tuple are NULL"
    );

    let LogicalMessage::Delete {
        old: OldTuple::Full(old),
        ..
    } = &msgs[19]
    else {
        panic!("{:?}", msgs[19])
    };
    assert_eq!(text(&old.0[0]), "5");

    let LogicalMessage::Message {
        transactional,
        prefix,
        content,
        ..
    } = &msgs[22]
    else {
        unreachable!()
    };
    assert!(*transactional);
    assert_eq!(
        (prefix.as_str(), &content[..]),
        ("shardline", &b"hello"[..])
    );

    let LogicalMessage::Truncate {
        relations, cascade, ..
    } = &msgs[26]
    else {
        panic!("{:?}", msgs[26])
    };
    assert!(!cascade);
    assert_eq!(relations.len(), 1);

    // Commit LSNs only grow.
    let commits: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => Some((*commit_lsn, *end_lsn)),
            _ => None,
        })
        .collect();
    assert!(
        commits
            .windows(2)
            .all(|w| w[0].1 <= w[1].0 && w[0].0 < w[1].0),
        "{commits:?}"
    );
    client
        .batch_execute("SELECT pg_drop_replication_slot('s')")
        .await
        .unwrap();
}
