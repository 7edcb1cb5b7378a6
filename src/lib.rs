//! Wiring of colloquy's processes, shared by the `colloquy` binary and the end-to-end tests.

pub mod audit;
pub mod runtime;
