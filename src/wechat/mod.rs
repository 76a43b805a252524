//! WeChat: the API client (worker threads only), logins (mini-program, QR-code scan), the
//! message push (callbacks, safe mode) and customer service for WeChat users.

pub mod access_token;
pub mod api;
pub mod callback;
pub mod crypto;
pub mod decrypt;
pub mod login;
pub mod message;
pub mod qrlogin;
pub mod service;
