//! TLS to the databases as libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` describe it, on rustls with the ring provider (the provider of
//! the router's client side: no aws-lc, no cmake).
//!
//! Where this follows libpq, and where it deliberately does not:
//! - `sslmode` defaults to `prefer`; `PGSSLMODE`, `PGSSLROOTCERT`,
//!   `PGSSLCERT` and `PGSSLKEY` fill what the string leaves out.
//! - A root certificate that is available (`sslrootcert`, or
//!   `~/.postgresql/root.crt` when it exists) makes every TLS connection
//!   verify the server's chain, so `require` behaves as `verify-ca`.
//! - `verify-ca` checks the chain only; `verify-full` also checks that the
//!   certificate names the host (DNS or IP subjectAltName; unlike libpq,
//!   rustls never falls back to the common name). With `hostaddr`, the
//!   name checked is still `host`.
//! - `sslrootcert=system` trusts the operating system's bundle
//!   (`SSL_CERT_FILE`, else the distribution's file) and, as in libpq 16,
//!   requires `verify-full`, which becomes the default sslmode.
//! - A client certificate is `sslcert`/`sslkey`, else
//!   `~/.postgresql/postgresql.crt`/`.key` when they exist. A key readable
//!   by group or others is refused, as libpq does. Stricter than libpq: a
//!   file named explicitly that does not exist is an error, not ignored.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is acceptable.
    pub fn allows_plain(self) -> bool {
        self <= Self::Prefer
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }
}

/// What a connection string says about TLS, before files are read: the
/// values of its parameters, or of the PG* variables.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (`require` without a root certificate): encryption only.
    None,
    /// The chain up to a trusted root (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// TLS settings resolved and loaded: the mode, and the rustls client
/// configuration every TLS connection of one string shares.
#[derive(Clone)]
pub struct TlsSettings {
    mode: SslMode,
    verification: Verification,
    /// The trusted roots' file, for messages and for tools.
    root: Option<PathBuf>,
    /// The values given (string or environment), for `to_libpq_string`.
    params: TlsParams,
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("verification", &self.verification)
            .field("root", &self.root)
            .finish()
    }
}

/// The files libpq looks for when the string names none.
const DEFAULT_ROOT: &str = ".postgresql/root.crt";
const DEFAULT_CERT: &str = ".postgresql/postgresql.crt";
const DEFAULT_KEY: &str = ".postgresql/postgresql.key";

/// Where distributions keep the system's CA bundle, most common first.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl TlsSettings {
    /// Resolves `params` (defaults from `env`'s HOME) and reads the files
    /// they name. Errors are one line naming the parameter and the file.
    pub(crate) fn load(
        params: TlsParams,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let system = params.sslrootcert.as_deref() == Some("system");
        let mode = match &params.sslmode {
            Some(m) => m.parse::<SslMode>()?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(format!(
                "weak sslmode {mode} may not be used with sslrootcert=system (use verify-full)"
            ));
        }
        let home = env("HOME").map(PathBuf::from);
        let default = |rel: &str| home.as_ref().map(|h| h.join(rel)).filter(|p| p.exists());
        let root = match params.sslrootcert.as_deref() {
            Some("system") => Some(system_bundle(env)?),
            Some(path) => Some(PathBuf::from(path)),
            None => default(DEFAULT_ROOT),
        };
        let verification = match (mode, &root) {
            (SslMode::VerifyFull, Some(_)) => Verification::Full,
            (SslMode::VerifyCa, Some(_)) => Verification::Chain,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                let looked = home
                    .as_ref()
                    .map(|h| h.join(DEFAULT_ROOT).display().to_string())
                    .unwrap_or_else(|| format!("~/{DEFAULT_ROOT}"));
                return Err(format!(
                    "sslmode={mode} needs the CA certificate that signed the server's: none is given (sslrootcert, PGSSLROOTCERT) and {looked} does not exist; \
                     set sslrootcert=FILE, or sslrootcert=system for the system's CAs, or use sslmode=require to encrypt without checking"
                ));
            }
            (_, Some(_)) => Verification::Chain,
            (_, None) => Verification::None,
        };
        let client = match (&params.sslcert, &params.sslkey) {
            (Some(cert), key) => {
                let key = key
                    .clone()
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(DEFAULT_KEY)));
                Some((PathBuf::from(cert), key))
            }
            (None, key) => default(DEFAULT_CERT).map(|cert| {
                let key = key
                    .clone()
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(DEFAULT_KEY)));
                (cert, key)
            }),
        };
        let config = if mode == SslMode::Disable {
            None
        } else {
            let client = match client {
                Some((cert, Some(key))) => Some((read_certs("sslcert", &cert)?, read_key(&key)?)),
                Some((cert, None)) => {
                    return Err(format!(
                        "sslcert {}: no key for it (set sslkey)",
                        cert.display()
                    ))
                }
                None => None,
            };
            let roots = match &root {
                Some(path) => Some(read_roots(path, system)?),
                None => None,
            };
            Some(Arc::new(client_config(verification, roots, client)?))
        };
        Ok(Self {
            mode,
            verification,
            root,
            params,
            config,
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// The trusted roots' file, when the server's chain is checked.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub(crate) fn config(&self) -> Option<Arc<ClientConfig>> {
        self.config.clone()
    }

    /// The parameters as libpq spells them, for tools that take a libpq
    /// string: only what was given, so libpq applies its own defaults.
    pub(crate) fn libpq_params(&self) -> Vec<(&'static str, String)> {
        let p = &self.params;
        [
            ("sslmode", &p.sslmode),
            ("sslrootcert", &p.sslrootcert),
            ("sslcert", &p.sslcert),
            ("sslkey", &p.sslkey),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// The system's CA bundle, for `sslrootcert=system`.
fn system_bundle(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    if let Some(file) = env("SSL_CERT_FILE") {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "sslrootcert=system: no system CA bundle found (looked at SSL_CERT_FILE, {}); install ca-certificates or name the file in sslrootcert",
                SYSTEM_BUNDLES.join(", ")
            )
        })
}

fn read(param: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{param} {}: cannot read it: {e}", path.display()))
}

fn read_certs(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(param, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param} {}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{param} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_roots(path: &Path, system: bool) -> Result<RootCertStore, String> {
    let param = if system {
        "sslrootcert=system:"
    } else {
        "sslrootcert"
    };
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certs(param, path)?);
    if added == 0 {
        return Err(format!(
            "{param} {}: no usable CA certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

/// Reads a client key, refusing one that others may read (libpq's rule:
/// at most 0600, or 0640 when root owns it).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("sslkey {}: cannot read it: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let private = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if !private {
        return Err(format!(
            "sslkey {}: group or others may read it (mode {mode:o}); chmod 600 it",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&read("sslkey", path)?).map_err(|_| {
        format!(
            "sslkey {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn client_config(
    verification: Verification,
    roots: Option<RootCertStore>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (verification, roots) {
        (Verification::None, _) | (_, None) => Arc::new(AnyCertificate {
            provider: provider.clone(),
        }),
        (v, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            if v == Verification::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("sslcert and sslkey do not belong together: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    // As libpq 17: PostgreSQL 17 servers check it on direct TLS, older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The name a certificate is checked against: `host`, as libpq does.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("host {host:?} is not a name TLS can check a certificate against"))
}

/// `require` without a root: the channel is encrypted, the certificate is
/// not checked; the handshake's signatures still are.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: webpki checks the chain before the name, so a name
/// mismatch is the only failure left to forgive.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a TLS handshake failed, for the hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate is not signed by a trusted root.
    UnknownIssuer,
    /// The certificate does not name the host (`verify-full`).
    WrongName,
    /// The certificate is expired or not valid yet.
    Expired,
    /// The server refused our client certificate, or wanted one.
    ClientCertificate,
    Other,
}

/// Classifies a handshake's i/o error: rustls puts its own error inside.
pub(crate) fn classify_handshake(e: &io::Error) -> (TlsFailure, String) {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return (TlsFailure::Other, e.to_string());
    };
    use rustls::AlertDescription as A;
    let kind = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsFailure::UnknownIssuer
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::WrongName
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
            _ => TlsFailure::Other,
        },
        rustls::Error::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::AccessDenied,
        ) => TlsFailure::ClientCertificate,
        _ => TlsFailure::Other,
    };
    (kind, tls.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    fn params(mode: Option<&str>, root: Option<&str>) -> TlsParams {
        TlsParams {
            sslmode: mode.map(Into::into),
            sslrootcert: root.map(Into::into),
            ..TlsParams::default()
        }
    }

    #[test]
    fn prefer_is_the_default_and_checks_nothing_without_a_root() {
        let s = TlsSettings::load(TlsParams::default(), &none).unwrap();
        assert_eq!(s.mode(), SslMode::Prefer);
        assert_eq!(s.verification(), Verification::None);
        assert!(s.config().is_some());
        let s = TlsSettings::load(params(Some("disable"), None), &none).unwrap();
        assert!(s.config().is_none());
    }

    #[test]
    fn unknown_modes_and_weak_modes_with_system_are_refused() {
        let e = TlsSettings::load(params(Some("verfy-full"), None), &none).unwrap_err();
        assert!(
            e.contains("\"verfy-full\"") && e.contains("verify-full"),
            "{e}"
        );
        let e = TlsSettings::load(params(Some("require"), Some("system")), &none).unwrap_err();
        assert!(e.contains("use verify-full"), "{e}");
    }

    #[test]
    fn verification_without_a_root_names_the_file_looked_for() {
        let home = |k: &str| (k == "HOME").then(|| "/nonexistent-home".to_string());
        let e = TlsSettings::load(params(Some("verify-ca"), None), &home).unwrap_err();
        assert!(e.contains("/nonexistent-home/.postgresql/root.crt"), "{e}");
        assert!(e.contains("sslrootcert=system"), "{e}");
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let e =
            TlsSettings::load(params(Some("require"), Some("/no/such/ca.pem")), &none).unwrap_err();
        assert!(
            e.starts_with("sslrootcert /no/such/ca.pem: cannot read it"),
            "{e}"
        );
    }
}
