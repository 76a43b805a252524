//! WeChat: the API client (worker threads only) and the mini-program data decryption.

pub mod access_token;
pub mod api;
pub mod crypto;
pub mod decrypt;
pub mod login;
