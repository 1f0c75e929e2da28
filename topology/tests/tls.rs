//! TLS and the password rule against real servers started with `ssl = on`
//! (and without), with certificates the test makes: every sslmode, host
//! names under verify-full, client certificates, passwords over plain TCP,
//! and the same rules on the raw login (the router's) and on replication
//! sessions (the relay).

use std::path::Path;

use shardline_testkit::{PgServer, TestCerts, CLIENT_CERT_USER};
use shardline_topology::{AuthRefusal, ConnString, ConnectError, SslMode, TlsFailure};

/// Who may connect how on the TLS server: one user per rule under test.
const HBA_WITH_TLS: &str = "\
hostssl all certuser 127.0.0.1/32 trust clientcert=verify-full
hostssl all tlsonly 127.0.0.1/32 trust
hostnossl all plainonly 127.0.0.1/32 trust
host all md5user 127.0.0.1/32 md5
host all pwuser 127.0.0.1/32 password
host all scramuser 127.0.0.1/32 scram-sha-256
host all postgres 127.0.0.1/32 trust
host replication pwuser 127.0.0.1/32 password
hostssl replication postgres 127.0.0.1/32 trust
";

const HBA_WITHOUT_TLS: &str = "\
host all md5user 127.0.0.1/32 md5
host all pwuser 127.0.0.1/32 password
host all scramuser 127.0.0.1/32 scram-sha-256
host all postgres 127.0.0.1/32 trust
host replication pwuser 127.0.0.1/32 password
";

const ROLES: &str = "\
CREATE ROLE certuser LOGIN; CREATE ROLE tlsonly LOGIN; CREATE ROLE plainonly LOGIN;
SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5pw';
SET password_encryption = 'scram-sha-256';
CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'pw'; CREATE ROLE scramuser LOGIN PASSWORD 'scrampw';";

struct Fixture {
    certs: TestCerts,
    _dir: tempfile::TempDir,
    server: PgServer,
}

fn fixture(tls: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let mut builder = PgServer::builder();
    builder = if tls {
        builder.tls(&certs).hba(HBA_WITH_TLS)
    } else {
        builder.hba(HBA_WITHOUT_TLS)
    };
    let server = builder.start().unwrap();
    server.psql("postgres", ROLES).unwrap();
    Fixture {
        certs,
        _dir: dir,
        server,
    }
}

impl Fixture {
    /// A string for `user` on 127.0.0.1 with `extra` parameters; `{ca}`,
    /// `{other_ca}`, `{cert}` and `{key}` stand for the files.
    fn conn(&self, user: &str, extra: &str) -> Result<ConnString, String> {
        let p = |path: &Path| path.display().to_string();
        let extra = extra
            .replace("{ca}", &p(&self.certs.ca))
            .replace("{other_ca}", &p(&self.certs.other_ca))
            .replace("{cert}", &p(&self.certs.client_cert))
            .replace("{key}", &p(&self.certs.client_key));
        let s = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres {extra}",
            self.server.port()
        );
        // No HOME: no ~/.postgresql defaults, no ~/.pgpass.
        ConnString::parse_with(&s, &|_| None).map_err(|e| e.to_string())
    }

    async fn connect(&self, user: &str, extra: &str) -> Result<bool, ConnectError> {
        let client = self.conn(user, extra).unwrap().connect().await?;
        let row = client
            .query_one(
                "SELECT ssl, current_user::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(1), user);
        Ok(row.get(0))
    }
}

#[tokio::test]
async fn every_sslmode_against_a_server_with_tls() {
    let f = fixture(true);
    for (mode, encrypted) in [
        ("disable", false),
        ("allow", false),
        ("prefer", true),
        ("require", true),
        ("verify-ca sslrootcert={ca}", true),
        ("verify-full sslrootcert={ca}", true),
    ] {
        let got = f.connect("postgres", &format!("sslmode={mode}")).await;
        assert_eq!(got.unwrap(), encrypted, "sslmode={mode}");
    }
    // A root certificate makes require check the chain, as in libpq.
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = f
            .connect(
                "postgres",
                &format!("sslmode={mode} sslrootcert={{other_ca}}"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::Tls {
                    kind: TlsFailure::UnknownIssuer,
                    ..
                }
            ),
            "{mode}: {e}"
        );
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        assert!(e.hint().contains("sslrootcert"), "{}", e.hint());
    }
}

#[tokio::test]
async fn every_sslmode_against_a_server_without_tls() {
    let f = fixture(false);
    for mode in ["disable", "allow", "prefer"] {
        let got = f.connect("postgres", &format!("sslmode={mode}")).await;
        assert!(!got.unwrap(), "sslmode={mode}");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = f
            .connect("postgres", &format!("sslmode={mode} sslrootcert={{ca}}"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ConnectError::TlsUnsupported { sslmode, .. } if sslmode == mode),
            "{mode}: {e}"
        );
        assert!(
            e.to_string().ends_with(&format!(
                "does not support SSL, and sslmode={mode} requires it"
            )),
            "{e}"
        );
        assert!(e.hint().contains("ssl = on"), "{}", e.hint());
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name() {
    let f = fixture(true);
    let port = f.server.port();
    let ca = f.certs.ca.display().to_string();
    // The certificate names localhost (DNS) and 127.0.0.1 (IP).
    for host in ["localhost", "127.0.0.1"] {
        let c = ConnString::parse_with(
            &format!(
                "postgres://postgres@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
            ),
            &|_| None,
        )
        .unwrap();
        c.connect().await.unwrap();
    }
    // The right server under a name its certificate does not carry.
    let wrong = |mode: &str| {
        ConnString::parse_with(
            &format!("host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres sslmode={mode} sslrootcert={ca}"),
            &|_| None,
        )
        .unwrap()
    };
    let e = wrong("verify-full").connect().await.unwrap_err();
    assert!(
        matches!(&e, ConnectError::Tls { kind: TlsFailure::WrongName, host, .. } if host == "db.invalid"),
        "{e}"
    );
    assert!(e.to_string().contains("\"db.invalid\""), "{e}");
    assert!(e.hint().contains("verify-ca"), "{}", e.hint());
    // verify-ca checks the CA only.
    wrong("verify-ca").connect().await.unwrap();
}

#[tokio::test]
async fn allow_and_prefer_try_the_other_way_when_the_server_refuses() {
    let f = fixture(true);
    // hostssl only
    let e = f.connect("tlsonly", "sslmode=disable").await.unwrap_err();
    assert!(
        matches!(&e, ConnectError::Authentication { code, .. } if code == "28000"),
        "{e}"
    );
    assert!(e.hint().contains("hostssl"), "{}", e.hint());
    assert!(f.connect("tlsonly", "sslmode=allow").await.unwrap());
    assert!(f.connect("tlsonly", "sslmode=prefer").await.unwrap());
    // hostnossl only
    assert!(!f.connect("plainonly", "sslmode=prefer").await.unwrap());
    assert!(!f.connect("plainonly", "sslmode=allow").await.unwrap());
    let e = f.connect("plainonly", "sslmode=require").await.unwrap_err();
    assert!(matches!(e, ConnectError::Authentication { .. }), "{e}");
}

#[tokio::test]
async fn a_client_certificate_logs_in_where_pg_hba_wants_one() {
    let f = fixture(true);
    let with_cert = "sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}";
    assert!(f.connect(CLIENT_CERT_USER, with_cert).await.unwrap());
    let e = f
        .connect(CLIENT_CERT_USER, "sslmode=verify-full sslrootcert={ca}")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectError::Authentication { code, cause, .. } if code == "28000" && cause.contains("certificate")),
        "{e}"
    );
    assert!(e.hint().contains("sslcert"), "{}", e.hint());
    // A key others may read is refused before connecting, as libpq does.
    let open_key = f._dir.path().join("open.key");
    std::fs::copy(&f.certs.client_key, &open_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = f
        .conn(
            CLIENT_CERT_USER,
            &format!(
                "sslmode=require sslcert={{cert}} sslkey={}",
                open_key.display()
            ),
        )
        .unwrap_err();
    assert!(e.contains("chmod 600"), "{e}");
    // A certificate and a key that do not belong together.
    let other_key = f._dir.path().join("mismatched.key");
    std::fs::copy(&f.certs.other_key, &other_key).unwrap();
    std::fs::set_permissions(&other_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = f
        .conn(
            CLIENT_CERT_USER,
            &format!(
                "sslmode=require sslcert={{cert}} sslkey={}",
                other_key.display()
            ),
        )
        .unwrap_err();
    assert!(e.contains("do not belong together"), "{e}");
}

#[tokio::test]
async fn passwords_over_plain_tcp_are_refused_unless_require_auth_lists_them() {
    let f = fixture(false);
    for (user, password, method) in [("pwuser", "pw", "password"), ("md5user", "md5pw", "md5")] {
        let e = f
            .connect(user, &format!("password={password} sslmode=prefer"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                ConnectError::AuthRefused {
                    refusal: AuthRefusal::Unencrypted(_),
                    ..
                }
            ),
            "{user}: {e}"
        );
        assert!(e.to_string().contains("unencrypted connection"), "{e}");
        assert!(
            e.hint().contains(&format!("require_auth={method}")),
            "{}",
            e.hint()
        );
        let allowed = format!("password={password} require_auth={method}");
        assert!(!f.connect(user, &allowed).await.unwrap(), "{user}");
        // libpq's rule: what is not listed is refused.
        let e = f
            .connect(
                user,
                &format!("password={password} require_auth=scram-sha-256"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                ConnectError::AuthRefused {
                    refusal: AuthRefusal::NotAllowed { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
    // SCRAM never exposes the password: fine over plain TCP.
    assert!(!f.connect("scramuser", "password=scrampw").await.unwrap());
    // trust needs `none` once require_auth is given.
    assert!(f
        .connect("postgres", "require_auth=scram-sha-256")
        .await
        .is_err());
    assert!(!f
        .connect("postgres", "require_auth=scram-sha-256,none")
        .await
        .unwrap());
}

#[tokio::test]
async fn passwords_go_over_tls_and_allow_switches_to_tls_for_them() {
    let f = fixture(true);
    assert!(f
        .connect("pwuser", "password=pw sslmode=require")
        .await
        .unwrap());
    assert!(f
        .connect(
            "md5user",
            "password=md5pw sslmode=verify-full sslrootcert={ca}"
        )
        .await
        .unwrap());
    // allow starts in plain; the password request there makes it try TLS.
    assert!(f
        .connect("pwuser", "password=pw sslmode=allow")
        .await
        .unwrap());
    let e = f
        .connect("pwuser", "password=pw sslmode=disable")
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::AuthRefused { .. }), "{e}");
}

#[tokio::test]
async fn the_raw_login_follows_the_same_rules() {
    use shardline_topology::login::login;
    let f = fixture(true);
    let run = |user: &'static str, extra: &'static str| {
        let conn = f.conn(user, extra).unwrap();
        async move {
            conn.each_attempt(|mut s| {
                let conn = &conn;
                async move {
                    let protected = s.is_protected();
                    login(&mut s, conn, &[], protected).await?;
                    Ok(s.is_tls())
                }
            })
            .await
        }
    };
    assert!(
        run("pwuser", "password=pw sslmode=verify-full sslrootcert={ca}")
            .await
            .unwrap()
    );
    assert!(!run(
        "pwuser",
        "password=pw sslmode=disable require_auth=password"
    )
    .await
    .unwrap());
    let e = run("pwuser", "password=pw sslmode=disable")
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::AuthRefused { .. }), "{e}");
    // Regression: the password message was sent with an extra NUL, which
    // postgres-protocol refuses ("string contains embedded null").
    assert!(run("md5user", "password=md5pw sslmode=require")
        .await
        .unwrap());
    assert!(run("pwuser", "password=pw sslmode=require").await.unwrap());
    let e = run("md5user", "password=wrong sslmode=require")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectError::Authentication { code, .. } if code == "28P01"),
        "{e}"
    );
    assert!(run(
        CLIENT_CERT_USER,
        "sslmode=require sslcert={cert} sslkey={key}"
    )
    .await
    .unwrap());
}

#[tokio::test]
async fn replication_sessions_follow_the_same_rules() {
    use pgwire_replication::ReplicationClient;
    let f = fixture(true);
    let identify = |conn: ConnString| async move {
        let config = conn.replication("unused", "unused").await.unwrap();
        let mut session = ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| e.to_string())?;
        let rows = session
            .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .await
            .map_err(|e| e.to_string())?;
        let ssl = rows.first().and_then(|r| r.first().cloned().flatten());
        let ssl = ssl.is_some_and(|v| v[..] == b"t"[..]);
        Ok::<_, String>(ssl)
    };
    let verified = f
        .conn("postgres", "sslmode=verify-full sslrootcert={ca}")
        .unwrap();
    assert!(identify(verified).await.unwrap());
    let over_tls = f.conn("pwuser", "password=pw sslmode=require").unwrap();
    assert!(identify(over_tls).await.unwrap());
    // A clear-text password over plain TCP: the relay refuses, and says why.
    let plain = f.conn("pwuser", "password=pw sslmode=disable").unwrap();
    let e = identify(plain).await.unwrap_err();
    assert!(
        e.contains("unencrypted connection") && e.contains("require_auth=password"),
        "{e}"
    );
    let allowed = f
        .conn(
            "pwuser",
            "password=pw sslmode=disable require_auth=password",
        )
        .unwrap();
    assert!(!identify(allowed).await.unwrap());
    let wrong_ca = f
        .conn("postgres", "sslmode=verify-ca sslrootcert={other_ca}")
        .unwrap();
    let e = identify(wrong_ca).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert_eq!(
        SslMode::Prefer,
        f.conn("postgres", "").unwrap().tls().mode()
    );
}
