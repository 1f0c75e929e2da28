//! TLS between clients and the router: SSLRequest and direct negotiation,
//! `allow` and `require`, cancel requests through TLS, a broken handshake
//! that leaves other clients alone, and the start-up checks of the PEM files.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use shardline_router::{Proxy, ProxyError};
use shardline_testkit::{PgServer, TestCerts};
use shardline_topology::Topology;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::code;

const PASSWORD: &str = "tls-secret";

const SCHEMA: &str = "CREATE TABLE payments (id bigint, merchant_id bigint NOT NULL, amount int,
                      PRIMARY KEY (merchant_id, id))";

/// A topology whose router uses `tls` (a `[router]` line or none) with
/// this certificate and key.
fn topology(server: Option<&PgServer>, tls: &str, cert: &Path, key: &Path) -> Topology {
    let url = |db: &str| match server {
        Some(s) => s.url(db),
        // Pools connect lazily: a proxy that never runs a statement starts
        // without a server.
        None => format!("postgres://postgres@127.0.0.1:1/{db}"),
    };
    let toml = format!(
        r#"
[source]
url = "{source}"

[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{tx0}", "{tx1}"]

[router]
{tls}
tls_cert = "{cert}"
tls_key = "{key}"

[[router.users]]
name = "app"
password = "{PASSWORD}"
"#,
        source = url("postgres"),
        tx0 = url("tx0"),
        tx1 = url("tx1"),
        cert = cert.display(),
        key = key.display(),
    );
    Topology::parse(&toml, Path::new("tls.toml")).unwrap()
}

/// Serves `topology` on a free port until the test ends.
async fn serve(topology: &Topology) -> (u16, tokio::task::JoinHandle<()>) {
    let proxy = Proxy::with_pool_size(topology, 4).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        proxy.serve(listener).await.unwrap();
    });
    (port, task)
}

struct Fleet {
    server: PgServer,
    certs: TestCerts,
    port: u16,
    topology: Topology,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

/// Two shard databases and a router whose `[router]` has `tls`.
async fn fleet(tls: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let server = PgServer::start().unwrap();
    for db in ["tx0", "tx1"] {
        server.create_database(db).unwrap();
        server.psql(db, SCHEMA).unwrap();
    }
    let topology = topology(Some(&server), tls, &certs.cert, &certs.key);
    let (port, task) = serve(&topology).await;
    Fleet {
        server,
        certs,
        port,
        topology,
        _dir: dir,
        _task: task,
    }
}

impl Fleet {
    async fn connect<T>(&self, options: &str, tls: T) -> Result<Client, tokio_postgres::Error>
    where
        T: MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<tokio_postgres::Socket>>::Future: Send,
    {
        connect(self.port, options, tls).await
    }

    fn shard(&self, merchant: i64) -> usize {
        match &self.topology.sharded_context().unwrap().kind {
            shardline_topology::ContextKind::Sharded { placement, .. } => {
                placement.shard(&shardline_topology::ShardKey::Int(merchant))
            }
            _ => unreachable!(),
        }
    }
}

async fn connect<T>(port: u16, options: &str, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let conn = format!(
        "host=127.0.0.1 port={port} user=app password={PASSWORD} dbname=shardline {options}"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A tokio-postgres TLS connector over rustls that trusts only the test CA
/// (so a connection that succeeds saw the router's certificate).
#[derive(Clone)]
struct Rustls(Arc<ClientConfig>);

impl Rustls {
    fn trusting(ca: &Path) -> Self {
        Self::with_alpn(ca, true)
    }

    fn with_alpn(ca: &Path, alpn: bool) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        Self(Arc::new(config))
    }
}

impl<S> MakeTlsConnect<S> for Rustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect(TlsConnector::from(self.0.clone()), name))
    }
}

struct Connect(TlsConnector, ServerName<'static>);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tls<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.0.connect(self.1, stream).await?;
            Ok(Tls(Box::new(s)))
        })
    }
}

struct Tls<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Tls<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[tokio::test]
async fn under_require_tls_clients_are_routed_and_plain_ones_refused_with_28000() {
    let f = fleet("tls = \"require\"").await;
    let tls = Rustls::trusting(&f.certs.ca);
    let c = f.connect("sslmode=require", tls.clone()).await.unwrap();
    let (a, b) = (1i64, (2..).find(|m| f.shard(*m) != f.shard(1)).unwrap());
    let insert = c
        .prepare("INSERT INTO payments (id, merchant_id, amount) VALUES ($1, $2, 5)")
        .await
        .unwrap();
    for (id, m) in [(1i64, a), (2, b)] {
        assert_eq!(c.execute(&insert, &[&id, &m]).await.unwrap(), 1);
    }
    for (m, id) in [(a, "1"), (b, "2")] {
        let on_shard = f
            .server
            .psql(&format!("tx{}", f.shard(m)), "SELECT id FROM payments")
            .unwrap();
        assert_eq!(on_shard.trim(), id);
    }
    let rows = c
        .simple_query(&format!(
            "SELECT amount FROM payments WHERE merchant_id = {b}"
        ))
        .await
        .unwrap();
    let amounts: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(amounts, ["5"]);
    // A scatter merged from both shards, through TLS.
    let n: i64 = c
        .query_one("SELECT count(*) FROM payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Refused before any password is asked, as PostgreSQL refuses a
    // connection that no hostssl line lets in.
    let e = f.connect("sslmode=disable", NoTls).await.unwrap_err();
    assert_eq!(code(&e), "28000", "{e}");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(
        db.message(),
        "the router requires TLS; connect with sslmode=require"
    );
    // A client that does not trust the router's certificate stops itself.
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCerts::generate(dir.path()).unwrap();
    let e = f
        .connect("sslmode=require", Rustls::trusting(&stranger.ca))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("error performing TLS handshake"),
        "{e}"
    );
    // The router goes on serving.
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn allow_serves_plain_and_tls_clients_and_direct_tls_needs_alpn() {
    let f = fleet("").await;
    let tls = Rustls::trusting(&f.certs.ca);
    for (options, client) in [
        ("sslmode=disable", f.connect("sslmode=disable", NoTls).await),
        (
            "sslmode=require",
            f.connect("sslmode=require", tls.clone()).await,
        ),
        // PostgreSQL 17's direct negotiation: a ClientHello first.
        (
            "sslnegotiation=direct",
            f.connect("sslmode=require sslnegotiation=direct", tls.clone())
                .await,
        ),
    ] {
        let c = client.unwrap_or_else(|e| panic!("{options}: {e}"));
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM payments WHERE merchant_id = $1",
                &[&7i64],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{options}");
    }
    // Direct TLS without ALPN is refused, as PostgreSQL 17 refuses it.
    let e = f
        .connect(
            "sslmode=require sslnegotiation=direct",
            Rustls::with_alpn(&f.certs.ca, false),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08P01", "{e}");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("ALPN"), "{message}");
}

#[tokio::test]
async fn an_ssl_request_followed_by_garbage_is_dropped_and_others_are_served() {
    let f = fleet("").await;
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    let mut req = Vec::new();
    for v in [8i32, 80_877_103] {
        req.extend_from_slice(&v.to_be_bytes());
    }
    s.write_all(&req).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'S');
    s.write_all(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n")
        .await
        .unwrap();
    // The router answers with at most a TLS alert, then hangs up.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        sink
    })
    .await
    .expect("the router closed the connection");
    assert!(closed.len() < 64, "{closed:?}");

    // A second SSLRequest inside TLS is a protocol violation, as in
    // PostgreSQL: an 08P01 error through TLS, then the end.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(&req).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'S');
    let tls = Rustls::trusting(&f.certs.ca);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut s = TlsConnector::from(tls.0.clone())
        .connect(name, s)
        .await
        .unwrap();
    s.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("08P01") && text.contains("already encrypted"),
        "{text}"
    );

    // Other clients, encrypted or not, are served throughout.
    let c = f.connect("sslmode=require", tls).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let plain = f.connect("sslmode=disable", NoTls).await.unwrap();
    plain.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_tls_and_plain_sessions() {
    let f = fleet("").await;
    let tls = Rustls::trusting(&f.certs.ca);
    let secure = f.connect("sslmode=require", tls.clone()).await.unwrap();
    let plain = f.connect("sslmode=disable", NoTls).await.unwrap();
    for (name, c) in [("tls", &secure), ("plain", &plain)] {
        let token = c.cancel_token();
        let started = Instant::now();
        // The cancel request travels as its session did: after an
        // SSLRequest through TLS, or over plain TCP.
        let connector = tls.clone();
        let via_tls = name == "tls";
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if via_tls {
                token.cancel_query(connector).await.unwrap();
            } else {
                token.cancel_query(NoTls).await.unwrap();
            }
        });
        let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        assert_eq!(code(&e), "57014", "{name}: {e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{name}");
        canceller.await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test]
async fn each_key_form_loads_and_serves_a_tls_login() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    for (form, cert, key) in [
        ("PKCS#8", &certs.cert, &certs.key),
        ("SEC1", &certs.cert, &certs.key_sec1),
        ("RSA", &certs.rsa_cert, &certs.rsa_key),
    ] {
        let t = topology(None, "tls = \"require\"", cert, key);
        let (port, task) = serve(&t).await;
        // Login needs no backend; the handshake needs the right key.
        connect(port, "sslmode=require", Rustls::trusting(&certs.ca))
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        task.abort();
    }
}

#[test]
fn bad_pem_files_stop_the_router_before_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let missing = dir.path().join("missing.pem");
    let error = |cert: &PathBuf, key: &PathBuf| match Proxy::new(&topology(None, "", cert, key)) {
        Err(e) => {
            assert!(!e.hint().is_empty());
            e
        }
        Ok(_) => panic!("{} and {} loaded", cert.display(), key.display()),
    };
    let e = error(&missing, &certs.key);
    assert!(
        matches!(&e, ProxyError::TlsFile { file: "tls_cert", path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = error(&certs.cert, &missing);
    assert!(
        matches!(
            &e,
            ProxyError::TlsFile {
                file: "tls_key",
                ..
            }
        ),
        "{e:?}"
    );
    // The files swapped: no certificate in one, no key in the other.
    let e = error(&certs.key, &certs.key);
    assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    let e = error(&certs.cert, &certs.cert);
    assert!(
        e.to_string()
            .contains("holds no unencrypted PEM private key"),
        "{e}"
    );
    // A key of another certificate.
    let e = error(&certs.cert, &certs.other_key);
    assert!(matches!(e, ProxyError::TlsKeyMismatch { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("other.key") && text.contains("server.pem"),
        "{text}"
    );
    let e = error(&certs.rsa_cert, &certs.key);
    assert!(matches!(e, ProxyError::TlsKeyMismatch { .. }), "{e:?}");
}
