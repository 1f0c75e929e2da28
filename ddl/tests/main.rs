//! Integration tests against real PostgreSQL servers.
