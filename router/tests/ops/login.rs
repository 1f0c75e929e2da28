//! A login reveals nothing about which users exist.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{code, split, PASSWORD};

/// Starts a login as `user` and returns the router's server-first SCRAM
/// message (the salt and iterations it offers).
async fn server_first(port: u16, user: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", "x")], &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let (tag, body) = read(&mut s).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &10i32.to_be_bytes()[..]),
        "{user}: no SASL offer"
    );
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=clientnonce", &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let (tag, body) = read(&mut s).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "{user}"
    );
    String::from_utf8(body[4..].to_vec()).unwrap()
}

async fn read(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_i32().await.unwrap();
    let mut body = vec![0; len as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

fn salt(server_first: &str) -> String {
    server_first
        .split(',')
        .find_map(|a| a.strip_prefix("s="))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_unknown_user_fails_like_a_wrong_password_after_the_same_exchange() {
    let f = split().await;
    let wrong = f.client_as("app", "not-it").await.unwrap_err();
    let unknown = f.client_as("nobody", PASSWORD).await.unwrap_err();
    assert_eq!(
        (code(&wrong), code(&unknown)),
        ("28P01".into(), "28P01".into())
    );
    let message = |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().to_string();
    assert_eq!(
        message(&wrong).replace("\"app\"", "\"nobody\""),
        message(&unknown)
    );
    // Both are offered SCRAM with a salt that stays the same from one
    // attempt to the next, so the salt does not tell them apart either.
    let known = salt(&server_first(f.port, "app").await);
    assert_eq!(known, salt(&server_first(f.port, "app").await));
    let ghost = salt(&server_first(f.port, "nobody").await);
    assert_eq!(ghost, salt(&server_first(f.port, "nobody").await));
    assert_ne!(known, ghost);
    f.client().await.simple_query("SELECT 1").await.unwrap();
}
