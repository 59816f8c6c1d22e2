//! Steady traffic for tests that change things under load: a few tasks send requests in a
//! loop until stopped, counting what succeeded and what did not.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// One task per URL, each reusing its keep-alive connection, or opening a fresh one for
    /// every request when `fresh_connections` (so connections, not only requests, are tested).
    pub fn start(urls: Vec<String>, fresh_connections: bool) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = urls
            .into_iter()
            .map(|url| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut builder = reqwest::Client::builder().no_proxy();
                    if fresh_connections {
                        builder = builder.pool_max_idle_per_host(0);
                    }
                    let client = builder.build().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Requests that succeeded so far.
    pub fn succeeded(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` requests succeeded, so a test changes things under
    /// traffic that really flows rather than after a guessed sleep.
    pub async fn wait_flowing(&self, n: usize) {
        super::eventually(
            std::time::Duration::from_secs(10),
            "traffic to flow",
            || async { self.succeeded() >= n },
        )
        .await;
    }

    /// Stops the traffic; returns (succeeded, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
