//! WeChat push bodies (XML or JSON) on arbitrary bytes: parsed or refused, never a panic, never
//! an entity expanded; a text reply built from parsed fields parses back to the same content.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wxchat::wechat::message::{self, Format};

fuzz_target!(|data: &[u8]| {
    let Ok((format, fields)) = message::parse(data) else {
        return;
    };
    if format == Format::Xml {
        // Only the five predefined entities exist: output never grows past the input.
        let total: usize = fields.0.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total <= data.len());
    }
    let content = fields.get("Content").unwrap_or("x");
    let reply = message::text_reply(format, "to", "from", 1, content);
    let (_, back) = message::parse(reply.as_bytes()).expect("our own reply parses");
    assert_eq!(back.get("Content"), Some(content));
});
