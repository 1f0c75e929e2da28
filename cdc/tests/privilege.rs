//! A target role that may not run as an apply worker (no
//! session_replication_role, no replication origins) is refused before
//! anything streams, naming what it lacks and the grant that fixes it.

use std::path::Path;

use shardline_cdc::run::CdcError;
use shardline_topology::Topology;

use crate::stream::{fleet, spawn_cdc, wait_caught_up, wait_streaming};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_role_without_the_apply_privileges_is_refused_before_streaming() {
    let f = fleet();
    f.shards[0]
        .psql(
            "postgres",
            "CREATE ROLE applier LOGIN; GRANT CREATE ON DATABASE postgres TO applier;
             GRANT ALL ON payments TO applier",
        )
        .unwrap();
    let as_applier = f.shards[0].url("postgres").replace("postgres@", "applier@");
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n",
        f.source.url("postgres"),
        as_applier,
        f.shards[1].url("postgres"),
        f.settlements.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let (_stop, cdc) = spawn_cdc(&topology, &crate::divergence::options());
    let e = cdc.await.unwrap().unwrap_err();
    assert!(
        matches!(e, CdcError::Privileges(ref m) if m.len() == 2),
        "{e}"
    );
    let message = e.to_string();
    for part in [
        "role applier may not set session_replication_role = replica",
        "GRANT SET ON PARAMETER session_replication_role TO \"applier\";",
        "role applier may not use replication origins",
        "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_session_setup(text) TO \"applier\";",
        &format!("target applier@127.0.0.1:{}/postgres", f.shards[0].port()),
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    assert_eq!(
        f.source
            .psql("postgres", "SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            .trim(),
        "0",
        "nothing was created on the source"
    );

    // The grants the message names are enough.
    f.shards[0]
        .psql(
            "postgres",
            "GRANT SET ON PARAMETER session_replication_role TO applier;
             GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_session_setup(text) TO applier",
        )
        .unwrap();
    let (stop, cdc) = spawn_cdc(&topology, &crate::divergence::options());
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            "INSERT INTO payments SELECT m, 1, 1, 'n' FROM generate_series(1, 20) m",
        )
        .unwrap();
    wait_caught_up(&f.source, "shardline").await;
    stop.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    crate::stream::assert_converged(&f);
    assert_eq!(
        f.shards[0]
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'shardline.forward.shardline.applier@%'"
            )
            .unwrap()
            .trim(),
        "1"
    );
}
