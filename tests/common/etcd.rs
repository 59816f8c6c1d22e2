//! A real etcd for tests: its own data directory, random loopback ports, stopped by pid.

use super::free_addr;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    pub dir: tempfile::TempDir,
    /// (CA, server certificate, server key) when clients must use TLS.
    tls: Option<(String, String, String)>,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut etcd = Etcd::not_started();
        etcd.spawn();
        etcd
    }

    /// An etcd whose clients must speak TLS, with a certificate from a CA made for the test.
    pub fn start_tls(ca: &str, cert: &str, key: &str) -> Etcd {
        let mut etcd = Etcd::not_started();
        etcd.tls = Some((ca.to_string(), cert.to_string(), key.to_string()));
        etcd.spawn();
        etcd
    }

    /// An etcd that will listen on `client` once started (for "etcd is down" tests).
    pub fn not_started() -> Etcd {
        Etcd {
            child: None,
            client: free_addr(),
            peer: free_addr(),
            dir: tempfile::tempdir().unwrap(),
            tls: None,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Starts (or restarts) etcd on the same ports and data, and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let (client, peer) = (self.url(), format!("http://{}", self.peer));
        let mut command = member_command(
            "gatehouse-test",
            &self.dir.path().join("data"),
            &client,
            &peer,
            &format!("gatehouse-test={peer}"),
        );
        if let Some((_, cert, key)) = &self.tls {
            command.args(["--cert-file", cert, "--key-file", key]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd is installed (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl(&["get", "/ready-check"]).status.success() {
            if Instant::now() > deadline {
                panic!(
                    "etcd did not start:\n{}",
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forgets everything: the next [`Etcd::spawn`] starts an empty etcd on the same ports
    /// (as after losing its disk). Only while stopped.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop etcd first");
        let _ = std::fs::remove_dir_all(self.dir.path().join("data"));
    }

    /// SIGSTOP: etcd hangs, connections stay open and nothing answers.
    pub fn pause(&self) {
        super::signal(self.child.as_ref().expect("running").id(), "STOP");
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&self) {
        super::signal(self.child.as_ref().expect("running").id(), "CONT");
    }

    /// Many puts, one revision each, over one connection (an etcdctl process per put would
    /// take seconds).
    pub async fn put_many(&self, entries: &[(String, String)]) {
        let mut client = etcd_client::Client::connect([self.url()], None)
            .await
            .expect("etcd answers");
        for (key, value) in entries {
            client
                .put(key.as_str(), value.as_str(), None)
                .await
                .expect("put");
        }
    }

    /// `kill -9`: no goodbye to clients.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new("etcdctl");
        if let Some((ca, _, _)) = &self.tls {
            command.args(["--cacert", ca]);
        }
        command
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url(),
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args)
            .output()
            .expect("etcdctl is installed (Debian package etcd-client)")
    }

    pub fn put(&self, key: &str, value: &str) {
        let out = self.ctl(&["put", key, value]);
        assert!(
            out.status.success(),
            "etcdctl put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `etcdctl lease grant`: the lease id, in the hex etcdctl prints.
    pub fn grant(&self, ttl: u32) -> String {
        let out = self.ctl(&["lease", "grant", &ttl.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("lease <id> granted with TTL(..)")
            .to_string()
    }

    /// Puts `key` bound to `lease`, as a registering service does.
    pub fn put_with_lease(&self, lease: &str, key: &str, value: &str) {
        let lease = format!("--lease={lease}");
        let out = self.ctl(&["put", &lease, key, value]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn delete(&self, key: &str) {
        let out = self.ctl(&["del", key]);
        assert!(
            out.status.success(),
            "etcdctl del {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Keys under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.ctl(&["get", prefix, "--prefix", "--keys-only"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The revision of the newest change to the resources under `prefix` (instances'
    /// records left out): the revision a gateway holding them all says it has in force.
    pub async fn resources_revision(&self, prefix: &str) -> u64 {
        let mut client = etcd_client::Client::connect([self.url()], None)
            .await
            .expect("etcd answers");
        let resp = client
            .get(
                format!("{prefix}/"),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("get");
        let records = format!("{prefix}/instances/");
        resp.kvs()
            .iter()
            .filter(|kv| !kv.key().starts_with(records.as_bytes()))
            .map(|kv| kv.mod_revision() as u64)
            .max()
            .unwrap_or(0)
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        let out = self.ctl(&["get", "/", "--prefix", "--limit", "1", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["header"]["revision"].as_u64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An `etcd` member named `name`, its data in `data`, listening for clients on `client`
/// and for its peers on `peer`, in the cluster `initial` (`name=peer-url,...`).
pub fn member_command(
    name: &str,
    data: &std::path::Path,
    client: &str,
    peer: &str,
    initial: &str,
) -> Command {
    let mut command = Command::new("etcd");
    command
        .args(["--name", name, "--data-dir"])
        .arg(data)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", initial]);
    command
}

/// A route's value as stored in etcd: JSON, `path` to `upstream`.
pub fn route_value(path: &str, upstream: &str) -> String {
    format!("{{\"match\": {{\"paths\": [\"{path}\"]}}, \"upstream\": \"{upstream}\"}}")
}

/// An upstream's value as stored in etcd: one node at `addr`.
pub fn upstream_value(addr: std::net::SocketAddr) -> String {
    format!("nodes: [{{ addr: \"{addr}\" }}]\n")
}
