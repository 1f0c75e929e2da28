//! Integration tests against real PostgreSQL servers.

mod ddl;
mod decode;
mod divergence;
mod group;
mod origin;
mod privilege;
mod readmodel;
mod stream;
