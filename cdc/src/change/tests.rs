use std::path::Path;

use bytes::Bytes;
use shardline_topology::Topology;

use super::*;
use crate::pgoutput::RelationColumn;

fn routes() -> Routes {
    let text = r#"
[source]
url = "postgres://postgres@127.0.0.1:1/monolith"
[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["postgres://postgres@127.0.0.1:2/tx", "postgres://postgres@127.0.0.1:3/tx"]
reference_tables = ["currencies"]
[contexts.settlements]
tables = ["payouts"]
url = "postgres://postgres@127.0.0.1:4/settlements"
"#;
    Routes::from_topology(&Topology::parse(text, Path::new("t.toml")).unwrap())
}

fn relation(
    id: u32,
    name: &str,
    identity: ReplicaIdentity,
    keys: &[&str],
    columns: &[&str],
) -> Relation {
    Relation {
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: identity,
        columns: columns
            .iter()
            .map(|c| RelationColumn {
                is_key: keys.contains(c),
                name: c.to_string(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn tuple(values: &[Option<&str>]) -> TupleData {
    TupleData(
        values
            .iter()
            .map(|v| match v {
                Some("<toast>") => ColumnValue::UnchangedToast,
                Some(s) => ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes())),
                None => ColumnValue::Null,
            })
            .collect(),
    )
}

fn payments() -> Relation {
    relation(
        1,
        "payments",
        ReplicaIdentity::Default,
        &["merchant_id", "id"],
        &["merchant_id", "id", "note"],
    )
}

/// A merchant on each shard of the two-shard topology, with the target
/// index of that shard.
fn merchants_on_each_shard(routes: &Routes) -> [(String, usize); 2] {
    let TableRoute::Sharded {
        placement, shards, ..
    } = routes.route("public", "payments").unwrap()
    else {
        unreachable!()
    };
    let on = |shard| {
        let m = (0..)
            .map(|m: i64| m.to_string())
            .find(|m| placement.shard(&ShardKey::Int(m.parse().unwrap())) == shard)
            .unwrap();
        (m, shards[shard])
    };
    [on(0), on(1)]
}

#[test]
fn inserts_go_to_the_shard_of_their_key_and_reference_rows_everywhere() {
    let routes = routes();
    let mut tables = Tables::default();
    tables.describe(payments(), &routes).unwrap();
    tables
        .describe(
            relation(
                2,
                "currencies",
                ReplicaIdentity::Default,
                &["code"],
                &["code"],
            ),
            &routes,
        )
        .unwrap();
    let shards = merchants_on_each_shard(&routes);
    for (m, shard) in &shards {
        let ops = tables
            .plan(&LogicalMessage::Insert {
                relation: 1,
                new: tuple(&[Some(m), Some("1"), Some("it's")]),
            })
            .unwrap();
        assert_eq!(
            ops,
            vec![Op::Exec {
                target: *shard,
                sql: format!("INSERT INTO \"public\".\"payments\" (\"merchant_id\", \"id\", \"note\") VALUES ('{m}', '1', 'it''s')")
            }]
        );
    }
    let ops = tables
        .plan(&LogicalMessage::Insert {
            relation: 2,
            new: tuple(&[Some("EUR")]),
        })
        .unwrap();
    let targets: Vec<usize> = ops
        .iter()
        .map(|o| match o {
            Op::Exec { target, .. } => *target,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(targets, [shards[0].1, shards[1].1]);
}

#[test]
fn unchanged_toast_is_kept_and_key_changes_move_rows() {
    let routes = routes();
    let mut tables = Tables::default();
    tables.describe(payments(), &routes).unwrap();
    let [(m0, t0), (m1, t1)] = merchants_on_each_shard(&routes);
    let ops = tables
        .plan(&LogicalMessage::Update {
            relation: 1,
            old: None,
            new: tuple(&[Some(&m0), Some("1"), Some("<toast>")]),
        })
        .unwrap();
    let Op::Exec { target, sql } = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(*target, t0);
    assert!(
        !sql.contains("note"),
        "unchanged TOAST must not be written: {sql}"
    );

    let ops = tables
        .plan(&LogicalMessage::Update {
            relation: 1,
            old: Some(OldTuple::Key(tuple(&[Some(&m0), Some("1"), None]))),
            new: tuple(&[Some(&m1), Some("1"), Some("<toast>")]),
        })
        .unwrap();
    let Op::Move {
        from,
        to,
        values,
        key,
        ..
    } = &ops[0]
    else {
        panic!("{ops:?}")
    };
    assert_eq!((*from, *to), (t0, t1));
    assert_eq!(
        values[2], None,
        "the unchanged value is to be read from the old shard"
    );
    assert_eq!(
        key[0],
        ("merchant_id".to_string(), Some(m0.as_bytes().to_vec()))
    );
}

#[test]
fn tables_that_cannot_place_deletes_are_refused_with_the_fix() {
    let routes = routes();
    let mut tables = Tables::default();
    let no_key = relation(
        1,
        "payments",
        ReplicaIdentity::Default,
        &["id"],
        &["merchant_id", "id"],
    );
    let err = tables.describe(no_key, &routes).unwrap_err();
    assert!(
        err.to_string()
            .contains("ALTER TABLE public.payments REPLICA IDENTITY FULL"),
        "{err}"
    );
    let full = relation(
        1,
        "payments",
        ReplicaIdentity::Full,
        &["merchant_id", "id"],
        &["merchant_id", "id"],
    );
    tables.describe(full, &routes).unwrap();

    // A partition is described next to its listed parent: only a change
    // of an unlisted table stops the stream.
    tables
        .describe(
            relation(3, "ledger", ReplicaIdentity::Default, &["id"], &["id"]),
            &routes,
        )
        .unwrap();
    let err = tables.get(3).unwrap_err();
    assert_eq!(
        err,
        ChangeError::Unlisted {
            table: "public.ledger".into()
        }
    );
}

#[test]
fn a_null_shard_key_and_a_column_change_stop_the_stream() {
    let routes = routes();
    let mut tables = Tables::default();
    tables.describe(payments(), &routes).unwrap();
    let err = tables
        .plan(&LogicalMessage::Insert {
            relation: 1,
            new: tuple(&[None, Some("1"), None]),
        })
        .unwrap_err();
    assert!(matches!(err, ChangeError::NullShardKey { .. }), "{err}");
    let err = tables
        .describe(
            relation(
                1,
                "payments",
                ReplicaIdentity::Default,
                &["merchant_id", "id"],
                &["merchant_id", "id", "note", "fee"],
            ),
            &routes,
        )
        .unwrap_err();
    assert!(err.to_string().contains("added [\"fee\"]"), "{err}");
    assert_eq!(
        tables.plan(&LogicalMessage::Insert {
            relation: 9,
            new: tuple(&[])
        }),
        Err(ChangeError::UnknownRelation(9))
    );
}
