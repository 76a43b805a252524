//! The handle of a timer set with `App::after`. Apart from `rt/mod.rs` so that the features'
//! state types (which keep handles to cancel) need not import the state owner.

/// A timer set with `App::after`, for cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppTimer {
    id: crate::net::TimerId,
    token: u64,
}

impl AppTimer {
    pub(crate) fn new(id: crate::net::TimerId, token: u64) -> AppTimer {
        AppTimer { id, token }
    }

    pub(crate) fn id(self) -> crate::net::TimerId {
        self.id
    }

    pub(crate) fn token(self) -> u64 {
        self.token
    }
}
