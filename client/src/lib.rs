//! Rust client of sessiond (filled in by the binary-protocol work).
