//! Integration tests against real PostgreSQL servers.

mod ddl;
mod decode;
mod origin;
mod readmodel;
mod stream;
