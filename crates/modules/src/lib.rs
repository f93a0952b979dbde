//! rookery-modules
