//! rookery library
