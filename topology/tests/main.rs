//! Integration tests against real PostgreSQL servers.

mod colname;
mod connect;
mod placement;
mod tls;
