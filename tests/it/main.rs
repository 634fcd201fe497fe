//! Integration tests: the real daemon, real sockets, real tokens.
//!
//! One test binary (see `autotests = false` in Cargo.toml); each module is a
//! feature.

mod abuse;
mod auth_edge;
mod auth_tokens;
mod conversations;
mod database;
mod examples;
mod fairness;
mod framing;
mod idle;
mod isolation;
mod legacy;
mod lifecycle;
mod limits;
mod long_lived;
mod operations;
mod postgres_daemon;
mod providers;
mod real_clients;
mod shutdown;
mod store_contract;
mod streamable;
mod tool_calls;
