//! The `rookery` binary's library: wires configuration, storage, router and edge into a
//! running node (`serve`: edge and router in one process on embedded defaults), and the
//! local admin HTTP API used by `rookery user …` against a running server.
//!
//! Owns: the choice of backends and transports (DESIGN §2: only `services/` chooses),
//! start-up and graceful shutdown, data-directory secrets (admin token, SCRAM fake-salt
//! secret), the admin API.
//! Must not touch: XMPP semantics (router), stream handling (edge).

pub mod admin;
pub mod node;

pub use node::{Server, start};
