//! What several wxchat processes sharing one MySQL and Redis need from each other beyond the
//! shared store: the Redis bus that carries pushes to connections held by other processes.

pub mod bus;
