//! Integration tests against real PostgreSQL servers.

mod decode;
mod readmodel;
mod stream;
