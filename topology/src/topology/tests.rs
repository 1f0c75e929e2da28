use super::*;

const GOOD: &str = r#"
[source]
url = "postgres://postgres:topsecret@127.0.0.1:54320/monolith"

[contexts.transactions]
tables = ["payments", "refunds"]
shard_key = "merchant_id"
shards = [
  "postgres://postgres@127.0.0.1:54321/tx",
  "host=127.0.0.1 port=54322 user=postgres dbname=tx",
]
reference_tables = ["currencies"]

[contexts.analytics]
url = "postgres://postgres@127.0.0.1:54326/analytics"
tables = ["merchants"]

[[read_models]]
name = "merchant_daily_volume"
from = "payments"
where = "status = 'captured'"
group_by = ["merchant_id", "currency"]
aggregates = ["count(*) AS payments"]

[router]
listen = "127.0.0.1:7432"
[[router.users]]
name = "app"
password = "app-password"
"#;

fn parse(text: &str) -> Result<Topology, TopologyError> {
    Topology::parse(text, Path::new("shardline.toml"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(TopologyError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn a_good_topology_loads() {
    let t = parse(GOOD).unwrap();
    let tx = t.context("transactions").unwrap();
    assert_eq!(tx.databases().len(), 2);
    assert_eq!(
        t.context_of_table(&TableName::parse("currencies").unwrap())
            .unwrap()
            .name,
        "transactions"
    );
    assert_eq!(
        t.context_of_table(&TableName::parse("merchants").unwrap())
            .unwrap()
            .name,
        "analytics"
    );
    assert_eq!(
        t.read_models[0].filter.as_deref(),
        Some("status = 'captured'")
    );
    assert_eq!(t.read_models[0].context, "analytics");
    assert_eq!(t.router.listen.port(), 7432);
    assert!(!format!("{t:?}").contains("topsecret"));
    assert!(!format!("{t:?}").contains("app-password"));
}

#[test]
fn every_problem_is_reported_with_key_and_line() {
    let text = GOOD
        .replace(
            "\"postgres://postgres@127.0.0.1:54321/tx\"",
            "\"host=127.0.0.1 port=54322 user=postgres dbname=tx\"",
        )
        .replace(
            "tables = [\"merchants\"]",
            "tables = [\"merchants\", \"payments\"]",
        )
        .replace("name = \"app\"", "name = \"\"");
    let found = problems(&text);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert!(
        keys.contains(&"contexts.transactions.shards[1]"),
        "{found:?}"
    );
    assert!(keys.contains(&"router.users[0].name"), "{found:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("contexts.") && k.contains("tables")),
        "{found:?}"
    );
    let dup = found
        .iter()
        .find(|p| p.key == "contexts.transactions.shards[1]")
        .unwrap();
    assert_eq!(dup.line, Some(10), "{dup:?}");
    assert!(dup.message.contains("same database"), "{dup:?}");
    let user = found
        .iter()
        .find(|p| p.key == "router.users[0].name")
        .unwrap();
    assert_eq!(user.line, Some(28), "{user:?}");
}

#[test]
fn empty_shard_list_and_missing_key_are_errors() {
    let text = GOOD.replace("shard_key = \"merchant_id\"\n", "").replace(
        "shards = [\n  \"postgres://postgres@127.0.0.1:54321/tx\",\n  \"host=127.0.0.1 port=54322 user=postgres dbname=tx\",\n]",
        "shards = []",
    );
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.key == "contexts.transactions.shards" && p.message.contains("empty")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.key == "contexts.transactions.shard_key"),
        "{found:?}"
    );
}

#[test]
fn unknown_keys_and_bad_toml_name_the_line() {
    let err = parse(&GOOD.replace("reference_tables", "refrence_tables")).unwrap_err();
    match &err {
        TopologyError::Syntax { line, message, .. } => {
            assert_eq!(*line, 12, "{err}");
            assert!(message.contains("refrence_tables"), "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let err = parse("[source]\nurl = \"x\n").unwrap_err();
    assert!(
        matches!(err, TopologyError::Syntax { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn bucket_map_gaps_are_errors() {
    let text = GOOD.replace(
        "reference_tables",
        "bucket_ranges = [\"0-500\", \"600-1023\"]\nreference_tables",
    );
    let found = problems(&text);
    assert!(
        found.iter().any(
            |p| p.key == "contexts.transactions.bucket_ranges" && p.message.contains("501-599")
        ),
        "{found:?}"
    );
}

#[test]
fn passwords_never_reach_messages() {
    let text = GOOD.replace("127.0.0.1:54320/monolith", "127.0.0.1:notaport/monolith");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("source.url"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
}

#[test]
fn read_model_query_groups_by_position_and_names_come_from_aliases() {
    let rm = ReadModel {
        name: "daily".into(),
        from: TableName::parse("payments").unwrap(),
        filter: Some("status = 'captured'".into()),
        group_by: vec![
            "merchant_id".into(),
            "date_trunc('day', created_at) AS day".into(),
        ],
        aggregates: vec!["count(*) AS n".into()],
        context: "analytics".into(),
    };
    assert_eq!(
        rm.query(),
        "SELECT merchant_id, date_trunc('day', created_at) AS day, count(*) AS n FROM \"public\".\"payments\" WHERE status = 'captured' GROUP BY 1, 2"
    );
    assert_eq!(rm.group_columns(), ["merchant_id", "day"]);
    assert_eq!(output_name("sum(amount) as volume"), "volume");
}

#[test]
fn apply_interval_defaults_to_continuous_and_refuses_nonsense() {
    let t = parse(GOOD).unwrap();
    assert_eq!(t.context("analytics").unwrap().apply_interval, None);
    let with = GOOD.replace(
        "tables = [\"merchants\"]",
        "tables = [\"merchants\"]\napply_interval = \"5m\"",
    );
    assert_eq!(
        parse(&with)
            .unwrap()
            .context("analytics")
            .unwrap()
            .apply_interval,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(parse_interval("continuous"), Ok(None));
    assert_eq!(
        parse_interval("250ms"),
        Ok(Some(std::time::Duration::from_millis(250)))
    );
    assert_eq!(
        parse_interval("2h"),
        Ok(Some(std::time::Duration::from_secs(7200)))
    );
    for bad in ["0s", "5", "5 minutes", "-1s", "25h", ""] {
        assert!(parse_interval(bad).is_err(), "{bad}");
    }
    let broken = GOOD.replace(
        "tables = [\"merchants\"]",
        "tables = [\"merchants\"]\napply_interval = \"soon\"",
    );
    let p = problems(&broken);
    let p = p
        .iter()
        .find(|p| p.key == "contexts.analytics.apply_interval")
        .unwrap();
    assert_eq!(p.line, Some(17));
    assert!(p.message.contains("\"soon\" is not an interval"), "{p:?}");
}

#[test]
fn router_tls_defaults_to_allow_with_a_certificate_and_off_without() {
    assert_eq!(parse(GOOD).unwrap().router.tls, None);
    let with = |extra: &str| {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7432\"\n",
            &format!("listen = \"127.0.0.1:7432\"\n{extra}"),
        );
        Topology::parse(&text, Path::new("/etc/shardline/shardline.toml"))
    };
    let files = "tls_cert = \"router.crt\"\ntls_key = \"/keys/router.key\"\n";
    let allow = with(files).unwrap().router.tls.unwrap();
    assert_eq!(
        allow,
        RouterTls {
            // Relative to the topology file; absolute as written.
            cert: PathBuf::from("/etc/shardline/router.crt"),
            key: PathBuf::from("/keys/router.key"),
            required: false,
        }
    );
    let require = with(&format!("{files}tls = \"require\"\n")).unwrap();
    assert!(require.router.tls.unwrap().required);
    let off = with(&format!("{files}tls = \"off\"\n")).unwrap();
    assert_eq!(off.router.tls, None);
    assert_eq!(with("tls = \"off\"\n").unwrap().router.tls, None);
}

#[test]
fn router_tls_without_its_files_or_with_an_unknown_mode_is_refused() {
    let problem = |extra: &str| {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7432\"\n",
            &format!("listen = \"127.0.0.1:7432\"\n{extra}"),
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    };
    let p = problem("tls = \"require\"\n");
    assert_eq!((p.key.as_str(), p.line), ("router.tls", Some(27)), "{p:?}");
    assert!(
        p.message.contains("\"require\" needs a certificate") && p.message.contains("tls_cert"),
        "{p:?}"
    );
    let p = problem("tls_cert = \"router.crt\"\n");
    assert_eq!(p.key, "router.tls_key", "{p:?}");
    let p = problem("tls_key = \"router.key\"\n");
    assert_eq!(p.key, "router.tls_cert", "{p:?}");
    let p = problem("tls = \"prefer\"\n");
    assert_eq!(p.key, "router.tls", "{p:?}");
    assert!(p.message.contains("\"prefer\" is not a TLS mode"), "{p:?}");
    let p = problem("tls_cert = \" \"\ntls_key = \"k.pem\"\n");
    assert_eq!(p.key, "router.tls_cert", "{p:?}");
    assert!(p.message.contains("empty path"), "{p:?}");
}

#[test]
fn router_pooling_keys_default_and_read_as_written() {
    let r = parse(GOOD).unwrap().router;
    assert_eq!(r.pool_mode, PoolMode::Transaction);
    assert_eq!(r.pool_size, DEFAULT_POOL_SIZE);
    assert_eq!(r.limits, RouterLimits::default());
    assert_eq!(r.limits.max_client_conn, 10_000);
    assert_eq!(r.limits.pool_timeout, std::time::Duration::from_secs(5));
    let text = GOOD.replace(
        "listen = \"127.0.0.1:7432\"\n",
        "listen = \"127.0.0.1:7432\"\npool_mode = \"session\"\npool_size = 10\nmax_client_conn = 2000\n\
         pool_timeout = \"250ms\"\nlogin_timeout = 3\nidle_in_transaction_timeout = \"off\"\n\
         idle_client_timeout = \"10m\"\nmax_message_bytes = \"1MB\"\nmax_client_buffer_bytes = 4194304\n\
         backend_read_timeout = \"2s\"\n",
    );
    let r = parse(&text).unwrap().router;
    assert_eq!((r.pool_mode, r.pool_size), (PoolMode::Session, 10));
    let secs = std::time::Duration::from_secs;
    assert_eq!(
        r.limits,
        RouterLimits {
            max_client_conn: 2000,
            pool_timeout: std::time::Duration::from_millis(250),
            login_timeout: secs(3),
            idle_in_transaction_timeout: None,
            idle_client_timeout: Some(secs(600)),
            max_message_bytes: 1 << 20,
            max_client_buffer_bytes: 4 << 20,
            backend_read_timeout: secs(2),
        }
    );
}

#[test]
fn router_pooling_mistakes_name_their_key() {
    let problem = |extra: &str| {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7432\"\n",
            &format!("listen = \"127.0.0.1:7432\"\n{extra}"),
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    };
    for (extra, key, says) in [
        (
            "pool_mode = \"statement\"\n",
            "router.pool_mode",
            "not a pool mode",
        ),
        ("pool_size = 0\n", "router.pool_size", "at least 1"),
        (
            "max_client_conn = -5\n",
            "router.max_client_conn",
            "at least 1",
        ),
        ("pool_timeout = \"0s\"\n", "router.pool_timeout", "zero"),
        (
            "login_timeout = \"off\"\n",
            "router.login_timeout",
            "not a duration",
        ),
        (
            "idle_in_transaction_timeout = \"soon\"\n",
            "router.idle_in_transaction_timeout",
            "\"off\"",
        ),
        (
            "max_message_bytes = \"2GB\"\n",
            "router.max_message_bytes",
            "outside 8kB",
        ),
        (
            "max_message_bytes = \"64 mb\"\n",
            "router.max_message_bytes",
            "not a size",
        ),
        (
            "max_message_bytes = \"8MB\"\nmax_client_buffer_bytes = \"1MB\"\n",
            "router.max_client_buffer_bytes",
            "less than max_message_bytes",
        ),
    ] {
        let p = problem(extra);
        assert_eq!(p.key, key, "{extra}: {p:?}");
        assert!(p.message.contains(says), "{extra}: {p:?}");
        // The key's own line: the last one added after `listen`.
        assert_eq!(p.line, Some(26 + extra.lines().count()), "{extra}: {p:?}");
    }
}

#[test]
fn ddl_capture_is_the_default_and_stop_turns_it_off() {
    assert_eq!(parse(GOOD).unwrap().ddl, DdlMode::Capture);
    let stop = GOOD.replace(
        "[source]\nurl = \"postgres://postgres:topsecret@127.0.0.1:54320/monolith\"",
        "[source]\nurl = \"postgres://postgres:topsecret@127.0.0.1:54320/monolith\"\nddl = \"stop\"",
    );
    assert_eq!(parse(&stop).unwrap().ddl, DdlMode::Stop);
    let bad = stop.replace("ddl = \"stop\"", "ddl = \"replicate\"");
    let p = problems(&bad);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "source.ddl");
    assert!(p[0].message.contains("\"capture\""), "{}", p[0].message);
}

#[test]
fn table_names_are_read_as_sql_reads_them() {
    let text = GOOD.replace(
        "tables = [\"payments\", \"refunds\"]",
        r#"tables = ['"Payments"', 'billing."Ledger"', '"odd.name with space"', "Refunds"]"#,
    );
    let t = parse(&text).unwrap();
    let tx = t.context("transactions").unwrap();
    assert_eq!(
        tx.tables,
        [
            TableName::new("public", "Payments"),
            TableName::new("billing", "Ledger"),
            TableName::new("public", "odd.name with space"),
            TableName::new("public", "refunds"),
        ]
    );
    assert_eq!(
        t.context_of_table(&TableName::parse("REFUNDS").unwrap())
            .unwrap()
            .name,
        "transactions"
    );
    assert!(t
        .context_of_table(&TableName::parse("payments").unwrap())
        .is_none());
}

#[test]
fn bad_and_repeated_table_names_name_their_key() {
    let text = GOOD.replace(
        "tables = [\"payments\", \"refunds\"]",
        r#"tables = ["odd name", "Refunds", "public.refunds"]"#,
    );
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.key == "contexts.transactions.tables[0]" && p.message.contains("quote it")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.key == "contexts.transactions.tables[2]"
                && p.message.contains("public.refunds is already listed")),
        "{found:?}"
    );
}

#[test]
fn cdc_grouping_defaults_and_refuses_nonsense() {
    let t = parse(GOOD).unwrap();
    assert_eq!(t.cdc.group_wait, DEFAULT_GROUP_WAIT);
    assert_eq!(t.cdc.group_changes, DEFAULT_GROUP_CHANGES);
    let set = format!("{GOOD}\n[cdc]\ngroup_wait = \"5ms\"\ngroup_changes = 500\n");
    let t = parse(&set).unwrap();
    assert_eq!(t.cdc.group_wait, std::time::Duration::from_millis(5));
    assert_eq!(t.cdc.group_changes, 500);
    assert_eq!(parse_group_wait("0ms"), Ok(std::time::Duration::ZERO));
    assert_eq!(
        parse_group_wait("2s"),
        Ok(std::time::Duration::from_secs(2))
    );
    for bad in ["11s", "5", "5m", "-1ms", "soon", ""] {
        assert!(parse_group_wait(bad).is_err(), "{bad}");
    }
    let broken = format!("{GOOD}\n[cdc]\ngroup_wait = \"1m\"\ngroup_changes = 0\n");
    let p = problems(&broken);
    let wait = p.iter().find(|p| p.key == "cdc.group_wait").unwrap();
    assert!(wait.message.contains("\"1m\" is not a wait"), "{wait:?}");
    let size = p.iter().find(|p| p.key == "cdc.group_changes").unwrap();
    assert!(size.message.contains("at least 1"), "{size:?}");
}
