//! The Rust placement must agree with PostgreSQL itself: with the documented
//! SQL bucket expression, and with PostgreSQL's own hash partitioning
//! (`satisfies_hash_partition` on a real `PARTITION BY HASH` table).

use rand::{Rng, SeedableRng};
use shardline_testkit::PgServer;
use shardline_topology::{ConnString, Placement, ShardKey, ShardKeyType};

async fn client(server: &PgServer) -> tokio_postgres::Client {
    ConnString::parse(&server.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Asks PostgreSQL for the bucket of each key (as text, cast to `sql_type`)
/// both ways and compares with Rust's answer.
async fn check(client: &tokio_postgres::Client, placement: &Placement, keys: &[String]) {
    let t = placement.key_type().sql_name();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS hashed; CREATE TABLE hashed (k {t}) PARTITION BY HASH (k);"
        ))
        .await
        .unwrap();
    let sql = format!(
        "SELECT k::text, {bucket}, satisfies_hash_partition('hashed'::regclass, {n}, ({bucket})::int4, k)
           FROM unnest($1::text[]) AS input(txt), LATERAL (SELECT txt::{t} AS k) AS typed",
        bucket = placement.bucket_sql("k"),
        n = placement.buckets(),
    );
    let rows = client.query(&sql, &[&keys]).await.unwrap();
    assert_eq!(rows.len(), keys.len());
    for (row, text) in rows.iter().zip(keys) {
        let key = placement.key_type().parse_key(text).unwrap();
        let pg_bucket: i64 = row.get(1);
        let satisfied: bool = row.get(2);
        assert_eq!(pg_bucket as u32, placement.bucket(&key), "{t} key {text}");
        assert!(
            satisfied,
            "{t} key {text}: PostgreSQL's hash partitioning disagrees"
        );
    }
}

#[tokio::test]
async fn bigint_placement_agrees_with_postgres_on_100k_keys() {
    let server = PgServer::start().unwrap();
    let client = client(&server).await;
    let placement = Placement::even(ShardKeyType::Bigint, 1024, 4).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut keys: Vec<String> = [
        0,
        1,
        -1,
        2,
        -2,
        i64::MIN,
        i64::MAX,
        i64::MIN + 1,
        i64::MAX - 1,
        u32::MAX as i64,
        -(u32::MAX as i64),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect();
    keys.extend((-5_000..5_000).map(|v: i64| v.to_string()));
    keys.extend((0..90_000).map(|_| rng.random::<i64>().to_string()));
    check(&client, &placement, &keys).await;
}

#[tokio::test]
async fn narrow_integer_text_and_uuid_placement_agree_with_postgres() {
    let server = PgServer::start().unwrap();
    let client = client(&server).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);

    let ints: Vec<String> = [i32::MIN, -1, 0, 1, i32::MAX]
        .into_iter()
        .chain((0..10_000).map(|_| rng.random::<i32>()))
        .map(|v| v.to_string())
        .collect();
    check(
        &client,
        &Placement::even(ShardKeyType::Integer, 1024, 4).unwrap(),
        &ints,
    )
    .await;

    let smalls: Vec<String> = (i16::MIN..=i16::MAX)
        .step_by(7)
        .map(|v| v.to_string())
        .collect();
    check(
        &client,
        &Placement::even(ShardKeyType::Smallint, 256, 3).unwrap(),
        &smalls,
    )
    .await;

    let mut texts: Vec<String> = vec![
        "".into(),
        "a".into(),
        "merchant-42".into(),
        "Zürich café ☕".into(),
        "x".repeat(1000),
    ];
    texts.extend((0..10_000).map(|i| {
        let len = rng.random_range(0..40);
        let s: String = (0..len).map(|_| rng.random_range('a'..='z')).collect();
        format!("{s}{i}")
    }));
    check(
        &client,
        &Placement::even(ShardKeyType::Text, 1024, 8).unwrap(),
        &texts,
    )
    .await;

    let uuids: Vec<String> = (0..10_000)
        .map(|_| uuid::Uuid::from_bytes(rng.random::<[u8; 16]>()).to_string())
        .collect();
    check(
        &client,
        &Placement::even(ShardKeyType::Uuid, 1024, 4).unwrap(),
        &uuids,
    )
    .await;
}

#[test]
fn parsed_keys_print_back() {
    let key = ShardKeyType::Uuid
        .parse_key("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")
        .unwrap();
    assert_eq!(key.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(
        ShardKeyType::Bigint.parse_key("-42").unwrap(),
        ShardKey::Int(-42)
    );
}
