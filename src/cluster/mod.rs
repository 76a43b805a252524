//! What several wxchat processes sharing one MySQL and Redis need from each other beyond the
//! shared store: the Redis bus that carries pushes to connections held by other processes.
//!
//! Layer: below the state owner (`rt`), generic over the completion type; imports `net` and
//! nothing else of the crate.

pub mod bus;
