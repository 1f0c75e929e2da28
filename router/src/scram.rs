//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the server side, as PostgreSQL
//! speaks it: no channel binding, the user name taken from the startup
//! packet (the client sends an empty `n=`).
//!
//! Keys are derived once per user when the router starts ([`Verifier`]),
//! so a login costs two HMACs, not 4096.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A user's stored keys, as `pg_authid.rolpassword` would hold them.
#[derive(Clone)]
pub struct Verifier {
    salt: [u8; 16],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(********)")
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: RFC 5802's `Hi`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

impl Verifier {
    pub fn new(password: &str, salt: [u8; 16]) -> Self {
        let salted = hi(password.as_bytes(), &salt, ITERATIONS);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

impl Verifier {
    /// A verifier for a user the router does not know, so the login runs
    /// the same exchange and fails at the same step as a wrong password:
    /// its salt is stable per name (as a real user's is) and no proof
    /// matches its random keys. PostgreSQL does the same (`scram_mock_salt`).
    pub fn mock(user: &str) -> Self {
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(rand::random);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&hmac(secret, user.as_bytes())[..16]);
        Self {
            salt,
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("password authentication failed")]
    WrongProof,
}

/// One exchange, after the client's first message.
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl Exchange {
    /// Takes the client-first-message, returns the server-first-message.
    pub fn start(
        v: &Verifier,
        client_first: &str,
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let mut parts = client_first.splitn(3, ',');
        let cb = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        match cb {
            "n" | "y" => {}
            _ => return Err(ScramError::ChannelBinding),
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(v.salt));
        Ok((
            Self {
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                gs2_header: format!("{cb},{authzid},"),
            },
            server_first,
        ))
    }

    /// Checks the client-final-message, returns the server-final-message.
    pub fn finish(self, v: &Verifier, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if binding != Some(B64.encode(self.gs2_header.as_bytes()).as_str()) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::WrongProof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&v.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        if stored != v.stored_key {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&v.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// The client side is postgres-protocol's, as tokio-postgres uses it.
    fn login(password: &str, tried: &str) -> Result<(), ScramError> {
        let v = Verifier::new(password, [7; 16]);
        let mut client = ScramSha256::new(tried.as_bytes(), ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (exchange, server_first) = Exchange::start(&v, &first, "servernonce")?;
        client.update(server_first.as_bytes()).unwrap();
        let last = String::from_utf8(client.message().to_vec()).unwrap();
        let server_final = exchange.finish(&v, &last)?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected the server"))
    }

    #[test]
    fn the_right_password_logs_in_and_a_wrong_one_does_not() {
        assert_eq!(login("s3cret", "s3cret"), Ok(()));
        assert_eq!(login("s3cret", "guess"), Err(ScramError::WrongProof));
    }

    #[test]
    fn a_mock_verifier_has_a_stable_salt_per_name_and_accepts_no_proof() {
        assert_eq!(Verifier::mock("ghost").salt, Verifier::mock("ghost").salt);
        assert_ne!(Verifier::mock("ghost").salt, Verifier::mock("other").salt);
        let v = Verifier::mock("ghost");
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (exchange, server_first) = Exchange::start(&v, &first, "n").unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let last = String::from_utf8(client.message().to_vec()).unwrap();
        assert_eq!(exchange.finish(&v, &last), Err(ScramError::WrongProof));
    }
}
