//! Test harness: the real gatehouse binary, real upstream HTTP servers, random loopback ports,
//! every wait bounded, everything stopped by pid when the test ends.

#![allow(dead_code)]

pub mod etcd;
pub mod etcd_cluster;
pub mod grpc_client;
pub mod idp;
pub mod otlp;
pub mod python;
pub mod recorder;
pub mod redis;
pub mod traffic;
pub mod upstream;

#[allow(unused_imports)]
pub use traffic::Traffic;

#[allow(unused_imports)]
pub use etcd::Etcd;

#[allow(unused_imports)]
pub use etcd_cluster::EtcdCluster;

#[allow(unused_imports)]
pub use upstream::{Echo, TestUpstream};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A loopback port reserved for a server this test starts: no other test process is handed
/// it in the meantime.
///
/// Binding port 0 and releasing it, as this once did, let the kernel hand the same port to
/// another test's `bind(0)` before our server bound it (tests run in parallel processes).
/// Instead, one connection is made to the port and closed from the listening side first,
/// which leaves the port in TIME_WAIT for a minute: the kernel never picks a port in that
/// state for `bind(0)`, while a server that binds it by number with SO_REUSEADDR (gatehouse,
/// etcd, tokio and std listeners all set it) gets it at once.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let client = std::net::TcpStream::connect(addr).expect("a connection to the reservation");
    let (server, _) = listener.accept().expect("the reservation's connection");
    drop(server); // the listening side closes first, so TIME_WAIT holds this port
    let mut client = client;
    let _ = std::io::Read::read(&mut client, &mut [0u8; 1]); // wait for that close
    drop(client);
    drop(listener);
    addr
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// Starts the binary on the bootstrap config `yaml` and expects startup to stop: its
/// standard error, which should name what is wrong.
pub fn startup_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = Command::new(bin())
        .args(["run", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with:\n{yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTP client that never goes through a proxy and never follows redirects.
/// An HTTP/2 (prior knowledge) client, connected by a first call to `ready` (which must
/// answer `status`), that then gives up on a call to `url` after 500 ms: its stream is
/// reset, its connection kept. Returned for the calls that follow on that connection.
pub async fn h2_giving_up(ready: &str, status: u16, url: &str) -> reqwest::Client {
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // Connected first, so the call is under way well within its timeout.
    let resp = h2.get(ready).send().await.unwrap();
    assert_eq!(resp.status(), status, "{ready}");
    let gave_up = h2.get(url).timeout(Duration::from_millis(500)).send().await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()), "{url}");
    h2
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GETs `path` with `headers`: the status, and which test upstream answered (its
/// `X-Upstream`, empty when the gateway answered itself).
pub async fn served_by(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let name = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, name)
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running gatehouse with its own directory, config and resource files.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub api_key: String,
}

pub struct GatewayBuilder {
    files: Vec<(String, String)>,
    extra: String,
    api_key: String,
    tls: Option<(SocketAddr, String, String)>,
    etcd: Option<(Vec<String>, String)>,
    etcd_user: Option<(String, String)>,
    etcd_ca: Option<String>,
    etcd_cache: Option<PathBuf>,
    env: Vec<(String, String)>,
    program: Option<PathBuf>,
}

impl GatewayBuilder {
    /// Another program than the `gatehouse` binary (one built on the library).
    pub fn program(mut self, path: PathBuf) -> Self {
        self.program = Some(path);
        self
    }

    /// An environment variable for the gateway process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// A resource file under the gateway's `routes/`.
    pub fn file(mut self, name: &str, content: impl Into<String>) -> Self {
        self.files.push((name.to_string(), content.into()));
        self
    }

    /// More bootstrap config (top-level keys other than listen, admin and provider).
    pub fn config(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    /// Resources from etcd at `url` under `prefix`, instead of files.
    pub fn etcd(self, url: &str, prefix: &str) -> Self {
        self.etcd_endpoints(&[url.to_string()], prefix)
    }

    /// Resources from the etcd cluster whose members answer at `urls`, under `prefix`.
    pub fn etcd_endpoints(mut self, urls: &[String], prefix: &str) -> Self {
        self.etcd = Some((urls.to_vec(), prefix.to_string()));
        self
    }

    /// The CA that signed etcd's certificate.
    pub fn etcd_ca(mut self, ca: &str) -> Self {
        self.etcd_ca = Some(ca.to_string());
        self
    }

    /// The last-known-good cache file of the etcd provider.
    pub fn etcd_cache(mut self, path: &Path) -> Self {
        self.etcd_cache = Some(path.to_path_buf());
        self
    }

    /// Credentials for etcd.
    pub fn etcd_user(mut self, user: &str, password: &str) -> Self {
        self.etcd_user = Some((user.to_string(), password.to_string()));
        self
    }

    /// A second, TLS listener.
    pub fn tls_listener(mut self, addr: SocketAddr, cert: &str, key: &str) -> Self {
        self.tls = Some((addr, cert.to_string(), key.to_string()));
        self
    }

    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = key.to_string();
        self
    }

    /// Starts the process and waits until it is ready. Should a port it was given be taken
    /// after all (by a process outside the tests), it starts again on fresh ports.
    pub async fn start(self) -> Gateway {
        for _ in 0..3 {
            let mut gw = self.launch();
            match gw.ready_or_exit().await {
                Ok(()) => return gw,
                Err(logs) if logs.contains("Address already in use") => continue,
                Err(logs) => panic!("gatehouse exited early:\n{logs}"),
            }
        }
        panic!("gatehouse found its ports taken three times");
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(self) -> Gateway {
        self.launch()
    }

    fn launch(&self) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes");
        std::fs::create_dir(&routes).unwrap();
        for (name, content) in &self.files {
            std::fs::write(routes.join(name), content).unwrap();
        }
        let addr = free_addr();
        let admin = free_addr();
        let tls = match &self.tls {
            Some((tls_addr, cert, key)) => {
                format!(", {{ addr: \"{tls_addr}\", tls: {{ cert: \"{cert}\", key: \"{key}\" }} }}")
            }
            None => String::new(),
        };
        let provider = match &self.etcd {
            Some((urls, prefix)) => {
                let endpoints: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
                let endpoints = endpoints.join(", ");
                let mut user = match &self.etcd_user {
                    Some((u, p)) => format!(", username: \"{u}\", password: \"{p}\""),
                    None => String::new(),
                };
                if let Some(ca) = &self.etcd_ca {
                    user.push_str(&format!(", tls: {{ ca: \"{ca}\" }}"));
                }
                if let Some(cache) = &self.etcd_cache {
                    user.push_str(&format!(", cache: \"{}\"", cache.display()));
                }
                format!(
                    "  etcd: {{ endpoints: [{endpoints}], prefix: \"{prefix}\", timeout: 1s{user} }}"
                )
            }
            None => format!(
                "  file: {{ paths: [\"{}\"], watch: true }}",
                routes.display()
            ),
        };
        let config = format!(
            "listen: [{{ addr: \"{addr}\" }}{tls}]\nthreads: 2\nadmin: {{ listen: \"{admin}\", api_key: \"{key}\" }}\nprovider:\n{provider}\n{extra}",
            key = self.api_key,
            extra = self.extra,
        );
        let config_path = dir.path().join("gatehouse.yaml");
        std::fs::write(&config_path, config).unwrap();
        let child = spawn_program(
            self.program.as_deref().unwrap_or(Path::new(bin())),
            dir.path(),
            &["run", "-c", config_path.to_str().unwrap()],
            &self.env,
        );
        Gateway {
            child: Some(child),
            addr,
            admin,
            dir,
            api_key: self.api_key.clone(),
        }
    }
}

/// Starts the binary with logs going to files in `dir`.
pub fn spawn_gatehouse(dir: &Path, args: &[&str]) -> Child {
    spawn_gatehouse_with_env(dir, args, &[])
}

pub fn spawn_gatehouse_with_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Child {
    spawn_program(Path::new(bin()), dir, args, env)
}

fn spawn_program(program: &Path, dir: &Path, args: &[&str], env: &[(String, String)]) -> Child {
    let log = std::fs::File::create(dir.join("gatehouse.log")).unwrap();
    let out = std::fs::File::create(dir.join("gatehouse.out")).unwrap();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if args.first() == Some(&"run") {
        all.extend([
            "--upgrade-sock".into(),
            dir.join("upgrade.sock").display().to_string(),
            "--pid-file".into(),
            dir.join("gatehouse.pid").display().to_string(),
        ]);
    }
    Command::new(program)
        .args(&all)
        .env("GATEHOUSE_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the gatehouse binary starts")
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            files: Vec::new(),
            extra: String::new(),
            api_key: String::new(),
            tls: None,
            etcd: None,
            etcd_user: None,
            etcd_ca: None,
            etcd_cache: None,
            env: Vec::new(),
            program: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gatehouse.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        if let Err(logs) = self.ready_or_exit().await {
            panic!("gatehouse exited early:\n{logs}");
        }
    }

    /// Waits until ready; `Err` with the logs if the process exited first.
    async fn ready_or_exit(&mut self) -> Result<(), String> {
        let c = client();
        let url = self.admin_url("/readyz");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("({status})\n{}", self.logs()));
            }
            if let Ok(resp) = c.get(&url).send().await {
                if resp.status() == 200 {
                    // The proxy listener starts alongside the admin one; make sure it accepts.
                    if std::net::TcpStream::connect(self.addr).is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("gatehouse not ready in 20s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Asserts the process is alive but not ready: the admin listener answers, `/readyz`
    /// says 503 and keeps saying it.
    pub async fn assert_unready(&self) {
        let c = client();
        let readyz = self.admin_url("/readyz");
        eventually(Duration::from_secs(10), "the admin listener", || async {
            c.get(&readyz).send().await.is_ok()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            c.get(&readyz).send().await.unwrap().status(),
            503,
            "not ready"
        );
        assert_eq!(
            c.get(self.admin_url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "but alive"
        );
    }

    /// The path of a resource file.
    pub fn route_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("routes").join(name)
    }

    /// Replaces a resource file the way editors do: write aside, then rename over it.
    pub fn write_file(&self, name: &str, content: &str) {
        let target = self.route_file(name);
        let aside = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, &target).unwrap();
    }

    pub async fn status(&self) -> serde_json::Value {
        let mut req = client().get(self.admin_url("/admin/status"));
        if !self.api_key.is_empty() {
            req = req.bearer_auth(&self.api_key);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    /// The Prometheus text on `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let resp = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the revision in force is past `revision`; returns the new status.
    pub async fn wait_revision_after(&self, revision: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status().await;
            if status["revision"].as_u64().unwrap() > revision {
                return status;
            }
            if Instant::now() > deadline {
                panic!("no reload after revision {revision}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.terminate_after_exit(Duration::from_secs(15))
    }

    /// Waits (bounded) for the process to exit on its own; kills it past `limit`.
    pub fn terminate_after_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gatehouse did not exit within {limit:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the `openssl` command in `dir` (tests make their certificates with it).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a new gatehouse that takes over `old`'s listeners (`run --upgrade`), waits until it
/// listens on the upgrade socket, then tells `old` to hand over (SIGQUIT). Returns the new
/// process and the folder of its log.
pub async fn upgrade(old: &Gateway) -> (Child, tempfile::TempDir) {
    let config = old.dir.path().join("gatehouse.yaml");
    let new_dir = tempfile::tempdir().unwrap();
    let upgrade_sock = old.dir.path().join("upgrade.sock");
    let new = Command::new(bin())
        .args(["run", "-c", config.to_str().unwrap(), "--upgrade"])
        .args(["--upgrade-sock", upgrade_sock.to_str().unwrap()])
        .args(["--pid-file", new_dir.path().join("pid").to_str().unwrap()])
        .stderr(std::fs::File::create(new_dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the new process to wait for sockets",
        || {
            let sock = upgrade_sock.clone();
            async move { sock.exists() }
        },
    )
    .await;
    signal(old.pid(), "QUIT");
    (new, new_dir)
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (at most `limit`) for the gateway to close `s`; true when it did.
pub fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The status `path` answers with (0 when the request fails).
pub async fn status_of(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Waits (at most 10 s) until `path` answers `status`.
pub async fn wait_status(gw: &Gateway, path: &str, status: u16) {
    eventually(
        Duration::from_secs(10),
        &format!("{path} to answer {status}"),
        || async { status_of(gw, path).await == status },
    )
    .await;
}
