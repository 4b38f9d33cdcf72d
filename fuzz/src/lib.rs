//! What the fuzz targets share: the input format of the ingress targets, and the properties
//! each target asserts. A property that fails panics, which libFuzzer reports as a crash
//! with the input that caused it (saved under `fuzz/artifacts/TARGET/`).

pub mod ingress;
pub mod manifest;
