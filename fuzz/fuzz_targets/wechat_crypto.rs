//! WeChat safe-mode decryption on arbitrary `Encrypt` text: refused or decrypted, never a panic;
//! whatever decrypts re-encrypts to something that decrypts to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wxchat::wechat::crypto::MsgCrypt;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = MsgCrypt::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx2c2769f8efd9abc2")
        .expect("the sample key");
    if let Ok((msg, random)) = c.decrypt(text) {
        assert_eq!(c.decrypt(&c.encrypt(&msg, &random)).unwrap().0, msg);
    }
    let _ = wxchat::wechat::crypto::signature(&[text, "1409735669", "nonce"]);
});
