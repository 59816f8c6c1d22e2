//! Fixed-size stand-ins for text a client chooses (a long rate-limit key, a refused token),
//! so what the gateway remembers about a request costs the same however much the client
//! sent.

use std::hash::{BuildHasher, RandomState};

/// A keyed 128-bit hash: SipHash under two secret keys drawn when the digester is made.
///
/// Keyed, so a client cannot work out two values that land on the same digest (and so share
/// a rate-limit bucket or a remembered refusal) without seeing the keys; 128 bits, so two
/// values that do by chance are not a concern either. Digests are only compared within one
/// digester's lifetime, which is why a per-process secret is enough.
#[derive(Clone, Debug)]
pub struct Digester {
    halves: [RandomState; 2],
}

impl Digester {
    pub fn new() -> Digester {
        Digester {
            halves: [RandomState::new(), RandomState::new()],
        }
    }

    pub fn digest(&self, bytes: &[u8]) -> u128 {
        let [high, low] = &self.halves;
        (u128::from(high.hash_one(bytes)) << 64) | u128::from(low.hash_one(bytes))
    }
}

impl Default for Digester {
    fn default() -> Self {
        Digester::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_digester_is_stable_and_tells_values_apart() {
        let d = Digester::new();
        assert_eq!(d.digest(b"key"), d.digest(b"key"));
        assert_ne!(d.digest(b"key"), d.digest(b"kez"));
        // Another digester (another limiter, another process) has other keys.
        assert_ne!(Digester::new().digest(b"key"), d.digest(b"key"));
    }
}
