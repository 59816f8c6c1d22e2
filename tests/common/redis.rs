//! A real Redis for tests: `redis-server` on a random loopback port, without persistence,
//! stopped by pid. It can be paused (SIGSTOP), resumed, killed and started again on the
//! same port.

use super::free_addr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            addr: free_addr(),
            dir: tempfile::tempdir().unwrap(),
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts (or starts again) on the same port, and waits until it answers PING.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", &self.addr.ip().to_string()])
            .args(["--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server starts (install the redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "redis never answered:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it: the port refuses connections after.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one command and reads the first line of the answer (with its type byte), or
    /// `None` when the server does not answer within a second.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => answer.push(byte[0]),
                _ => return None,
            }
        }
        answer.truncate(answer.len() - 2);
        Some(String::from_utf8_lossy(&answer).into_owned())
    }

    /// The keys the server holds.
    pub fn key_count(&self) -> u64 {
        let answer = self.command(&["DBSIZE"]).expect("redis answers");
        answer.trim_start_matches(':').parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL: a paused server dies of it too.
        self.kill();
    }
}
