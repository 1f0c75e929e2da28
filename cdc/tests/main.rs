//! Integration tests against real PostgreSQL servers.

mod decode;
