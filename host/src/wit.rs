//! The handler contract as Rust types: the host side of the `handler` world, generated from
//! `wit/0.1.0`. The runtime calls the world's export (`handle`); the capabilities implement
//! its imports. Both take the types from here, so neither needs the other to know them.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit/0.1.0",
    // State reads are async: in cluster mode each is a request to JetStream, which must not
    // block the thread the instance runs on.
    imports: {
        "evhost:handler/state.get": async | trappable,
        "evhost:handler/state.list-keys": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

/// The upcaster contract (`wit/upcaster-0.1.0`): one pure export, no imports of the host's.
pub mod upcaster {
    wasmtime::component::bindgen!({
        world: "upcaster",
        path: "../wit/upcaster-0.1.0",
        exports: { default: async },
    });
}
