//! `evhost::ingress::binding::decode` on any request (headers and body, in the text format
//! of `evhost_fuzz::ingress`): it never panics, what it accepts survives every re-encoding
//! the host and its client use, and what it refuses is a 4xx problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = evhost_fuzz::ingress::request(data);
    let _ = evhost_fuzz::ingress::check_decode(&request.headers, &request.body);
});
