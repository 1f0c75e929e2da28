//! Integration tests against real PostgreSQL servers.

mod connect;
mod placement;
mod tls;
