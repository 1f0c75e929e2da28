use super::*;
use crate::event::{ColumnState, Object, TableState};

fn listed(t: &str) -> bool {
    ["public.payments", "public.refunds", "public.orders"].contains(&t)
}

fn parent_of(t: &str) -> Option<String> {
    (t == "public.orders_2024").then(|| "public.orders".to_string())
}

fn colocated(_a: &str, b: &str) -> bool {
    b == "public.refunds"
}

fn run(c: &Captured) -> Plan {
    let tables = vec!["public.payments".to_string(), "public.orders".to_string()];
    plan(
        c,
        &Scope {
            listed: &listed,
            parent_of: &parent_of,
            colocated: &colocated,
            listed_tables: &tables,
        },
    )
}

fn table_object(kind: &str, table: &str) -> Object {
    Object {
        kind: kind.into(),
        identity: Some(table.into()),
        schema: Some("public".into()),
        table: Some(table.into()),
        address: None,
    }
}

fn payments(columns: &[(&str, Option<&str>)]) -> TableState {
    TableState {
        schema: "public".into(),
        name: "payments".into(),
        partitioned: false,
        parent: None,
        primary_key: vec!["id".into()],
        columns: columns
            .iter()
            .map(|(n, m)| ColumnState {
                name: n.to_string(),
                sql_type: "integer".into(),
                has_missing: m.is_some(),
                missing: m.map(str::to_string),
            })
            .collect(),
    }
}

fn captured(tag: &str, query: &str, objects: Vec<Object>) -> Captured {
    Captured {
        id: 7,
        event: Event::CommandEnd,
        tag: tag.into(),
        query: query.into(),
        ordinal: 0,
        search_path: "public".into(),
        role: "app".into(),
        objects,
        tables: vec![payments(&[("id", None)])],
        partitions: vec![],
        error: None,
    }
}

fn steps(p: Plan) -> Vec<Step> {
    match p {
        Plan::Apply(c) => c.steps,
        other => panic!("expected steps, got {other:?}"),
    }
}

#[test]
fn add_column_with_a_constant_default_runs_as_the_source_ran_it() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments ADD COLUMN risk_score int DEFAULT 7",
        vec![table_object("table", "public.payments")],
    );
    let s = steps(run(&c));
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].sql,
        "ALTER TABLE payments ADD COLUMN risk_score int DEFAULT 7"
    );
    assert_eq!(s[0].at, Where::Table("public.payments".into()));
}

#[test]
fn a_stable_default_gives_existing_rows_the_sources_value() {
    let mut c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments ADD COLUMN seen timestamptz DEFAULT now()",
        vec![table_object("table", "public.payments")],
    );
    c.tables = vec![payments(&[
        ("id", None),
        ("seen", Some("2024-05-01 10:00:00+00")),
    ])];
    let s = steps(run(&c));
    assert_eq!(s.len(), 1);
    assert!(
        s[0].sql
            .contains("DEFAULT ('2024-05-01 10:00:00+00'::timestamptz)")
            && s[0].sql.contains("ALTER COLUMN seen SET DEFAULT now()"),
        "{}",
        s[0].sql
    );
}

#[test]
fn a_volatile_default_requires_an_empty_target() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments ADD COLUMN token uuid DEFAULT gen_random_uuid()",
        vec![table_object("table", "public.payments")],
    );
    let s = steps(run(&c));
    assert_eq!(s.len(), 2);
    let r = s[0].require.clone().unwrap();
    assert!(
        r.check
            .contains(r#"NOT EXISTS (SELECT 1 FROM "public"."payments""#),
        "{}",
        r.check
    );
    assert!(r.why.contains("gen_random_uuid()"), "{}", r.why);
    assert!(r.fix.contains("skip-ddl 7"), "{}", r.fix);
    assert!(s[1].sql.contains("gen_random_uuid()"));
}

#[test]
fn drop_rename_and_retype_report_their_columns() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments DROP COLUMN note, ALTER COLUMN amount TYPE numeric(20,2)",
        vec![table_object("table", "public.payments")],
    );
    let Plan::Apply(changes) = run(&c) else {
        panic!()
    };
    assert_eq!(
        changes.effects,
        vec![
            Effect::Dropped {
                table: "public.payments".into(),
                column: "note".into()
            },
            Effect::Retyped {
                table: "public.payments".into(),
                column: "amount".into()
            },
        ]
    );
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments RENAME COLUMN note TO memo",
        vec![table_object("table column", "public.payments")],
    );
    let Plan::Apply(changes) = run(&c) else {
        panic!()
    };
    assert_eq!(
        changes.effects,
        vec![Effect::Renamed {
            table: "public.payments".into(),
            from: "note".into(),
            to: "memo".into()
        }]
    );
}

#[test]
fn unlisted_tables_are_ignored_and_mixed_commands_refused() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE audit ADD COLUMN x int",
        vec![table_object("table", "public.audit")],
    );
    assert!(matches!(run(&c), Plan::Ignore(_)));
    let c = captured(
        "DROP TABLE",
        "DROP TABLE audit, payments",
        vec![
            table_object("table", "public.audit"),
            table_object("table", "public.payments"),
        ],
    );
    let Plan::Refuse { why, fix } = run(&c) else {
        panic!()
    };
    assert!(
        why.contains("public.payments") && why.contains("public.audit"),
        "{why}"
    );
    assert!(fix.contains("skip-ddl 7"));
}

#[test]
fn renaming_or_dropping_a_listed_table_is_refused() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments RENAME TO payments_old",
        vec![table_object("table", "public.payments")],
    );
    let Plan::Refuse { why, .. } = run(&c) else {
        panic!()
    };
    assert!(why.contains("topology names"), "{why}");
}

#[test]
fn the_statement_of_a_multi_statement_query_is_found_by_its_place() {
    let mut c = captured(
        "ALTER TABLE",
        "ALTER TABLE audit ADD a int; ALTER TABLE payments ADD b int; CREATE INDEX ON payments (b)",
        vec![table_object("table", "public.payments")],
    );
    c.ordinal = 1;
    assert_eq!(steps(run(&c))[0].sql, "ALTER TABLE payments ADD b int");
    // The capture counted a statement that is not there (a DO block).
    c.query = "DO $$ BEGIN EXECUTE 'ALTER TABLE payments ADD b int'; END $$".into();
    c.ordinal = 0;
    let Plan::Refuse { why, .. } = run(&c) else {
        panic!()
    };
    assert!(why.contains("DO block"), "{why}");
    // A statement naming another table than the capture saw.
    c.query = "ALTER TABLE refunds ADD b int".into();
    let Plan::Refuse { why, .. } = run(&c) else {
        panic!()
    };
    assert!(why.contains("names public.refunds"), "{why}");
}

#[test]
fn an_index_gets_the_sources_name_and_concurrently_runs_outside() {
    let mut index = table_object("index", "public.payments");
    index.identity = Some("public.payments_b_idx".into());
    let c = captured(
        "CREATE INDEX",
        "CREATE INDEX CONCURRENTLY ON payments (b)",
        vec![index],
    );
    let s = steps(run(&c));
    assert!(s[0].concurrent);
    assert!(
        s[0].sql.contains("IF NOT EXISTS payments_b_idx"),
        "{}",
        s[0].sql
    );
    assert_eq!(s[0].index.as_deref(), Some(r#""public"."payments_b_idx""#));
}

#[test]
fn dropped_indexes_are_dropped_where_a_listed_table_has_them() {
    let mut c = captured(
        "DROP INDEX",
        "DROP INDEX CONCURRENTLY payments_b_idx",
        vec![Object {
            kind: "index".into(),
            identity: Some("public.payments_b_idx".into()),
            schema: Some("public".into()),
            table: None,
            address: Some(vec!["public".into(), "payments_b_idx".into()]),
        }],
    );
    c.event = Event::Drop;
    let s = steps(run(&c));
    assert_eq!(
        s[0].sql,
        r#"DROP INDEX CONCURRENTLY IF EXISTS "public"."payments_b_idx""#
    );
    assert!(s[0].concurrent && s[0].at == Where::Everywhere);
    assert!(s[0]
        .guard
        .as_ref()
        .unwrap()
        .contains("('public', 'payments')"));
}

#[test]
fn new_enum_labels_end_the_target_transaction() {
    let c = captured(
        "ALTER TYPE",
        "ALTER TYPE payment_status ADD VALUE 'disputed'",
        vec![Object {
            kind: "type".into(),
            identity: Some("public.payment_status".into()),
            schema: Some("public".into()),
            table: None,
            address: None,
        }],
    );
    let Plan::Apply(changes) = run(&c) else {
        panic!()
    };
    assert!(changes.ends_group);
    assert!(
        changes.steps[0].sql.contains("IF NOT EXISTS"),
        "{}",
        changes.steps[0].sql
    );
    assert_eq!(
        changes.steps[0].guard.as_deref(),
        Some(r#"to_regtype('"public"."payment_status"') IS NOT NULL"#)
    );
}

#[test]
fn a_partition_is_created_only_where_the_parent_is_partitioned() {
    let mut c = captured(
        "CREATE TABLE",
        "CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        vec![table_object("table", "public.orders_2024")],
    );
    c.tables = vec![TableState {
        schema: "public".into(),
        name: "orders_2024".into(),
        partitioned: false,
        parent: Some("public.orders".into()),
        primary_key: vec![],
        columns: vec![],
    }];
    let s = steps(run(&c));
    assert_eq!(s[0].at, Where::Table("public.orders".into()));
    assert!(s[0].guard.as_ref().unwrap().contains("relkind = 'p'"));
    assert!(s[0].skipped.as_ref().unwrap().contains("one table"));
}

fn partition_change(op: &str, partition: &str, parent: &str) -> crate::event::PartitionChange {
    crate::event::PartitionChange {
        op: op.into(),
        partition: partition.into(),
        parent: parent.into(),
        root: "public.orders".into(),
        columns: vec!["merchant_id".into(), "id".into(), "created".into()],
        replica_identity: "d".into(),
        identity: vec!["merchant_id".into(), "id".into(), "created".into()],
    }
}

fn changes(p: Plan) -> Changes {
    match p {
        Plan::Apply(c) => *c,
        other => panic!("expected changes, got {other:?}"),
    }
}

#[test]
fn an_attached_partition_is_created_empty_where_partitioned_and_its_rows_follow_as_inserts() {
    let statement = "ALTER TABLE orders ATTACH PARTITION orders_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')";
    let mut c = captured(
        "ALTER TABLE",
        statement,
        vec![table_object("table", "public.orders")],
    );
    // Another partition's change in the same record is not this one.
    c.partitions = vec![
        partition_change("detach", "public.orders_2025", "public.orders"),
        partition_change("attach", "public.orders_2025", "public.orders"),
    ];
    let c = changes(run(&c));
    assert_eq!(
        c.replays,
        vec![Replay {
            part: 1,
            table: "public.orders".into(),
            delete: false,
            only_where: None
        }]
    );
    let [create, attach] = c.steps.as_slice() else {
        panic!("two steps: {:?}", c.steps)
    };
    assert_eq!(
        create.sql,
        "CREATE TABLE public.orders_2025 PARTITION OF public.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
    );
    assert_eq!(create.at, Where::Table("public.orders".into()));
    let guard = create.guard.as_deref().unwrap();
    assert!(
        guard.contains("relkind = 'p'")
            && guard.contains("to_regclass('\"public\".\"orders_2025\"') IS NULL"),
        "{guard}"
    );
    assert!(create.skipped.as_ref().unwrap().contains("inserted"));
    assert!(create.require.is_none());
    // A table of that name on the target is attached only when empty.
    assert_eq!(attach.sql, statement);
    assert!(attach.guard.as_deref().unwrap().contains("pg_inherits"));
    let require = attach.require.as_ref().unwrap();
    assert_eq!(
        require.check,
        r#"NOT EXISTS (SELECT 1 FROM "public"."orders_2025" LIMIT 1)"#
    );
    assert!(
        require.fix.contains(r#"TRUNCATE "public"."orders_2025""#),
        "{}",
        require.fix
    );
}

#[test]
fn an_attach_to_a_partition_of_a_listed_table_inserts_into_the_listed_table() {
    let statement = "ALTER TABLE orders_2024 ATTACH PARTITION orders_2024_q4 FOR VALUES FROM ('2024-10-01') TO ('2025-01-01')";
    let mut c = captured(
        "ALTER TABLE",
        statement,
        vec![table_object("table", "public.orders_2024")],
    );
    c.tables = vec![];
    c.partitions = vec![partition_change(
        "attach",
        "public.orders_2024_q4",
        "public.orders_2024",
    )];
    let c = changes(run(&c));
    assert_eq!(c.replays[0].table, "public.orders");
    assert_eq!(c.steps[0].at, Where::Table("public.orders".into()));
    assert!(
        c.steps[0].sql.contains("PARTITION OF public.orders_2024 "),
        "{}",
        c.steps[0].sql
    );
}

#[test]
fn an_attach_the_capture_did_not_record_is_refused_with_the_way_out() {
    let statement = "ALTER TABLE orders ATTACH PARTITION orders_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')";
    let mut c = captured(
        "ALTER TABLE",
        statement,
        vec![table_object("table", "public.orders")],
    );
    c.partitions = vec![crate::event::PartitionChange {
        op: "unknown".into(),
        ..Default::default()
    }];
    match run(&c) {
        Plan::Refuse { why, fix } => {
            assert!(
                why.contains(statement) && why.contains("did not record"),
                "{why}"
            );
            assert!(fix.contains("cdc skip-ddl 7"), "{fix}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_detached_partition_is_detached_where_partitioned_and_deleted_where_whole() {
    let mut c = captured(
        "ALTER TABLE",
        "ALTER TABLE orders DETACH PARTITION orders_2024 CONCURRENTLY",
        vec![table_object("table", "public.orders")],
    );
    c.partitions = vec![partition_change(
        "detach",
        "public.orders_2024",
        "public.orders",
    )];
    let c = changes(run(&c));
    assert_eq!(c.steps.len(), 1);
    // In the target's transaction: the rows left at this position.
    assert_eq!(
        c.steps[0].sql,
        "ALTER TABLE orders DETACH PARTITION orders_2024"
    );
    assert!(!c.steps[0].concurrent);
    let guard = c.steps[0].guard.clone().unwrap();
    assert!(guard.contains("relkind = 'p'"));
    assert!(c.steps[0].require.is_none());
    assert_eq!(
        c.replays,
        vec![Replay {
            part: 0,
            table: "public.orders".into(),
            delete: true,
            only_where: Some(format!("NOT {guard}")),
        }]
    );
}

#[test]
fn a_detach_the_capture_did_not_record_stops_only_targets_that_keep_the_table_whole() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE orders DETACH PARTITION orders_2024",
        vec![table_object("table", "public.orders")],
    );
    let c = changes(run(&c));
    assert!(c.replays.is_empty());
    let require = c.steps[0].require.as_ref().unwrap();
    assert!(require.check.contains("relkind = 'p'"));
    assert!(require.fix.contains("delete those rows on this target"));
}

#[test]
fn foreign_keys_to_tables_elsewhere_stay_on_the_source() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments ADD CONSTRAINT m FOREIGN KEY (merchant_id) REFERENCES merchants (id), ADD CONSTRAINT r FOREIGN KEY (refund_id) REFERENCES refunds (id)",
        vec![table_object("table", "public.payments")],
    );
    let Plan::Apply(changes) = run(&c) else {
        panic!()
    };
    assert_eq!(changes.steps.len(), 1);
    assert!(
        !changes.steps[0].sql.contains("merchants"),
        "{}",
        changes.steps[0].sql
    );
    assert!(changes.steps[0].sql.contains("REFERENCES refunds"));
    assert!(changes.notes[0].contains("merchants"));
}

#[test]
fn owners_and_triggers_stay_on_the_source() {
    let c = captured(
        "ALTER TABLE",
        "ALTER TABLE payments OWNER TO app",
        vec![table_object("table", "public.payments")],
    );
    assert!(matches!(run(&c), Plan::Ignore(_)));
    let c = captured(
        "CREATE TRIGGER",
        "CREATE TRIGGER t BEFORE INSERT ON payments FOR EACH ROW EXECUTE FUNCTION f()",
        vec![table_object("trigger", "public.payments")],
    );
    assert!(matches!(run(&c), Plan::Ignore(_)));
}

#[test]
fn a_failed_capture_stops_with_the_way_out() {
    let mut c = captured("ALTER TABLE", "ALTER TABLE payments ADD x int", vec![]);
    c.error = Some("out of memory".into());
    let Plan::Refuse { why, fix } = run(&c) else {
        panic!()
    };
    assert!(why.contains("out of memory"));
    assert!(fix.contains("shardline cdc skip-ddl 7"));
}

#[test]
fn identities_are_read_as_postgresql_quotes_them() {
    assert_eq!(identity_name("public.plain", "public"), "plain");
    assert_eq!(
        identity_name(r#""My Schema"."Odd.""Name""#, "My Schema"),
        r#"Odd."Name"#
    );
}

#[test]
fn odd_table_names_keep_their_spelling() {
    let c = captured(
        "ALTER TABLE",
        r#"ALTER TABLE billing."Ledger.2024" ADD COLUMN x int"#,
        vec![Object {
            kind: "table".into(),
            identity: Some(r#"billing."Ledger.2024""#.into()),
            schema: Some("billing".into()),
            table: Some(r#"billing."Ledger.2024""#.into()),
            address: None,
        }],
    );
    let listed = |t: &str| t == r#"billing."Ledger.2024""#;
    let none = |_: &str| None;
    let no = |_: &str, _: &str| false;
    let p = plan(
        &c,
        &Scope {
            listed: &listed,
            parent_of: &none,
            colocated: &no,
            listed_tables: &[],
        },
    );
    let Plan::Apply(changes) = p else {
        panic!("{p:?}")
    };
    assert_eq!(changes.tables, vec![r#"billing."Ledger.2024""#.to_string()]);
    assert_eq!(quoted(&changes.tables[0]), r#""billing"."Ledger.2024""#);
}
