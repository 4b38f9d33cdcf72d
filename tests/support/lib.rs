//! Test support: start hosts, build the guest handlers once.
