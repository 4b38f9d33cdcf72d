//! The ingress router (`evhost::ingress::router`) on a real store, any method and request:
//! never a 5xx, and every answer the one the decoder and the handshake decide.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    evhost_fuzz::ingress::check_router(evhost_fuzz::ingress::request(data));
});
