//! The manifest rules on generated, mostly-valid manifests (`GenManifest`), which get past
//! the TOML syntax that random text rarely does; each handler is also tried alone as a
//! deploy's settings.
#![no_main]

use evhost_fuzz::manifest::{GenManifest, check_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|manifest: GenManifest| {
    check_text(&manifest.render());
    for handler in manifest.handlers() {
        check_text(&handler.render());
    }
});
