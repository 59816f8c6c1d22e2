//! One instance slot per worker thread of a plugin.
//!
//! The gateway's workers do not steal each other's tasks, so a request stays on its
//! thread, and so does every callback on its slot's instance: the slot's lock is only ever
//! contended when two threads share a slot (more threads than slots) or a background task
//! (a tick, a detached HTTP call's answer) runs on it.

use super::vm::Vm;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The worker threads the gateway runs, when it said so.
static WORKER_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Tells the Wasm host how many worker threads serve requests, so each gets a slot of its
/// own. Plugins built before keep the slots they have.
pub fn set_worker_threads(threads: usize) {
    WORKER_THREADS.store(threads, Ordering::Relaxed);
}

fn slot_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    WORKER_THREADS
        .load(Ordering::Relaxed)
        .max(cores)
        .clamp(1, 1024)
}

thread_local! {
    /// This thread's number among those that ever ran a Wasm callback.
    static THREAD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

pub struct Workers {
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Default)]
pub struct Slot {
    pub vm: Option<Vm>,
    /// Counts the instances this slot has had, so a request (or a background task) knows
    /// whether the instance that holds its context is still the one in the slot.
    pub generation: u64,
}

impl Slot {
    /// The instance, if it is still generation `generation`.
    pub fn current(&mut self, generation: u64) -> Option<&mut Vm> {
        if self.generation == generation {
            self.vm.as_mut()
        } else {
            None
        }
    }

    /// Drops the instance a fault left unusable, if it is still generation `generation`.
    pub fn drop_instance(&mut self, generation: u64) {
        if self.generation == generation {
            self.vm = None;
        }
    }
}

impl Workers {
    pub fn new() -> Workers {
        Workers {
            slots: (0..slot_count()).map(|_| Mutex::default()).collect(),
        }
    }

    /// The slot of the thread this runs on.
    pub fn here(&self) -> usize {
        THREAD.with(|n| *n) % self.slots.len()
    }

    pub fn lock(&self, at: usize) -> MutexGuard<'_, Slot> {
        self.slots[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
