//! WeChat message-push cryptography, pure: bytes in, values or errors out.
//!
//! - Signatures: `sha1(concat(sort(parts)))`, lowercase hex, compared in constant time.
//! - Safe mode: AES-256-CBC, key = base64(EncodingAESKey + "="), IV = the key's first 16 bytes,
//!   PKCS#7 padding to 32-byte blocks (checked strictly, unlike some SDKs), plaintext
//!   `16 random bytes | u32 big-endian length | message | appid`, appid checked.

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use sha1::{Digest, Sha1};

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// WeChat's padding block (not AES's 16).
const BLOCK: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters.
    BadAesKey,
    /// `Encrypt` is not base64 or not a whole number of AES blocks.
    BadCiphertext,
    /// The padding is not PKCS#7 to 32-byte blocks.
    BadPadding,
    /// The declared message length does not fit the plaintext.
    BadLength,
    /// The message was encrypted for another app.
    WrongAppid,
    /// The message is not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for CryptoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CryptoError::BadAesKey => "the EncodingAESKey must be 43 base64 characters",
            CryptoError::BadCiphertext => "Encrypt is not valid base64 AES data",
            CryptoError::BadPadding => "bad padding",
            CryptoError::BadLength => "bad message length",
            CryptoError::WrongAppid => "the message is for another appid",
            CryptoError::NotUtf8 => "the message is not UTF-8",
        })
    }
}

/// `sha1(concat(sort(parts)))` as lowercase hex.
pub fn signature(parts: &[&str]) -> String {
    let mut sorted: Vec<&str> = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `expected` against the signature of `parts` in constant time.
pub fn verify(parts: &[&str], expected: &str) -> bool {
    crate::auth::constant_time_eq(
        signature(parts).as_bytes(),
        expected.to_ascii_lowercase().as_bytes(),
    )
}

/// One app's safe-mode cipher.
pub struct MsgCrypt {
    key: [u8; 32],
    appid: String,
}

impl MsgCrypt {
    pub fn new(encoding_aes_key: &str, appid: &str) -> Result<MsgCrypt, CryptoError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::BadAesKey);
        }
        // The 43rd character carries 2 bits beyond the 32 bytes; WeChat ignores them, and so
        // must we (its own sample key has them set).
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let raw = lenient
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadAesKey)?;
        let key: [u8; 32] = raw.try_into().map_err(|_| CryptoError::BadAesKey)?;
        Ok(MsgCrypt {
            key,
            appid: appid.to_string(),
        })
    }

    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Decrypts an `Encrypt` field; returns the message and the 16 random bytes it carried.
    pub fn decrypt(&self, encrypt: &str) -> Result<(String, [u8; 16]), CryptoError> {
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::BadCiphertext)?;
        if data.is_empty() || data.len() % BLOCK != 0 {
            return Err(CryptoError::BadCiphertext);
        }
        let plain = Aes256CbcDec::new((&self.key).into(), self.key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut data)
            .map_err(|_| CryptoError::BadCiphertext)?;
        let pad = *plain.last().ok_or(CryptoError::BadPadding)? as usize;
        if pad == 0 || pad > BLOCK || pad > plain.len() {
            return Err(CryptoError::BadPadding);
        }
        let (body, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|&b| b as usize != pad) {
            return Err(CryptoError::BadPadding);
        }
        if body.len() < 20 {
            return Err(CryptoError::BadLength);
        }
        let mut random = [0u8; 16];
        random.copy_from_slice(&body[..16]);
        let len = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
        let rest = &body[20..];
        if len > rest.len() {
            return Err(CryptoError::BadLength);
        }
        let (msg, appid) = rest.split_at(len);
        if appid != self.appid.as_bytes() {
            return Err(CryptoError::WrongAppid);
        }
        let msg = String::from_utf8(msg.to_vec()).map_err(|_| CryptoError::NotUtf8)?;
        Ok((msg, random))
    }

    /// Encrypts a reply with the given 16 random bytes (callers draw them from the OS).
    pub fn encrypt(&self, msg: &str, random: &[u8; 16]) -> String {
        let mut plain = Vec::with_capacity(20 + msg.len() + self.appid.len() + BLOCK);
        plain.extend_from_slice(random);
        plain.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        plain.extend_from_slice(msg.as_bytes());
        plain.extend_from_slice(self.appid.as_bytes());
        let pad = BLOCK - plain.len() % BLOCK;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let len = plain.len();
        let out = Aes256CbcEnc::new((&self.key).into(), self.key[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .expect("the buffer is a whole number of blocks");
        base64::engine::general_purpose::STANDARD.encode(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // WeChat's published vectors (see ../shared/wechat.md).
    const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

    #[test]
    fn wxbizmsgcrypt_sample_verifies_and_decrypts() {
        let c = MsgCrypt::new(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wx2c2769f8efd9abc2",
        )
        .unwrap();
        let hex: String = c.key().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
        );
        assert!(verify(
            &["spamtest", "1409735669", "1320562132", SAMPLE_ENCRYPT],
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
        ));
        assert!(!verify(
            &["spamtest", "1409735670", "1320562132", SAMPLE_ENCRYPT],
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
        ));
        let (xml, _) = c.decrypt(SAMPLE_ENCRYPT).unwrap();
        for part in [
            "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
            "gh_10f6c3c3ac5a",
            "1409735668",
            "abcdteT",
            "6054768590064713728",
        ] {
            assert!(xml.contains(part), "{part} missing from {xml}");
        }
        let other =
            MsgCrypt::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxother").unwrap();
        assert_eq!(other.decrypt(SAMPLE_ENCRYPT), Err(CryptoError::WrongAppid));
    }

    #[test]
    fn mini_program_vectors_url_check_and_reply() {
        assert!(verify(
            &["AAAAA", "1714036504", "1514711492"],
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        ));
        let c = MsgCrypt::new(&"A".repeat(43), "wxba5fad812f8e6fb9").unwrap();
        let encrypt = "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ==";
        let (msg, random) = c.decrypt(encrypt).unwrap();
        assert_eq!(msg, r#"{"demo_resp":"good luck"}"#);
        assert!(verify(
            &["AAAAA", "1713424427", "415670741", encrypt],
            "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
        ));
        // Our encryption reproduces WeChat's bytes given the same random prefix.
        assert_eq!(c.encrypt(&msg, &random), encrypt);
    }

    #[test]
    fn padding_and_lengths_are_checked_strictly() {
        let c = MsgCrypt::new(&"A".repeat(43), "wxapp").unwrap();
        let ok = c.encrypt("hello", &[7; 16]);
        assert_eq!(c.decrypt(&ok).unwrap().0, "hello");
        // A message that fills the block exactly gets a whole block of padding (0x20).
        let exact = "x".repeat(64 - 20 - 5);
        let e = c.encrypt(&exact, &[1; 16]);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&e)
                .unwrap()
                .len(),
            96
        );
        assert_eq!(c.decrypt(&e).unwrap().0, exact);
        assert_eq!(
            MsgCrypt::new("short", "a").err(),
            Some(CryptoError::BadAesKey)
        );
        assert_eq!(c.decrypt("not base64!"), Err(CryptoError::BadCiphertext));
        assert_eq!(c.decrypt("AAAA"), Err(CryptoError::BadCiphertext));
        // Random ciphertexts never panic and almost always fail the strict checks.
        let mut seed = 0x1234_5678u32;
        let mut accepted = 0;
        for _ in 0..2000 {
            let mut bytes = vec![0u8; 64];
            for b in bytes.iter_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            if c.decrypt(&text).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 0);
    }
}
