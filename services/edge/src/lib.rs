//! rookery-edge
