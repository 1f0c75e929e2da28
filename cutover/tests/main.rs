//! Integration tests of the cutover crate against real servers.
