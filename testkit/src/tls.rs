//! Throwaway TLS files for tests, made with the `openssl` command: a CA,
//! server certificates it signed for `localhost` and 127.0.0.1, and their
//! keys in each PEM form a server is expected to read; a client
//! certificate for the user [`CLIENT_CERT_USER`], and a second CA that
//! signed nothing here, for "unknown issuer" cases.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestkitError;

/// The user name (CN) of the client certificate.
pub const CLIENT_CERT_USER: &str = "certuser";

/// PEM files in one directory.
#[derive(Clone, Debug)]
pub struct TestCerts {
    /// The CA certificate a client trusts (libpq's `sslrootcert`).
    pub ca: PathBuf,
    /// The server's chain: its P-256 certificate, then the CA's.
    pub cert: PathBuf,
    /// The key of `cert`, PKCS#8 (`BEGIN PRIVATE KEY`).
    pub key: PathBuf,
    /// The same key, SEC1 (`BEGIN EC PRIVATE KEY`).
    pub key_sec1: PathBuf,
    /// A second server certificate, for an RSA key.
    pub rsa_cert: PathBuf,
    /// The key of `rsa_cert`, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub rsa_key: PathBuf,
    /// A PKCS#8 key that belongs to no certificate here.
    pub other_key: PathBuf,
    /// A client certificate the CA signed, CN [`CLIENT_CERT_USER`].
    pub client_cert: PathBuf,
    /// Its key, mode 0600 as libpq wants it.
    pub client_key: PathBuf,
    /// A CA certificate that signed none of the certificates here.
    pub other_ca: PathBuf,
}

impl TestCerts {
    /// Writes every file into `dir` (which must exist).
    pub fn generate(dir: &Path) -> Result<Self, TestkitError> {
        let p = |name: &str| dir.join(name);
        let s = |path: &Path| path.display().to_string();
        let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        openssl(&[
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            &["-nodes", "-days", "2", "-subj", "/CN=shardline-test-ca"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
            &["-keyout", &s(&p("ca.key")), "-out", &s(&p("ca.pem"))],
        ])?;
        let extensions = p("server.ext");
        std::fs::write(
            &extensions,
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|cause| io("writing the certificate extensions", cause))?;
        // A key and a certificate the CA signed for it.
        let server = |key: &Path, cert: &Path| -> Result<(), TestkitError> {
            let csr = cert.with_extension("csr");
            openssl(&[
                &["req", "-new", "-subj", "/CN=localhost"],
                &["-key", &s(key), "-out", &s(&csr)],
            ])?;
            openssl(&[
                &["x509", "-req", "-days", "2", "-CAcreateserial"],
                &["-in", &s(&csr), "-out", &s(cert)],
                &["-CA", &s(&p("ca.pem")), "-CAkey", &s(&p("ca.key"))],
                &["-extfile", &s(&extensions)],
            ])
        };
        openssl(&[&["genpkey"], &ec, &["-out", &s(&p("server.key"))]])?;
        server(&p("server.key"), &p("server.leaf.pem"))?;
        let chain = [p("server.leaf.pem"), p("ca.pem")]
            .iter()
            .map(std::fs::read_to_string)
            .collect::<Result<String, _>>()
            .map_err(|cause| io("reading the certificates", cause))?;
        std::fs::write(p("server.pem"), chain).map_err(|cause| io("writing the chain", cause))?;
        openssl(&[&[
            "ec",
            "-in",
            &s(&p("server.key")),
            "-out",
            &s(&p("server.sec1.key")),
        ]])?;
        openssl(&[&["genrsa", "-traditional", "-out", &s(&p("rsa.key")), "2048"]])?;
        server(&p("rsa.key"), &p("rsa.pem"))?;
        openssl(&[&["genpkey"], &ec, &["-out", &s(&p("other.key"))]])?;
        let client_ext = p("client.ext");
        std::fs::write(
            &client_ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .map_err(|cause| io("writing the certificate extensions", cause))?;
        openssl(&[&["genpkey"], &ec, &["-out", &s(&p("client.key"))]])?;
        openssl(&[
            &["req", "-new", "-subj", &format!("/CN={CLIENT_CERT_USER}")],
            &["-key", &s(&p("client.key")), "-out", &s(&p("client.csr"))],
        ])?;
        openssl(&[
            &["x509", "-req", "-days", "2", "-CAcreateserial"],
            &["-in", &s(&p("client.csr")), "-out", &s(&p("client.pem"))],
            &["-CA", &s(&p("ca.pem")), "-CAkey", &s(&p("ca.key"))],
            &["-extfile", &s(&client_ext)],
        ])?;
        std::fs::set_permissions(p("client.key"), std::fs::Permissions::from_mode(0o600))
            .map_err(|cause| io("chmod the client key", cause))?;
        openssl(&[
            &["req", "-x509", "-newkey", "ec"],
            &[
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ],
            &["-subj", "/CN=shardline-other-ca"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &[
                "-keyout",
                &s(&p("other-ca.key")),
                "-out",
                &s(&p("other-ca.pem")),
            ],
        ])?;
        Ok(Self {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            key_sec1: p("server.sec1.key"),
            rsa_cert: p("rsa.pem"),
            rsa_key: p("rsa.key"),
            other_key: p("other.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            other_ca: p("other-ca.pem"),
        })
    }
}

fn openssl(args: &[&[&str]]) -> Result<(), TestkitError> {
    let args: Vec<&str> = args.concat();
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .map_err(|cause| io("running openssl (is it installed?)", cause))?;
    if out.status.success() {
        return Ok(());
    }
    Err(TestkitError::Command {
        program: format!("openssl {}", args.join(" ")),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn io(context: &str, cause: std::io::Error) -> TestkitError {
    TestkitError::Io {
        context: context.to_string(),
        cause,
    }
}
