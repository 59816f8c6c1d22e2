//! The one Wasm engine of the process and its linker.
//!
//! Callbacks are bounded by epoch interruption: a thread advances the engine's epoch every
//! [`TICK`], and each call sets its deadline a number of ticks ahead, so a module stuck in a
//! loop traps within its `timeout` (plus one tick) without any check on the request path.

use super::host::{self, Host};
use std::sync::LazyLock;
use std::time::Duration;
use wasmtime::{Config, Engine, Linker};

/// How often the epoch advances: the granularity of every callback's timeout.
pub const TICK: Duration = Duration::from_millis(1);

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).expect("the Wasm engine's settings are valid");
    let ticking = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = ticking.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .expect("a thread for the Wasm epoch");
    engine
});

static LINKER: LazyLock<Linker<Host>> = LazyLock::new(|| {
    let mut linker = Linker::new(&ENGINE);
    host::link(&mut linker).expect("the host functions link once");
    linker
});

pub fn engine() -> &'static Engine {
    &ENGINE
}

pub fn linker() -> &'static Linker<Host> {
    &LINKER
}

/// The number of epoch ticks a callback bounded by `timeout` may run: one more than the
/// timeout spans, as the current tick is already partly gone.
pub fn ticks(timeout: Duration) -> u64 {
    (timeout.as_micros().div_ceil(TICK.as_micros())) as u64 + 1
}
