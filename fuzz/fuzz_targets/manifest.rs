//! `Manifest::parse` and `HandlerSettings::parse_toml` on any text (invalid UTF-8 is
//! replaced, as a text editor would): no panic, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    evhost_fuzz::manifest::check_text(&String::from_utf8_lossy(data));
});
