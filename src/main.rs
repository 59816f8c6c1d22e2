//! The `gatehouse` binary: the command line of [`gatehouse::cli`], with the built-in
//! plugins. A program with plugins of its own is the same two lines around
//! `gatehouse::cli::main_with` (see `examples/custom_plugin.rs`).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
