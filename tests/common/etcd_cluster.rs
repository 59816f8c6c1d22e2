//! A real three-member etcd cluster on loopback: each member its own data directory and
//! random ports, quick elections, members killed and restarted by pid.

use super::free_addr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Members heartbeat every 50 ms and call an election after 500 ms without one, so a lost
/// leader is replaced within about a second.
const HEARTBEAT_MS: &str = "50";
const ELECTION_MS: &str = "500";
/// The bound of every wait on the cluster.
const WAIT: Duration = Duration::from_secs(20);
/// How often a condition is checked again (an `etcdctl` call itself takes some 30 ms).
const POLL: Duration = Duration::from_millis(10);

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

impl Member {
    fn url(&self) -> String {
        format!("http://{}", self.client)
    }
}

/// What one member says of itself (`etcdctl endpoint status`).
#[derive(Debug, Clone, Copy)]
struct Status {
    index: usize,
    member_id: u64,
    /// The member it follows; its own id when it leads, 0 when it knows of no leader.
    leader: u64,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members and waits until every one answers and one of them leads.
    pub fn start() -> EtcdCluster {
        let members = (0..3)
            .map(|i| Member {
                name: format!("member-{i}"),
                client: free_addr(),
                peer: free_addr(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait("every member to answer and one to lead", |c| {
            let statuses = c.statuses();
            (statuses.len() == c.members.len() && leader_of(&statuses).is_some()).then_some(())
        });
        cluster
    }

    /// Every member's client URL, running or not.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// The members running now.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    /// The index of the member that leads now (waits, bounded, while there is none).
    pub fn leader(&self) -> usize {
        self.wait("a leader", |c| leader_of(&c.statuses()))
    }

    /// Waits (bounded) until a member other than `old` leads; which one, and when that was
    /// first seen.
    pub fn wait_leader_other_than(&self, old: usize) -> (usize, Instant) {
        self.wait(&format!("a leader other than member {old}"), |c| {
            leader_of(&c.statuses())
                .filter(|&i| i != old)
                .map(|i| (i, Instant::now()))
        })
    }

    /// Hands the leadership to member `to` (`etcdctl move-leader`, sent to the leader) and
    /// waits (bounded) until it leads.
    pub fn move_leader(&self, to: usize) {
        let from = self.leader();
        if from == to {
            return;
        }
        let id = self
            .statuses()
            .iter()
            .find(|s| s.index == to)
            .unwrap_or_else(|| panic!("member {to} answers"))
            .member_id;
        let out = self.ctl(
            &[self.members[from].url()],
            &["move-leader", &format!("{id:x}")],
        );
        assert!(
            out.status.success(),
            "etcdctl move-leader: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait(&format!("member {to} to lead"), |c| {
            (leader_of(&c.statuses()) == Some(to)).then_some(())
        });
    }

    /// `kill -9` of member `i`: no goodbye to its peers or clients.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data, and waits (bounded) until it follows
    /// the leader and has caught up (a linearizable read through it alone succeeds).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        let url = [self.members[i].url()];
        self.wait(&format!("member {i} to rejoin"), |c| {
            let follows = c.statuses().iter().any(|s| s.index == i && s.leader != 0);
            let reads = || c.ctl(&url, &["get", "/rejoin-check"]).status.success();
            (follows && reads()).then_some(())
        });
    }

    /// Puts `key` through the members running now; the revision etcd made it at. Returns
    /// once etcd has acknowledged it, so the caller's clock starts at the acknowledgement.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let urls: Vec<String> = self
            .alive()
            .iter()
            .map(|&i| self.members[i].url())
            .collect();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let mut client = etcd_client::Client::connect(&urls, Some(options))
            .await
            .expect("the cluster answers");
        let resp = client.put(key, value, None).await.expect("put");
        resp.header().expect("a response header").revision()
    }

    /// The member serving the one watch on the cluster (a gateway's), once exactly one
    /// running member serves one (waits, bounded).
    pub fn watched(&self) -> usize {
        self.wait("exactly one member to serve a watch", |c| {
            let serving: Vec<usize> = c
                .alive()
                .into_iter()
                .filter(|&i| c.watchers(i) > 0)
                .collect();
            (serving.len() == 1).then(|| serving[0])
        })
    }

    /// How many watches member `i` serves now (etcd's `etcd_debugging_mvcc_watcher_total`).
    fn watchers(&self, i: usize) -> u64 {
        let mut stream = std::net::TcpStream::connect(self.members[i].client).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .unwrap_or_else(|| panic!("no watcher count from member {i}:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The members' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                format!("--- {}\n{log}", m.name)
            })
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let token = format!(
            "gatehouse-test-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        );
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .unwrap();
        let (client, peer) = (member.url(), format!("http://{}", member.peer));
        let child = super::etcd::member_command(
            &member.name,
            &self.dir.path().join(&member.name),
            &client,
            &peer,
            &initial.join(","),
        )
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", &token])
        .args(["--heartbeat-interval", HEARTBEAT_MS])
        .args(["--election-timeout", ELECTION_MS])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("etcd is installed (Debian package etcd-server)");
        self.members[i].child = Some(child);
    }

    /// What the members running now say of themselves; a member that does not answer is
    /// left out.
    fn statuses(&self) -> Vec<Status> {
        let alive = self.alive();
        let urls: Vec<String> = alive.iter().map(|&i| self.members[i].url()).collect();
        let out = self.ctl(&urls, &["endpoint", "status", "-w", "json"]);
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return Vec::new();
        };
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let index = urls.iter().position(|u| s["Endpoint"] == u.as_str())?;
                Some(Status {
                    index: alive[index],
                    member_id: s["Status"]["header"]["member_id"].as_u64()?,
                    leader: s["Status"]["leader"].as_u64().unwrap_or(0),
                })
            })
            .collect()
    }

    fn ctl(&self, urls: &[String], args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &urls.join(",")])
            .args(["--dial-timeout", "1s", "--command-timeout", "2s"])
            .args(args)
            .output()
            .expect("etcdctl is installed (Debian package etcd-client)")
    }

    /// Checks `check` every [`POLL`] until it answers, for at most [`WAIT`].
    fn wait<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The member that says it leads: its leader is itself.
fn leader_of(statuses: &[Status]) -> Option<usize> {
    statuses
        .iter()
        .find(|s| s.leader != 0 && s.leader == s.member_id)
        .map(|s| s.index)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
