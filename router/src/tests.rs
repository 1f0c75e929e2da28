//! Table-driven routing tests from real SQL, against a four-shard topology.

use std::path::Path;

use shardline_topology::{ShardKey, Topology};

use crate::{
    Aggregate, Control, Kind, Limit, MergeShape, Output, Param, RouteError, Router, SortColumn,
    SortKey, Target,
};

mod merge;
mod pool;

const TOPOLOGY: &str = r#"
[source]
url = "postgres://postgres@127.0.0.1:1/monolith"

[contexts.transactions]
tables = ["payments", "payment_events", "refunds"]
reference_tables = ["currencies"]
shard_key = "merchant_id"
shards = [
  "postgres://postgres@127.0.0.1:2/tx",
  "postgres://postgres@127.0.0.1:3/tx",
  "postgres://postgres@127.0.0.1:4/tx",
  "postgres://postgres@127.0.0.1:5/tx",
]

[contexts.settlements]
tables = ["settlements", "payouts"]
url = "postgres://postgres@127.0.0.1:6/settlements"

[contexts.analytics]
url = "postgres://postgres@127.0.0.1:7/analytics"
tables = ["merchants"]
"#;

fn router() -> Router {
    Router::new(&Topology::parse(TOPOLOGY, Path::new("test.toml")).unwrap())
}

fn placement(router: &Router) -> shardline_topology::Placement {
    let ctx = router.schema().override_context().unwrap();
    router.schema().context(ctx).sharding.clone().unwrap().1
}

fn shard(router: &Router, merchant: i64) -> usize {
    placement(router).shard(&ShardKey::Int(merchant))
}

/// Two merchants on different shards, and one more on the first's shard.
fn merchants(router: &Router) -> (i64, i64, i64) {
    let a = 1;
    let b = (2..)
        .find(|m| shard(router, *m) != shard(router, a))
        .unwrap();
    let c = (b + 1..)
        .find(|m| shard(router, *m) == shard(router, a))
        .unwrap();
    (a, b, c)
}

fn tx(shard: usize) -> Target {
    Target::Shard {
        context: "transactions".into(),
        shard,
    }
}

fn target(r: &Router, sql: &str) -> Result<Target, RouteError> {
    both(r, sql, &[], None).map(|r| r.target)
}

/// Routes a text the router's way (by its shape when the shape is known to
/// route alike) and by the text itself; the two must agree, route or error.
fn both(
    r: &Router,
    sql: &str,
    params: &[Param<'_>],
    key: Option<&ShardKey>,
) -> Result<crate::Route, RouteError> {
    let routed = r.route(sql, params, key);
    assert_eq!(routed, r.route_text(sql, params, key), "{sql}");
    routed
}

#[test]
fn a_key_in_the_where_clause_picks_its_shard() {
    let r = router();
    let (a, b, _) = merchants(&r);
    let cases = [
        format!("SELECT * FROM payments WHERE merchant_id = {a}"),
        format!("SELECT * FROM payments WHERE {a} = merchant_id AND amount > 10"),
        format!("SELECT * FROM payments p WHERE p.merchant_id = '{a}'"),
        format!("SELECT * FROM payments WHERE merchant_id = {a}::bigint"),
        format!("SELECT * FROM public.payments WHERE merchant_id IN ({a})"),
        format!("UPDATE payments SET status = 'captured' WHERE id = 7 AND merchant_id = {a}"),
        format!("DELETE FROM refunds WHERE merchant_id = {a}"),
        format!("INSERT INTO payments (id, merchant_id, amount) VALUES (1, {a}, 10)"),
        format!("SELECT * FROM payments WHERE merchant_id = {a} AND (merchant_id = {a} OR merchant_id = {a})"),
        format!("SELECT * FROM payments p JOIN refunds r ON r.payment_id = p.id WHERE p.merchant_id = {a}"),
        format!("WITH recent AS (SELECT * FROM payments WHERE merchant_id = {a}) SELECT count(*) FROM recent"),
        format!("SELECT * FROM payments WHERE merchant_id = {a} AND id IN (SELECT payment_id FROM refunds WHERE merchant_id = {a})"),
        format!("SELECT * FROM payments WHERE merchant_id = ANY(ARRAY[{a}])"),
    ];
    for sql in &cases {
        assert_eq!(target(&r, sql), Ok(tx(shard(&r, a))), "{sql}");
    }
    // Contradictory keys match no row; any one shard answers that.
    let none = format!("SELECT * FROM payments WHERE merchant_id = {a} AND merchant_id = {b}");
    assert!(matches!(target(&r, &none), Ok(Target::Shard { .. })));
}

#[test]
fn bind_parameters_in_text_and_binary_pick_the_same_shard() {
    let r = router();
    let (a, _, _) = merchants(&r);
    let text = a.to_string();
    let int8 = a.to_be_bytes();
    let int4 = (a as i32).to_be_bytes();
    let sql = "SELECT * FROM payments WHERE merchant_id = $1";
    for params in [
        vec![Param::text(&text)],
        vec![Param::binary(&int8, 20)],
        vec![Param::binary(&int4, 23)],
        vec![Param::binary(&int8, 0)],
        vec![Param {
            value: Some(text.as_bytes()),
            format: crate::Format::Text,
            type_oid: 20,
        }],
    ] {
        assert_eq!(
            both(&r, sql, &params, None).unwrap().target,
            tx(shard(&r, a))
        );
    }
    let insert = "INSERT INTO payments (id, merchant_id) VALUES ($1, $2)";
    assert_eq!(
        both(
            &r,
            insert,
            &[Param::text("9"), Param::binary(&int8, 20)],
            None
        )
        .unwrap()
        .target,
        tx(shard(&r, a))
    );
    assert_eq!(
        both(&r, sql, &[], None),
        Err(RouteError::MissingParameter {
            number: 1,
            given: 0
        })
    );
    assert!(matches!(
        both(&r, sql, &[Param::binary(&[1, 2, 3], 0)], None),
        Err(RouteError::ParameterType { number: 1, .. })
    ));
    assert!(matches!(
        both(&r, sql, &[Param::text("abc")], None),
        Err(RouteError::Key(_))
    ));
}

/// PgDog #639: `IN (1, 3) GROUP BY` was sent to one shard.
#[test]
fn an_in_list_over_two_shards_is_a_scatter_never_one_shard() {
    let r = router();
    let (a, b, c) = merchants(&r);
    let mut both = vec![shard(&r, a), shard(&r, b)];
    both.sort();
    let grouped = format!(
        "SELECT merchant_id, count(*) FROM payments WHERE merchant_id IN ({a}, {b}) GROUP BY merchant_id"
    );
    assert_eq!(
        target(&r, &grouped),
        Ok(Target::Shards {
            context: "transactions".into(),
            shards: both.clone(),
            merge: Some(MergeShape::Rows {
                order: vec![],
                limit: None,
                offset: 0,
                shard_sql: None,
            }),
        })
    );
    // Grouped by something else: both shards, groups re-grouped.
    let by_status = format!(
        "SELECT status, count(*) FROM payments WHERE merchant_id IN ({a}, {b}) GROUP BY status"
    );
    assert!(matches!(
        target(&r, &by_status),
        Ok(Target::Shards { shards, merge: Some(MergeShape::Aggregate { .. }), .. }) if shards == both
    ));
    // Two keys on one shard stay on that shard.
    let same = format!(
        "SELECT status, count(*) FROM payments WHERE merchant_id IN ({a}, {c}) GROUP BY status"
    );
    assert_eq!(target(&r, &same), Ok(tx(shard(&r, a))));
    let or = format!("SELECT * FROM payments WHERE merchant_id = {a} OR merchant_id = {b}");
    assert!(matches!(target(&r, &or), Ok(Target::Shards { shards, .. }) if shards == both));
    // OR with a side that names no key could be anywhere.
    let loose = format!("SELECT * FROM payments WHERE merchant_id = {a} OR amount > 5");
    assert!(matches!(target(&r, &loose), Ok(Target::Shards { shards, .. }) if shards.len() == 4));
}

/// PgDog #259: a multi-row INSERT went to every shard, duplicating rows.
#[test]
fn a_multi_row_insert_is_split_by_shard_never_duplicated() {
    let r = router();
    let (a, b, c) = merchants(&r);
    let sql = format!(
        "INSERT INTO payments (id, merchant_id, amount) VALUES (1, {a}, 10), (2, {b}, 20), (3, {c}, 30)"
    );
    let Ok(Target::Split { context, parts }) = target(&r, &sql) else {
        panic!("not split: {:?}", target(&r, &sql));
    };
    assert_eq!(context, "transactions");
    assert_eq!(parts.len(), 2);
    let part = |s: usize| &parts.iter().find(|(shard, _)| *shard == s).unwrap().1;
    assert_eq!(
        part(shard(&r, a)),
        &format!(
            "INSERT INTO payments (id, merchant_id, amount) VALUES (1, {a}, 10), (3, {c}, 30)"
        )
    );
    assert_eq!(
        part(shard(&r, b)),
        &format!("INSERT INTO payments (id, merchant_id, amount) VALUES (2, {b}, 20)")
    );
    // With bind parameters the rows cannot be re-numbered: refused.
    let (ta, tb) = (a.to_string(), b.to_string());
    let bound = both(
        &r,
        "INSERT INTO payments (id, merchant_id) VALUES (1, $1), (2, $2)",
        &[Param::text(&ta), Param::text(&tb)],
        None,
    );
    assert!(matches!(bound, Err(RouteError::SplitWithParameters { .. })));
}

#[test]
fn inserts_that_hide_the_key_are_refused() {
    let r = router();
    type Check = fn(&RouteError) -> bool;
    let cases: [(&str, Check); 5] = [
        ("INSERT INTO payments (id, amount) VALUES (1, 10)", |e| {
            matches!(e, RouteError::InsertWithoutKey { .. })
        }),
        ("INSERT INTO payments VALUES (1, 42, 10)", |e| {
            matches!(e, RouteError::InsertWithoutKey { .. })
        }),
        (
            "INSERT INTO payments (id, merchant_id) VALUES (1, 40 + 2)",
            |e| matches!(e, RouteError::InsertKeyNotConstant { row: 1, .. }),
        ),
        (
            "INSERT INTO payments (id, merchant_id) VALUES (1, 4), (2, NULL)",
            |e| matches!(e, RouteError::InsertKeyNotConstant { row: 2, .. }),
        ),
        (
            "INSERT INTO payments (id, merchant_id) SELECT id, merchant_id FROM refunds",
            |e| matches!(e, RouteError::InsertSelect { .. }),
        ),
    ];
    for (sql, ok) in cases {
        let got = target(&r, sql);
        assert!(matches!(&got, Err(e) if ok(e)), "{sql}: {got:?}");
    }
}

#[test]
fn writes_without_a_key_are_refused() {
    let r = router();
    for sql in [
        "UPDATE payments SET status = 'failed' WHERE amount < 0",
        "DELETE FROM payments",
        "DELETE FROM payments WHERE merchant_id = 1 OR id = 4",
    ] {
        let got = target(&r, sql);
        assert!(
            matches!(&got, Err(RouteError::WriteWithoutKey { table, key, .. }) if table == "payments" && key == "merchant_id"),
            "{sql}: {got:?}"
        );
        assert_eq!(got.unwrap_err().sqlstate(), "0A000");
    }
    let got = target(
        &r,
        "UPDATE payments SET merchant_id = 2 WHERE merchant_id = 1",
    );
    assert!(matches!(got, Err(RouteError::UpdatesKey { .. })));
}

#[test]
fn other_contexts_go_to_their_databases_and_mixing_contexts_is_refused() {
    let r = router();
    let db = |c: &str| Target::Database { context: c.into() };
    assert_eq!(
        target(&r, "SELECT * FROM settlements"),
        Ok(db("settlements"))
    );
    assert_eq!(
        target(&r, "UPDATE payouts SET paid = true WHERE id = 3"),
        Ok(db("settlements"))
    );
    assert_eq!(
        target(&r, "SELECT m.name FROM merchants m WHERE m.id = 3"),
        Ok(db("analytics"))
    );
    let got = target(
        &r,
        "SELECT * FROM payments p JOIN merchants m ON m.id = p.merchant_id WHERE p.merchant_id = 1",
    );
    assert_eq!(
        got,
        Err(RouteError::CrossContext {
            tables: "payments (transactions), merchants (analytics)".into()
        })
    );
    let got = target(
        &r,
        "SELECT * FROM settlements WHERE id IN (SELECT settlement_id FROM payments WHERE merchant_id = 1)",
    );
    assert!(matches!(got, Err(RouteError::CrossContext { .. })));
    let unknown = target(&r, "SELECT * FROM invoices");
    assert_eq!(
        unknown,
        Err(RouteError::UnknownTable {
            table: "invoices".into()
        })
    );
    assert_eq!(unknown.unwrap_err().sqlstate(), "42P01");
}

/// PgDog #1085: a transaction pinned to one shard wrote a replicated table
/// on that shard only. A replicated write is a broadcast, which the session
/// refuses inside a transaction.
#[test]
fn replicated_tables_are_read_anywhere_and_written_everywhere() {
    let r = router();
    let any = Target::AnyShard {
        context: "transactions".into(),
    };
    let all = Target::Broadcast {
        context: "transactions".into(),
    };
    assert_eq!(target(&r, "SELECT * FROM currencies"), Ok(any));
    assert_eq!(
        target(&r, "INSERT INTO currencies (code) VALUES ('EUR'), ('USD')"),
        Ok(all.clone())
    );
    assert_eq!(target(&r, "UPDATE currencies SET digits = 2"), Ok(all));
    assert_eq!(
        target(
            &r,
            "SELECT * FROM payments p JOIN currencies c ON c.code = p.currency WHERE p.merchant_id = 1"
        ),
        Ok(tx(shard(&r, 1)))
    );
    assert!(matches!(
        target(
            &r,
            "INSERT INTO currencies SELECT DISTINCT currency FROM payments"
        ),
        Err(RouteError::ReplicatedWriteMixed { .. })
    ));
}

#[test]
fn a_subquery_without_its_own_key_is_refused() {
    let r = router();
    let (a, b, _) = merchants(&r);
    // The average over every merchant is not on merchant a's shard.
    for sql in [
        format!("SELECT * FROM payments WHERE merchant_id = {a} AND amount > (SELECT avg(amount) FROM payments)"),
        format!("SELECT * FROM payments WHERE merchant_id = {a} AND id IN (SELECT payment_id FROM refunds WHERE merchant_id = {b})"),
        format!("WITH big AS (SELECT * FROM payments WHERE amount > 100) SELECT * FROM big JOIN refunds r ON r.merchant_id = {a}"),
    ] {
        let got = target(&r, &sql);
        assert!(matches!(got, Err(RouteError::SubqueryAcrossShards { .. })), "{sql}: {got:?}");
    }
}

#[test]
fn the_session_key_routes_statements_without_one() {
    let r = router();
    let (a, b, _) = merchants(&r);
    let route = both(&r, &format!("SET shardline.merchant_id = {a}"), &[], None).unwrap();
    assert_eq!(route.kinds, vec![Kind::SetKey(Some(ShardKey::Int(a)))]);
    let key = ShardKey::Int(a);
    let got = both(
        &r,
        "UPDATE payments SET status = 'x' WHERE id = 4",
        &[],
        Some(&key),
    );
    assert_eq!(got.unwrap().target, tx(shard(&r, a)));
    // A key in the statement wins over the session's.
    let own = format!("SELECT * FROM payments WHERE merchant_id = {b}");
    assert_eq!(
        both(&r, &own, &[], Some(&key)).unwrap().target,
        tx(shard(&r, b))
    );
    let reset = both(&r, "RESET shardline.merchant_id", &[], Some(&key)).unwrap();
    assert_eq!(reset.kinds, vec![Kind::SetKey(None)]);
    // Set and used in one query string.
    let both = both(
        &r,
        &format!("SET shardline.merchant_id = {a}; DELETE FROM refunds WHERE id = 1"),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(both.target, tx(shard(&r, a)));
}

#[test]
fn session_and_transaction_statements_go_anywhere() {
    let r = router();
    for (sql, kind) in [
        ("BEGIN", Kind::Control(Control::Begin)),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Kind::Control(Control::Begin),
        ),
        ("COMMIT", Kind::Control(Control::Commit)),
        ("ROLLBACK", Kind::Control(Control::Rollback)),
        ("SAVEPOINT a", Kind::Control(Control::Savepoint)),
        ("SET statement_timeout = 1000", Kind::Setting(None)),
        (
            "SET SESSION search_path TO app, public",
            Kind::Setting(None),
        ),
        ("RESET ALL", Kind::Setting(None)),
        (
            "SET app.Tenant = 'x'",
            Kind::Setting(Some("app.tenant".into())),
        ),
        ("RESET app.tenant", Kind::Setting(Some("app.tenant".into()))),
        ("SET ROLE NONE", Kind::Setting(None)),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            Kind::Setting(None),
        ),
        ("DISCARD ALL", Kind::Setting(None)),
        ("DEALLOCATE ALL", Kind::Setting(None)),
        ("SET LOCAL statement_timeout = 1000", Kind::LocalSetting),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Kind::LocalSetting,
        ),
        ("SHOW server_version", Kind::Session),
        ("SELECT 1", Kind::Read),
        (
            "SELECT typname FROM pg_catalog.pg_type WHERE oid = $1",
            Kind::Read,
        ),
        ("SELECT * FROM pg_class", Kind::Read),
    ] {
        let got = both(&r, sql, &[Param::text("23")], None).unwrap();
        assert_eq!((got.target, got.kinds), (Target::Any, vec![kind]), "{sql}");
    }
    for sql in [
        "CREATE TABLE payments_2 (id bigint)",
        "TRUNCATE payments",
        "COPY payments FROM STDIN",
        "PREPARE TRANSACTION 'x'",
    ] {
        let got = target(&r, sql);
        assert!(
            matches!(got, Err(RouteError::Unsupported { .. })),
            "{sql}: {got:?}"
        );
    }
    let got = target(&r, "SELEC 1");
    assert!(matches!(&got, Err(RouteError::Syntax { .. })));
    assert_eq!(got.unwrap_err().sqlstate(), "42601");
}

#[test]
fn statements_of_one_text_must_share_a_target() {
    let r = router();
    let (a, b, _) = merchants(&r);
    let one = format!(
        "BEGIN; UPDATE payments SET status = 'x' WHERE merchant_id = {a}; INSERT INTO refunds (id, merchant_id) VALUES (1, {a}); COMMIT"
    );
    let route = both(&r, &one, &[], None).unwrap();
    assert_eq!(route.target, tx(shard(&r, a)));
    assert_eq!(route.kinds.len(), 4);
    let two = format!(
        "UPDATE payments SET status = 'x' WHERE merchant_id = {a}; UPDATE payments SET status = 'x' WHERE merchant_id = {b}"
    );
    assert!(matches!(
        target(&r, &two),
        Err(RouteError::Unsupported { .. })
    ));
}

#[test]
fn parse_results_are_cached_by_text() {
    let r = router();
    for m in ["1", "2", "3"] {
        r.route(
            "SELECT * FROM payments WHERE merchant_id = $1",
            &[Param::text(m)],
            None,
        )
        .unwrap();
    }
    assert_eq!(r.cache_stats(), (2, 1, 1));
}

#[test]
fn texts_differing_only_in_literals_share_one_parse() {
    let r = router();
    for m in 1..=20 {
        let sql = format!(
            "SELECT id, amount FROM payments WHERE merchant_id = {m} AND status = 'ok' ORDER BY id DESC LIMIT 10"
        );
        assert_eq!(r.route(&sql, &[], None).unwrap().target, tx(shard(&r, m)));
    }
    // The first text is parsed twice (as itself and as its shape, to
    // compare them); the other nineteen not at all.
    assert_eq!(r.cache_stats(), (19, 2, 2));
    for m in 1..=5 {
        let sql =
            format!("INSERT INTO payments (id, merchant_id, amount) VALUES ({m}, {m}, 12.50)");
        target(&r, &sql).unwrap();
        let sql = format!("UPDATE payments SET status = 'x' WHERE merchant_id = '{m}'");
        target(&r, &sql).unwrap();
    }
}

#[test]
fn a_shape_that_routes_otherwise_is_refused_and_its_texts_still_route() {
    let r = router();
    let (a, b, _) = merchants(&r);
    // INTERVAL $1 does not parse: each text is parsed as itself.
    for m in [a, b, a] {
        let sql = format!(
            "SELECT * FROM payments WHERE merchant_id = {m} AND created_at > now() - INTERVAL '1 day'"
        );
        assert_eq!(target(&r, &sql), Ok(tx(shard(&r, m))));
    }
    // `-$1` is no longer a key; the shape is refused, the text routes.
    for m in [a, b] {
        let sql = format!("DELETE FROM refunds WHERE merchant_id = -{m}");
        assert_eq!(target(&r, &sql), Ok(tx(shard(&r, -m))));
    }
    // A cast the key cannot take keeps the literal a key only in the text.
    let sql = format!("SELECT * FROM payments WHERE merchant_id = {a}::numeric");
    assert_eq!(target(&r, &sql), Ok(tx(shard(&r, a))));
    // SET with a placeholder does not parse.
    let set = both(&r, &format!("SET shardline.merchant_id = {b}"), &[], None).unwrap();
    assert_eq!(set.kinds, vec![Kind::SetKey(Some(ShardKey::Int(b)))]);
}

#[test]
fn statements_on_several_shards_and_errors_come_from_the_text_itself() {
    let r = router();
    let (a, b, _) = merchants(&r);
    // The merge needs the LIMIT and OFFSET values: only the text has them.
    for (x, y) in [(a, b), (b, a)] {
        let sql = format!(
            "SELECT id FROM payments WHERE merchant_id IN ({x}, {y}) ORDER BY id LIMIT 5 OFFSET 2"
        );
        match target(&r, &sql) {
            Ok(Target::Shards {
                merge: Some(MergeShape::Rows { limit, offset, .. }),
                ..
            }) => assert_eq!((limit, offset), (Some(Limit::Count(5)), 2)),
            other => panic!("{other:?}"),
        }
        let split = format!("INSERT INTO payments (id, merchant_id) VALUES (1, {x}), (2, {y})");
        assert!(matches!(target(&r, &split), Ok(Target::Split { .. })));
    }
    // A key that is not a number fails as the text fails, not otherwise.
    for bad in ["'nope'", "'1''2'", "99999999999999999999"] {
        let sql = format!("SELECT * FROM payments WHERE merchant_id = {bad}");
        assert!(matches!(target(&r, &sql), Err(RouteError::Key(_))), "{sql}");
        let sql = format!(
            "SELECT * FROM payments WHERE merchant_id = {bad} AND id IN (SELECT id FROM settlements)"
        );
        target(&r, &sql).unwrap_err();
    }
    let sql = format!("SELECT * FROM payments WHERE merchant_id = {a}");
    assert_eq!(target(&r, &sql), Ok(tx(shard(&r, a))));
}

#[test]
fn a_text_key_literal_is_read_as_postgresql_reads_it() {
    let toml = TOPOLOGY.replace(
        "shard_key = \"merchant_id\"",
        "shard_key = \"merchant_id\"\nshard_key_type = \"text\"",
    );
    let r = Router::new(&Topology::parse(&toml, Path::new("t.toml")).unwrap());
    let placement = placement(&r);
    let on = |k: &str| tx(placement.shard(&ShardKey::Text(k.into())));
    for (literal, key) in [
        ("'o''brien'", "o'brien"),
        ("'m-1'", "m-1"),
        ("007", "7"),
        ("'a--b'", "a--b"),
    ] {
        for _ in 0..2 {
            let sql =
                format!("SELECT * FROM payments WHERE merchant_id = {literal} -- it's {literal}");
            assert_eq!(target(&r, &sql), Ok(on(key)), "{sql}");
        }
    }
    let sql = "SELECT * FROM payments WHERE merchant_id = E'o\\'brien'";
    assert_eq!(target(&r, sql), Ok(on("o'brien")));
    let sql = "SELECT * FROM payments WHERE merchant_id = $$x'1$$ AND status = 'ok'";
    assert_eq!(target(&r, sql), Ok(on("x'1")));
}

#[test]
fn text_and_uuid_keys_follow_their_type() {
    let toml = TOPOLOGY.replace(
        "shard_key = \"merchant_id\"",
        "shard_key = \"merchant_id\"\nshard_key_type = \"uuid\"",
    );
    let topology = Topology::parse(&toml, Path::new("t.toml")).unwrap();
    let r = Router::new(&topology);
    let placement = placement(&r);
    let id = "6f1c1c52-9c1e-4d57-9d7a-0a3f2b2d1e11";
    let key = shardline_topology::ShardKeyType::Uuid
        .parse_key(id)
        .unwrap();
    let want = tx(placement.shard(&key));
    let sql = format!("SELECT * FROM payments WHERE merchant_id = '{id}'");
    assert_eq!(target(&r, &sql), Ok(want.clone()));
    let bytes = *uuid_bytes(&key);
    let got = both(
        &r,
        "SELECT * FROM payments WHERE merchant_id = $1",
        &[Param::binary(&bytes, 2950)],
        None,
    );
    assert_eq!(got.unwrap().target, want);
    assert!(matches!(
        target(&r, "SELECT * FROM payments WHERE merchant_id = 'nope'"),
        Err(RouteError::Key(_))
    ));
}

fn uuid_bytes(k: &ShardKey) -> &[u8; 16] {
    match k {
        ShardKey::Uuid(b) => b,
        other => panic!("{other:?}"),
    }
}

/// `$1::text::bigint` makes PostgreSQL type `$1` as text: an untyped
/// binary value of 8 bytes there is text, not a bigint.
#[test]
fn a_cast_parameter_is_read_as_the_cast_type() {
    let r = router();
    let sql = "SELECT * FROM payments WHERE merchant_id = $1::text::bigint";
    let got = both(&r, sql, &[Param::binary(b"12345678", 0)], None);
    assert_eq!(got.unwrap().target, tx(shard(&r, 12_345_678)));
}

#[test]
fn state_that_cannot_follow_the_client_pins_it() {
    use crate::Pin;
    let r = router();
    let pin = |sql: &str| r.route(sql, &[], None).map(|route| route.pin);
    assert_eq!(pin("LISTEN payments_changed"), Ok(Some(Pin::Listen)));
    assert_eq!(
        pin("SELECT pg_advisory_lock(42)"),
        Ok(Some(Pin::AdvisoryLock))
    );
    assert_eq!(
        pin("SELECT pg_catalog.PG_TRY_ADVISORY_LOCK_SHARED(1, 2)"),
        Ok(Some(Pin::AdvisoryLock))
    );
    // A lock taken in a subquery of a keyed read pins too.
    assert_eq!(
        pin("SELECT id FROM payments WHERE merchant_id = 7 AND (SELECT pg_advisory_lock(id))"),
        Ok(Some(Pin::AdvisoryLock))
    );
    assert_eq!(
        pin("SET SESSION AUTHORIZATION app_reader"),
        Ok(Some(Pin::SessionAuthorization))
    );
    // Transaction-scoped locks, SET ROLE and plain settings follow the client.
    for sql in [
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT pg_advisory_unlock(42)",
        "SET ROLE app_reader",
        "SET statement_timeout = '5s'",
        "SELECT * FROM payments WHERE merchant_id = 7",
        "NOTIFY payments_changed",
    ] {
        assert_eq!(pin(sql), Ok(None), "{sql}");
    }
    // The shape cache keeps the pin of texts that differ in literals.
    assert_eq!(
        pin("SELECT pg_advisory_lock(43)"),
        Ok(Some(Pin::AdvisoryLock))
    );
}

#[test]
fn the_parse_cache_is_bounded_by_bytes_as_well_as_entries() {
    let topology = Topology::parse(TOPOLOGY, Path::new("test.toml")).unwrap();
    let r = Router::with_cache(crate::Schema::new(&topology), 4096, 1 << 20);
    // Texts each their own shape (the IN lists differ in length) and each
    // estimated at over 100 KiB: far fewer than the entry bound, far more
    // than a MiB.
    for i in 0..40 {
        let keys: Vec<String> = (0..1000 + i).map(|k| k.to_string()).collect();
        let sql = format!(
            "SELECT id FROM payments WHERE merchant_id = 7 AND id IN ({})",
            keys.join(",")
        );
        r.route(&sql, &[], None).unwrap();
    }
    let (_, _, entries) = r.cache_stats();
    assert!(entries < 40, "{entries} entries kept");
}

#[test]
fn tables_are_found_by_the_names_sql_gives_them_and_a_partition_is_not_its_parent() {
    let text = TOPOLOGY
        .replace(
            r#"tables = ["payments", "payment_events", "refunds"]"#,
            r#"tables = ['"Payments"', 'billing."Ledger"', '"odd.name with space"']"#,
        )
        .replace(r#"tables = ["merchants"]"#, r#"tables = ["Merchants"]"#);
    let r = Router::new(&Topology::parse(&text, Path::new("test.toml")).unwrap());
    let s = shard(&r, 42);
    for sql in [
        r#"SELECT * FROM "Payments" WHERE merchant_id = 42"#,
        r#"SELECT * FROM public."Payments" p WHERE p.merchant_id = 42"#,
        r#"UPDATE billing."Ledger" SET x = 1 WHERE merchant_id = 42"#,
        r#"SELECT * FROM "odd.name with space" WHERE merchant_id = 42"#,
        r#"SELECT * FROM "Payments" JOIN billing."Ledger" l USING (merchant_id) WHERE "Payments".merchant_id = 42 AND l.merchant_id = 42"#,
    ] {
        assert_eq!(target(&r, sql), Ok(tx(s)), "{sql}");
    }
    // Unquoted names fold to lower case, as PostgreSQL folds them.
    assert_eq!(
        target(&r, "SELECT * FROM merchants"),
        Ok(Target::Database {
            context: "analytics".into()
        })
    );
    for sql in [
        "SELECT * FROM payments WHERE merchant_id = 42",
        "SELECT * FROM billing.ledger WHERE merchant_id = 42",
        // A partition of a listed table: statements name the table itself.
        r#"SELECT * FROM "Payments_2024_01" WHERE merchant_id = 42"#,
    ] {
        assert!(
            matches!(target(&r, sql), Err(RouteError::UnknownTable { .. })),
            "{sql}"
        );
    }
}
