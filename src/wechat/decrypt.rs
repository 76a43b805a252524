//! Mini-program encrypted data (`wx.getPhoneNumber`, `wx.getUserInfo` style `encryptedData`):
//! AES-128-CBC with key = base64(session_key), iv = base64(iv), PKCS#7 padding; the JSON inside
//! carries `watermark.appid`, which must be ours (data encrypted for another app is refused).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use base64::Engine;
use serde_json::Value;

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptError {
    /// Not base64, or a key / iv of the wrong length.
    BadInput(&'static str),
    /// Padding or JSON wrong: most often the session key changed since the data was made.
    Undecryptable,
    /// Decrypted, but for another app.
    WrongApp,
}

impl std::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecryptError::BadInput(what) => f.write_str(what),
            DecryptError::Undecryptable => f.write_str(
                "cannot decrypt: the session key has changed since the data was produced (call wx.login and log in again)",
            ),
            DecryptError::WrongApp => f.write_str("the data was encrypted for another app"),
        }
    }
}

pub fn decrypt(
    session_key: &str,
    encrypted_data: &str,
    iv: &str,
    appid: &str,
) -> Result<Value, DecryptError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(session_key)
        .map_err(|_| DecryptError::BadInput("bad session key"))?;
    let iv = b64
        .decode(iv)
        .map_err(|_| DecryptError::BadInput("iv is not base64"))?;
    let mut data = b64
        .decode(encrypted_data)
        .map_err(|_| DecryptError::BadInput("encryptedData is not base64"))?;
    if key.len() != 16 || iv.len() != 16 {
        return Err(DecryptError::BadInput("iv must be 16 bytes"));
    }
    if data.is_empty() || data.len() % 16 != 0 {
        return Err(DecryptError::Undecryptable);
    }
    let plain = Aes128CbcDec::new(key.as_slice().into(), iv.as_slice().into())
        .decrypt_padded_mut::<Pkcs7>(&mut data)
        .map_err(|_| DecryptError::Undecryptable)?;
    let value: Value = serde_json::from_slice(plain).map_err(|_| DecryptError::Undecryptable)?;
    match value.pointer("/watermark/appid").and_then(Value::as_str) {
        Some(a) if a == appid => Ok(value),
        _ => Err(DecryptError::WrongApp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced independently with OpenSSL:
    //   printf '%s' '{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":"86","watermark":{"timestamp":1700000000,"appid":"wx0123456789abcdef"}}' \
    //     | openssl enc -aes-128-cbc -K 000102030405060708090a0b0c0d0e0f -iv 101112131415161718191a1b1c1d1e1f | base64 -w0
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";
    const IV: &str = "EBESExQVFhcYGRobHB0eHw==";
    const DATA: &str = "aLhedzo+Z6es5zW+YHo9susiHnaEYeAkbZXA6vB3xXwsEHApbzM53NsvIVPS8sbzE9Tu3cKoosCIaJ9ReH9c7q8xI4AFlJ8HTHrrdVC0WzSFVEG+Q/SUBzVOfvRAiCzg9pRwA0o1X/SBOShf2kiL8wNfdlkWY+I9rsvJLhx38KPligMy/5ajh2WA9GMad7QPJ4mOrRhNln1eQPztHyRiSA==";

    #[test]
    fn decrypts_the_openssl_vector_and_checks_the_watermark() {
        let v = decrypt(KEY, DATA, IV, "wx0123456789abcdef").unwrap();
        assert_eq!(v["phoneNumber"], "13800138000");
        assert_eq!(v["countryCode"], "86");
        assert_eq!(
            decrypt(KEY, DATA, IV, "wxsomeoneelse"),
            Err(DecryptError::WrongApp)
        );
        // Another session key (the user logged in again since): refused, not garbage.
        assert_eq!(
            decrypt("AAECAwQFBgcICQoLDA0OEA==", DATA, IV, "wx0123456789abcdef"),
            Err(DecryptError::Undecryptable)
        );
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert_eq!(
            decrypt("x", "AAAA", IV, "wx"),
            Err(DecryptError::BadInput("bad session key"))
        );
        assert_eq!(
            decrypt(KEY, "AAAA", "AAAA", "wx"),
            Err(DecryptError::BadInput("iv must be 16 bytes"))
        );
        assert_eq!(
            decrypt(KEY, "AAAAAAAAAAAAAAAAAAAAAA==", IV, "wx"),
            Err(DecryptError::Undecryptable)
        );
    }
}
