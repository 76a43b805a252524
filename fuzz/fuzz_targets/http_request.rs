//! The HTTP request parser on arbitrary bytes: a request, "need more", or an error; never a
//! panic, and never a consumed length beyond the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wxchat::http::{parse_request, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 4096,
        large_body_path: "/api/upload".into(),
        large_body_bytes: 16384,
    };
    if let Ok(Some((req, used))) = parse_request(data, &limits) {
        assert!(used <= data.len());
        let _ = req.body_params();
        let _ = req.query_params();
        let _ = req.json::<serde_json::Value>();
    }
});
