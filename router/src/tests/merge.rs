//! Scatter SELECTs: which ones the router merges, with which shape, and
//! which it refuses rather than answer wrongly.

use super::*;

#[test]
fn scatter_selects_are_merged_only_when_provably_correct() {
    let r = router();
    let all = |merge| {
        Ok(Target::Shards {
            context: "transactions".into(),
            shards: vec![0, 1, 2, 3],
            merge: Some(merge),
        })
    };
    let rows = |order: Vec<SortKey>, limit| MergeShape::Rows {
        order,
        limit,
        offset: 0,
        shard_sql: None,
    };
    let asc = |c: SortColumn| SortKey {
        column: c,
        descending: false,
        nulls_first: false,
        bytewise: false,
    };
    let cases = [
        ("SELECT * FROM payments WHERE status = 'failed'", all(rows(vec![], None))),
        (
            "SELECT id, created_at FROM payments ORDER BY created_at DESC LIMIT 10",
            all(rows(
                vec![SortKey {
                    column: SortColumn::Name("created_at".into()),
                    descending: true,
                    nulls_first: true,
                    bytewise: false,
                }],
                Some(Limit::Count(10)),
            )),
        ),
        (
            "SELECT p.id, p.amount FROM payments p ORDER BY p.amount, 1 NULLS FIRST LIMIT $1",
            all(rows(
                vec![
                    asc(SortColumn::Name("amount".into())),
                    SortKey {
                        column: SortColumn::Position(0),
                        descending: false,
                        nulls_first: true,
                        bytewise: false,
                    },
                ],
                Some(Limit::Param(0)),
            )),
        ),
        (
            "SELECT count(*), sum(amount), min(created_at), max(amount) FILTER (WHERE amount > 0) FROM payments",
            all(MergeShape::Aggregate {
                outputs: [
                    Aggregate::Count,
                    Aggregate::Sum,
                    Aggregate::Min,
                    Aggregate::Max,
                ]
                .map(Output::Aggregate)
                .to_vec(),
                order: vec![],
                shard_sql: None,
            }),
        ),
        (
            "SELECT p.status, sum(amount), count(*) FROM payments p GROUP BY status ORDER BY status COLLATE \"C\" DESC",
            all(MergeShape::Aggregate {
                shard_sql: None,
                outputs: vec![
                    Output::Group,
                    Output::Aggregate(Aggregate::Sum),
                    Output::Aggregate(Aggregate::Count),
                ],
                order: vec![SortKey {
                    column: SortColumn::Name("status".into()),
                    descending: true,
                    nulls_first: true,
                    bytewise: true,
                }],
            }),
        ),
    ];
    for (sql, want) in cases {
        let params = [Param::text("5")];
        let got = both(&r, sql, &params, None).map(|r| r.target);
        assert_eq!(got, want, "{sql}");
    }
    let paged = both(
        &r,
        "SELECT id FROM payments ORDER BY id LIMIT 5 OFFSET 10",
        &[],
        None,
    )
    .map(|r| r.target);
    assert_eq!(
        paged,
        all(MergeShape::Rows {
            order: vec![asc(SortColumn::Name("id".into()))],
            limit: Some(Limit::Count(5)),
            offset: 10,
            shard_sql: Some("SELECT id FROM payments ORDER BY id LIMIT 15".into()),
        })
    );
    // avg: the shards run sum and count in its place.
    let avg = both(
        &r,
        "SELECT status, avg(amount) FILTER (WHERE amount > 0) AS a FROM payments GROUP BY status",
        &[],
        None,
    )
    .map(|r| r.target);
    assert_eq!(
        avg,
        all(MergeShape::Aggregate {
            outputs: vec![Output::Group, Output::Aggregate(Aggregate::Avg)],
            order: vec![],
            shard_sql: Some(
                "SELECT status, sum(amount) FILTER (WHERE amount > 0) AS a, count(amount) FILTER (WHERE amount > 0) AS count FROM payments GROUP BY status"
                    .into()
            ),
        })
    );
    for (sql, why) in [
        ("SELECT stddev(amount) FROM payments", "stddev()"),
        (
            "SELECT count(DISTINCT merchant_id) FROM payments",
            "DISTINCT",
        ),
        ("SELECT DISTINCT status FROM payments", "DISTINCT"),
        (
            "SELECT status, count(*) FROM payments GROUP BY status HAVING count(*) > 1",
            "HAVING",
        ),
        (
            "SELECT status, count(*) FROM payments GROUP BY status LIMIT 3",
            "LIMIT or OFFSET over groups",
        ),
        (
            "SELECT count(*) FROM payments GROUP BY status",
            "GROUP BY status which is not an output column",
        ),
        (
            "SELECT status, amount, count(*) FROM payments GROUP BY status",
            "amount is neither grouped nor aggregated",
        ),
        (
            "SELECT status, variance(amount) FROM payments GROUP BY status",
            "variance()",
        ),
        (
            "SELECT status FROM payments ORDER BY status COLLATE \"de-x-icu\"",
            "COLLATE \"de-x-icu\" is not merged",
        ),
        (
            "SELECT id, rank() OVER (ORDER BY amount) FROM payments",
            "window",
        ),
        ("SELECT * FROM payments ORDER BY amount * 2", "expression"),
        (
            "SELECT id FROM payments ORDER BY p.created_at",
            "not an output column",
        ),
        (
            "SELECT * FROM payments LIMIT $1 OFFSET 10",
            "OFFSET with LIMIT as a bind",
        ),
        (
            "SELECT * FROM payments OFFSET $1",
            "OFFSET as a bind parameter",
        ),
        (
            "SELECT id FROM payments UNION SELECT id FROM refunds",
            "UNION",
        ),
        (
            "SELECT sum(amount) / 100 FROM payments",
            "not an aggregate call",
        ),
        (
            "SELECT count(*) FROM payments HAVING count(*) > 1",
            "HAVING",
        ),
    ] {
        let got = target(&r, sql);
        assert!(
            matches!(&got, Err(RouteError::Unmergeable { reason, .. }) if reason.contains(why)),
            "{sql}: {got:?}"
        );
    }
}
