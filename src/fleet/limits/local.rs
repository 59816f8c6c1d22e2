//! Each worker thread's own connection to Redis.
//!
//! A multiplexed connection runs a driver task that writes the commands and reads the
//! answers. The gateway's worker threads each run their own runtime, so a connection opened
//! on one thread and used from another costs every step two wake-ups across threads (the
//! driver's, then the request's). A worker thread instead opens its own connection, whose
//! driver runs on its runtime: a step is a write and a read on that thread. The store's
//! shared connection still says whether Redis is reachable and carries the steps of a
//! thread whose own connection is still being opened.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use std::cell::RefCell;
use std::time::Duration;

/// A thread's connection, for one generation of the store's shared connection: when the
/// store connects again (Redis restarted, a failover), every thread opens its own again.
#[derive(Default)]
struct Own {
    generation: u64,
    connection: Option<MultiplexedConnection>,
    opening: bool,
}

thread_local! {
    static OWN: RefCell<Own> = RefCell::default();
}

/// This thread's connection of `generation`, if it is open. If not, it is opened in the
/// background on this thread's runtime (once at a time), and `None` says to use the shared
/// one meanwhile. Only on a runtime of one thread: elsewhere the opened connection could
/// land in another thread's slot.
pub fn connection(
    client: &Client,
    config: &AsyncConnectionConfig,
    generation: u64,
    limit: Duration,
) -> Option<MultiplexedConnection> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return None;
    }
    OWN.with_borrow_mut(|own| {
        if own.generation != generation {
            *own = Own {
                generation,
                ..Own::default()
            };
        }
        if let Some(connection) = &own.connection {
            return Some(connection.clone());
        }
        if !own.opening {
            own.opening = true;
            let (client, config) = (client.clone(), config.clone());
            handle.spawn(async move {
                let opened = client.get_multiplexed_async_connection_with_config(&config);
                let opened = tokio::time::timeout(limit, opened).await;
                OWN.with_borrow_mut(|own| {
                    if own.generation == generation {
                        own.opening = false;
                        own.connection = opened.ok().and_then(Result::ok);
                    }
                });
            });
        }
        None
    })
}

/// Forgets this thread's connection of `generation` (it failed); the next step opens another.
pub fn forget(generation: u64) {
    OWN.with_borrow_mut(|own| {
        if own.generation == generation {
            own.connection = None;
        }
    });
}
