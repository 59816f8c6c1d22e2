//! The table of open client connections (SPEC §8 `http.max_connections`,
//! `http.max_connections_per_ip`): a connection over either cap is accepted and closed at
//! once, so a flood of idle sockets can neither exhaust the process's descriptors nor crowd
//! out other clients.
//!
//! The count is taken once per connection, not per request: the global cap is one atomic,
//! the per-address one a small sharded map touched at accept and at close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// Open client connections, in all and per client address.
#[derive(Debug)]
pub struct ClientTable {
    max: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

/// One admitted connection; leaving the table when dropped.
#[derive(Debug)]
pub struct Admitted {
    table: Arc<ClientTable>,
    ip: Option<IpAddr>,
}

impl ClientTable {
    /// `max_per_ip` of 0 means no cap per address.
    pub fn new(max: usize, max_per_ip: usize) -> ClientTable {
        ClientTable {
            max,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Default::default(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip`, or says no when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Admitted> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let ip = match ip {
            Some(ip) if self.max_per_ip > 0 => ip,
            _ => {
                return Some(Admitted {
                    table: self.clone(),
                    ip: None,
                })
            }
        };
        let mut shard = self.shard(&ip);
        let count = shard.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(shard);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *count += 1;
        Some(Admitted {
            table: self.clone(),
            ip: Some(ip),
        })
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let index = match ip {
            IpAddr::V4(v4) => usize::from(v4.octets()[3]),
            IpAddr::V6(v6) => usize::from(v6.octets()[15]),
        } % SHARDS;
        // A poisoned shard only means another connection panicked mid-update of a counter;
        // the counts are still the best there is.
        self.per_ip[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut shard = self.table.shard(&ip);
            if let Some(count) = shard.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.table.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let table = Arc::new(ClientTable::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = table.admit(Some(a)).unwrap();
        let _a2 = table.admit(Some(a)).unwrap();
        assert!(table.admit(Some(a)).is_none(), "per-address cap");
        let _b1 = table.admit(Some(b)).unwrap();
        assert!(table.admit(Some(b)).is_none(), "global cap");
        assert_eq!(table.open(), 3);
        drop(a1);
        assert_eq!(table.open(), 2);
        let _a3 = table.admit(Some(a)).unwrap();
        assert!(table.admit(None).is_none());
    }

    #[test]
    fn no_per_address_cap_when_zero() {
        let table = Arc::new(ClientTable::new(100, 0));
        let ip: IpAddr = "::1".parse().unwrap();
        let held: Vec<_> = (0..100).map(|_| table.admit(Some(ip)).unwrap()).collect();
        assert!(table.admit(Some(ip)).is_none());
        drop(held);
        assert_eq!(table.open(), 0);
        assert!(table.per_ip.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
