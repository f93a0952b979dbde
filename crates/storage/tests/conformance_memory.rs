//! The shared conformance suite on the in-memory backend, one test per check.
#![allow(clippy::unwrap_used)]

use rookery_storage::memory::memory_stores;

rookery_storage::conformance_tests!(((), memory_stores()));
