//! Startup and SCRAM-SHA-256 login of a client, then the ParameterStatus
//! values of its default database.

use tokio::io::AsyncWriteExt;

use super::{Fatal, Session};
use crate::backend::BackendError;
use crate::message::{self as msg, Frame, FrameError};

/// Startup parameters that need no backend to check: the router's own,
/// and application_name, which takes any text.
const UNCHECKED: [&str; 4] = ["user", "database", "client_encoding", "application_name"];

impl Session {
    pub(super) async fn startup(&mut self) -> Result<bool, Fatal> {
        let shared = self.shared.clone();
        let tls = shared.tls.as_ref();
        self.client.direct(tls).await?;
        let params = loop {
            let (code, body) = msg::read_startup(&mut self.client).await?;
            match code {
                msg::SSL_REQUEST => self.client.ssl_request(tls).await?,
                msg::GSSENC_REQUEST => self.client.write_all(b"N").await?,
                msg::CANCEL_REQUEST => {
                    self.shared.cancels.cancel_request(&body).await;
                    return Ok(false);
                }
                msg::PROTOCOL_3_0 if self.client.refuse(tls, &mut self.out) => {
                    self.flush().await?;
                    return Ok(false);
                }
                msg::PROTOCOL_3_0 => break msg::startup_params(&body)?,
                other => {
                    let m = format!(
                        "unsupported frontend protocol {}.{}",
                        other >> 16,
                        other & 0xffff
                    );
                    msg::error_response(&mut self.out, "0A000", &m, None);
                    self.flush().await?;
                    return Ok(false);
                }
            }
        };
        let user = params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !self.authenticate(&user).await? {
            return Ok(false);
        }
        let app = params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map_or("", |(_, v)| v.as_str());
        self.seat.client.logged_in(&user, app);
        self.startup_settings(&params)?;
        msg::authentication(&mut self.out, 0, &[]);
        let db = self.default_db();
        // A client with settings of its own has them checked on a backend,
        // as PostgreSQL checks them at login; one without (or with only an
        // application_name, which any text is) is told what the pool's
        // connections reported, without waiting for one.
        let unchecked = params.iter().all(|(k, _)| UNCHECKED.contains(&k.as_str()));
        let known = (unchecked)
            .then(|| self.shared.pools[db.0][db.1].manager().parameters())
            .flatten()
            .map(|mut p| {
                if let Some(v) = p.iter_mut().find(|(k, _)| k == "application_name") {
                    v.1 = app.to_string();
                }
                p
            });
        let parameters = match known {
            Some(p) => Ok(p),
            None => self.backend(db).await.map(|b| b.parameters.clone()),
        };
        let parameters = match parameters {
            Ok(p) => p,
            // PostgreSQL refuses a login with a setting it rejects.
            Err(BackendError::Settings { code, message, .. }) => {
                msg::error_response(&mut self.out, &code, &message, None);
                self.flush().await?;
                return Ok(false);
            }
            // The client may still reach the other databases.
            Err(_) => Vec::new(),
        };
        let mut sent = Vec::new();
        for (k, v) in &parameters {
            msg::parameter_status(&mut self.out, k, v);
            sent.push(k.as_str());
        }
        for (k, v) in [
            ("server_version", "16.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            if !sent.contains(&k) {
                msg::parameter_status(&mut self.out, k, v);
            }
        }
        let cancel = self.shared.cancels.register();
        msg::backend_key_data(&mut self.out, cancel.pid, cancel.secret);
        // The startup backend above is held before the client has a key.
        for (db, b) in &self.backends {
            cancel.hold(*db, b.backend_key());
        }
        self.cancel = Some(cancel);
        msg::ready_for_query(&mut self.out, b'I');
        self.flush().await?;
        Ok(true)
    }

    async fn authenticate(&mut self, user: &str) -> Result<bool, Fatal> {
        let failed = |s: &mut Self| {
            msg::error_response(
                &mut s.out,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
                None,
            );
        };
        // An unknown user runs the same exchange as a known one and fails
        // at its end, as a wrong password does: nothing tells them apart.
        let verifier = (self.shared.users.get(user).cloned())
            .unwrap_or_else(|| crate::scram::Verifier::mock(user));
        let mut mechanisms = Vec::new();
        mechanisms.extend_from_slice(crate::scram::MECHANISM.as_bytes());
        mechanisms.extend_from_slice(&[0, 0]);
        msg::authentication(&mut self.out, 10, &mechanisms);
        self.flush().await?;

        let first = self.password_message().await?;
        let mut b = first.body();
        let mechanism = msg::cstr(&mut b)?;
        if mechanism != crate::scram::MECHANISM || b.len() < 4 {
            failed(self);
            self.flush().await?;
            return Ok(false);
        }
        let client_first = String::from_utf8_lossy(&b[4..]).to_string();
        let nonce = base64_nonce();
        let Ok((exchange, server_first)) =
            crate::scram::Exchange::start(&verifier, &client_first, &nonce)
        else {
            failed(self);
            self.flush().await?;
            return Ok(false);
        };
        msg::authentication(&mut self.out, 11, server_first.as_bytes());
        self.flush().await?;
        let last = self.password_message().await?;
        let client_final = String::from_utf8_lossy(last.body()).to_string();
        match exchange.finish(&verifier, &client_final) {
            Ok(server_final) => {
                msg::authentication(&mut self.out, 12, server_final.as_bytes());
                Ok(true)
            }
            Err(_) => {
                failed(self);
                self.flush().await?;
                Ok(false)
            }
        }
    }

    async fn password_message(&mut self) -> Result<Frame, Fatal> {
        // PostgreSQL's cap on an authentication message, not the client's
        // max_message_bytes: nobody has logged in yet.
        let max = msg::MAX_AUTH_MESSAGE + 5;
        match msg::read_frame(&mut self.client, &mut self.inbuf, max).await? {
            Some(f) if f.tag == b'p' => Ok(f),
            Some(f) => Err(Fatal::Client(FrameError::Malformed(format!(
                "expected a password message, got {:?}",
                f.tag as char
            )))),
            None => Err(Fatal::Client(FrameError::Closed)),
        }
    }
}

fn base64_nonce() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>())
}
