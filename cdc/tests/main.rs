//! Integration tests against real PostgreSQL servers.

mod decode;
mod divergence;
mod origin;
mod readmodel;
mod stream;
