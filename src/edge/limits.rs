//! The open-file limit (SPEC §8): raised to the hard limit at start, and shared so that
//! clients can never take the descriptors the admin listener, upstream connections, log
//! files and etcd need.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors never given to client connections: the admin listener and its clients,
/// etcd and registry watches, health probes, log files, the upgrade socket.
pub const RESERVE: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// How many client connections may be open at once under a descriptor limit of
/// `open_files`: `configured`, or less when the limit cannot back it. Each client
/// connection may hold an upstream connection while its request is proxied, so clients get
/// half of what is left after the reserve.
pub fn client_share(configured: usize, open_files: u64) -> usize {
    let share = open_files.saturating_sub(RESERVE) / 2;
    configured
        .min(usize::try_from(share).unwrap_or(usize::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_half_of_what_the_reserve_leaves() {
        assert_eq!(client_share(100_000, 1024), 384);
        assert_eq!(client_share(100_000, 1_048_576), 100_000);
        assert_eq!(client_share(10, 1024), 10);
        assert_eq!(client_share(100, 100), 1);
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_one() {
        let now = raise_open_files().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((now, soft), (hard, hard));
    }
}
