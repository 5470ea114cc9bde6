//! Shared helpers for the helper binaries and tests.
