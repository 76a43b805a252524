//! What several wxchat processes sharing one MySQL and Redis need from each other beyond the
//! shared store: the bus (Redis Streams, one per node) that carries pushes to connections held
//! by other processes.
//!
//! Layer: below the state owner (`rt`), generic over the completion type; imports `net`,
//! `store` (presence, the cache) and `feed::metrics`.

pub mod bus;
