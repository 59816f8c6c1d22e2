//! How long a change in etcd takes to be in force, with 10,000 routes loaded.
//!
//! Starts a real etcd (on random loopback ports, own data directory) and the release
//! gatehouse binary, loads 10,000 routes on 10 upstreams, then 200 times: puts a new route,
//! and polls the proxy until that route answers. Reports P50/P99 of put-to-in-force, and of
//! the gateway's own apply time (admission + compilation + swap, from its log).
//!
//! Run: `cargo bench --bench etcd_reload` (needs `etcd` on the PATH). ROUTES and PUTS
//! override the sizes.

use etcd_client::{Client, Txn, TxnOp};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn route(i: usize) -> String {
    format!(
        "{{\"match\": {{\"paths\": [\"/svc{i}/v1/**\", \"/items{i}/{{id}}\"], \"methods\": [\"GET\", \"POST\"]}}, \"upstream\": \"u{}\"}}",
        i % 10
    )
}

#[tokio::main]
async fn main() {
    let routes: usize = std::env::var("ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let puts: usize = std::env::var("PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (client_addr, peer_addr) = (free_addr(), free_addr());
    let (client_url, peer_url) = (
        format!("http://{client_addr}"),
        format!("http://{peer_addr}"),
    );
    let _etcd = Killed(
        Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd on the PATH"),
    );
    let mut etcd = loop {
        if let Ok(mut c) = Client::connect([&client_url], None).await {
            if c.get("/x", None).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let loading = Instant::now();
    for u in 0..10 {
        etcd.put(
            format!("/gatehouse/upstreams/u{u}"),
            "{\"nodes\": [{\"addr\": \"127.0.0.1:9\"}]}",
            None,
        )
        .await
        .unwrap();
    }
    for chunk in (0..routes).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("/gatehouse/routes/r{i}"), route(*i), None))
            .collect();
        etcd.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    println!(
        "loaded {routes} routes into etcd in {:?}",
        loading.elapsed()
    );

    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [{{ addr: \"{listen}\" }}]\nthreads: 1\nadmin: {{ listen: \"{admin}\" }}\nprovider: {{ etcd: {{ endpoints: [\"{client_url}\"], prefix: /gatehouse }} }}\n"
        ),
    )
    .unwrap();
    let log_path = dir.path().join("gatehouse.log");
    let _gatehouse = Killed(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["run", "-c", config.to_str().unwrap()])
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .arg("--pid-file")
            .arg(dir.path().join("pid"))
            .env("GATEHOUSE_LOG", "info")
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status_url = format!("http://{admin}/admin/status");
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(&status_url).send().await {
            if let Ok(s) = r.json::<serde_json::Value>().await {
                if s["routes"].as_u64() == Some(routes as u64) {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "gatehouse did not load the routes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("gatehouse loaded them in {:?}", started.elapsed());
    let applies_before = std::fs::read_to_string(&log_path)
        .unwrap()
        .matches("configuration applied")
        .count();

    let mut latencies = Vec::with_capacity(puts);
    for i in 0..puts {
        let probe = format!("http://{listen}/probe{i}");
        let value = format!("{{\"match\": {{\"paths\": [\"/probe{i}\"]}}, \"direct_response\": {{\"status\": 200}}}}");
        let put = Instant::now();
        etcd.put(format!("/gatehouse/routes/probe{i}"), value, None)
            .await
            .unwrap();
        loop {
            if http
                .get(&probe)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(
                put.elapsed() < Duration::from_secs(10),
                "probe{i} never came into force"
            );
        }
        latencies.push(put.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let mut applies: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("configuration applied"))
        .skip(applies_before)
        .filter_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    applies.sort_by(f64::total_cmp);

    println!("\nput -> in force through the proxy, {routes} routes, {puts} puts:");
    println!(
        "  p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    if !applies.is_empty() {
        println!(
            "gatehouse apply (admission + compile + swap), {} applies:",
            applies.len()
        );
        println!(
            "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            percentile(&applies, 0.5),
            percentile(&applies, 0.99),
            applies[applies.len() - 1]
        );
    }
}
