//! Servers written in Python, the real peers of the protocols they speak (grpcio,
//! websockets): started on a free port they print as `PORT <n>`, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct PythonServer {
    child: Child,
    pub port: u16,
}

impl PythonServer {
    /// Runs `python3 SCRIPT ARGS...` and waits for the port it serves on. The script stops
    /// when its standard input closes, or is killed when this is dropped.
    pub fn start(script: &str, args: &[&str]) -> PythonServer {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("python3 {script}: {e} (scripts/setup --test installs its packages)")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
        PythonServer { child, port }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
