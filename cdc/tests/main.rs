//! Integration tests against real PostgreSQL servers.

mod decode;
mod origin;
mod readmodel;
mod stream;
