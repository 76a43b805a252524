//! Bus envelopes from a shared Redis are untrusted: decode anything without panicking, and what
//! decodes re-encodes to the same envelope.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wxchat::cluster::bus::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Some(env) = Envelope::decode(data) {
        assert_eq!(Envelope::decode(env.encode().as_bytes()), Some(env));
    }
});
