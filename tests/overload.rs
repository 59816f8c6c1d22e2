//! An upstream driven past its capacity, with and without a concurrency limit (SPEC §11).
//!
//! The upstream serves 50 requests at a time, each for 250 ms (200 requests/s), and queues
//! the rest first come first served: the more requests arrive, the longer each waits. An
//! open-loop driver sends three times that (600 requests/s) through the gateway, each
//! request on its own task, so a slow answer never slows the sending. Without a limit every
//! request is admitted and queues at the upstream, and latency grows for as long as the load
//! lasts; with `concurrency.adaptive` the gateway refuses what the upstream cannot take at
//! once (503 `overloaded`), so the requests it admits keep their unloaded latency while the
//! upstream stays busy.
//!
//! Both tests load the whole machine for several seconds and measure latency: they must not
//! run beside each other (nor, ideally, beside other tests). Within one test process a lock
//! serialises them; under nextest (one process per test) the test group of
//! `.config/nextest.toml` does. `benches/load/overload.sh` runs them in the release profile
//! and tabulates the `figures:` line each prints.

mod common;

use common::upstream::read_request;
use common::Gateway;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Requests the upstream serves at once.
const CAPACITY: usize = 50;
/// How long the upstream takes over each request it serves.
const SERVICE: Duration = Duration::from_millis(250);
/// Requests per second the upstream can serve: 50 / 0.25 s.
const CAPACITY_PER_SECOND: f64 = 200.0;
/// Three times the upstream's capacity.
const LOAD_PER_SECOND: f64 = 3.0 * CAPACITY_PER_SECOND;
/// The rate of the unloaded measurement: at most 4 requests in flight at once, fewer than
/// the adaptive limit's `min` (5), so no limit ever refuses one, not even a limit pinned to
/// `min` while it measures the upstream's round-trip time with no load.
const UNLOADED_PER_SECOND: f64 = 12.0;
const UNLOADED_FOR: Duration = Duration::from_secs(4);

/// The two tests must not load the machine at the same time (see the module's comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The upstream of these tests: a keep-alive HTTP/1.1 server that serves `CAPACITY`
/// requests at a time for `SERVICE` each. A request past those waits its turn in a FIFO
/// queue (a fair semaphore), so latency grows with the queue.
struct SlowUpstream {
    addr: SocketAddr,
    /// For each request served, in order: when its service ended, and how long it waited
    /// in the queue before its service began.
    served: Arc<Mutex<Vec<(Instant, Duration)>>>,
    /// Requests received and not yet answered (queued or in service), and their peak.
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    async fn start() -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let permits = Arc::new(Semaphore::new(CAPACITY));
        let served = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, f, p) = (served.clone(), in_flight.clone(), peak.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (permits, s, f, p) = (permits.clone(), s.clone(), f.clone(), p.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(stream);
                    while let Ok(Some(_request)) = read_request(&mut conn).await {
                        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        let queued = Instant::now();
                        let permit = permits.acquire().await.expect("never closed");
                        let waited = queued.elapsed();
                        tokio::time::sleep(SERVICE).await;
                        drop(permit);
                        s.lock().unwrap().push((Instant::now(), waited));
                        f.fetch_sub(1, Ordering::SeqCst);
                        let answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
                        if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowUpstream {
            addr,
            served,
            in_flight,
            peak,
            task,
        }
    }

    /// How long each request whose service ended in `[from, to)` waited in the queue.
    fn served_between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let served = self.served.lock().unwrap();
        served
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, waited)| *waited)
            .collect()
    }

    /// The most requests it held at once (queued or in service).
    fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Upstream `slow` (with `extra` lines) and route `/slow` to it, with timeouts long enough
/// for the longest queue these tests build.
fn routes(up: &SlowUpstream, extra: &str) -> String {
    format!(
        "kind: Upstream\nid: slow\nnodes: [{{ addr: \"{}\" }}]\n{extra}---\n\
         kind: Route\nid: slow\nmatch: {{ paths: [\"/slow\"] }}\nupstream: slow\n\
         timeouts: {{ connect: 1s, read: 60s, write: 60s }}\n",
        up.addr
    )
}

async fn gateway(routes: String) -> Gateway {
    Gateway::builder()
        .file("r.yaml", routes)
        .config("telemetry: { access_log: { target: off } }")
        .env("GATEHOUSE_LOG", "warn")
        .start()
        .await
}

/// Without a limit thousands of requests are in flight at once, each on its own connection
/// to the gateway and from it to the upstream: this process (and the gateway, which
/// inherits it) may open as many descriptors as the hard limit allows.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const NEEDED: u64 = 8192;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < NEEDED {
        // Raising the hard limit takes privilege (CI runs as root); without it the
        // assertion below says what is missing.
        let _ = setrlimit(Resource::RLIMIT_NOFILE, NEEDED, NEEDED);
    } else if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= NEEDED,
        "these tests need an open-file limit of at least {NEEDED}, not {soft}"
    );
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok,
    /// 503 with `{"error": "overloaded"}`.
    Overloaded,
    /// Any other answer: its status and (the start of) its body.
    Other(u16, String),
    /// No answer within the driver's timeout.
    TimedOut,
    /// The request failed otherwise (connection refused or reset, ...).
    Failed(String),
}

struct Sample {
    /// When it was sent, from the start of the run.
    sent: Duration,
    /// From sending to the last byte of the answer.
    latency: Duration,
    answer: Answer,
}

struct Run {
    start: Instant,
    /// How long the sending took (the driver's own lateness shows here).
    sending: Duration,
    samples: Vec<Sample>,
}

impl Run {
    /// Samples sent in `[from, to)` (from the start of the run) whose answer is `answer`.
    fn sent_between(&self, from: Duration, to: Duration, answer: &Answer) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.sent >= from && s.sent < to && s.answer == *answer)
            .collect()
    }
}

async fn one_request(client: &reqwest::Client, url: &str) -> Answer {
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            Answer::TimedOut
        } else {
            Answer::Failed(e.to_string())
        }
    };
    let resp = match client.get(url).send().await {
        Ok(resp) => resp,
        Err(e) => return failed(e),
    };
    let status = resp.status().as_u16();
    let body = match resp.bytes().await {
        Ok(body) => body,
        Err(e) => return failed(e),
    };
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    match (status, error.as_deref()) {
        (200, _) => Answer::Ok,
        (503, Some("overloaded")) => Answer::Overloaded,
        _ => {
            let text = String::from_utf8_lossy(&body);
            Answer::Other(status, text.chars().take(200).collect())
        }
    }
}

/// Sends `rate` requests per second to `url` for `length`, open loop: a tick every
/// 1/rate s sends one on a task of its own, whatever became of the earlier ones (ticks
/// missed while the process was busy are caught up at once). Every request gives up after
/// `timeout`; returns once all have an outcome.
async fn drive(url: &str, rate: f64, length: Duration, timeout: Duration) -> Run {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap();
    let count = (rate * length.as_secs_f64()).round() as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count);
    ticks.tick().await;
    let start = Instant::now();
    for i in 0..count {
        if i > 0 {
            ticks.tick().await;
        }
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = one_request(&client, &url).await;
            Sample {
                sent: sent - start,
                latency: sent.elapsed(),
                answer,
            }
        }));
    }
    let sending = start.elapsed();
    // Each request is bounded by its own timeout; this only guards against a lost task.
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(10);
    let mut samples = Vec::with_capacity(count);
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(sample) => samples.push(sample.expect("a request's task ends without panic")),
            Err(_) => panic!("a request outlived its own timeout of {timeout:?}"),
        }
    }
    Run {
        start,
        sending,
        samples,
    }
}

/// The `p` quantile (0..=1) of `latencies` (nearest rank).
fn quantile(latencies: &[Duration], p: f64) -> Duration {
    assert!(!latencies.is_empty(), "a quantile of no latencies");
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latencies(samples: &[&Sample]) -> Vec<Duration> {
    samples.iter().map(|s| s.latency).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The P99 of the route with no load: `UNLOADED_PER_SECOND` for `UNLOADED_FOR`, every
/// request answered 200 (after a few sequential ones that set up connections and are not
/// counted).
async fn unloaded_p99(gw: &Gateway) -> Duration {
    let client = common::client();
    for _ in 0..3 {
        let status = client.get(gw.url("/slow")).send().await.unwrap().status();
        assert_eq!(status, 200, "the route answers before any load");
    }
    let run = drive(
        &gw.url("/slow"),
        UNLOADED_PER_SECOND,
        UNLOADED_FOR,
        Duration::from_secs(10),
    )
    .await;
    let others: Vec<&Answer> = run
        .samples
        .iter()
        .map(|s| &s.answer)
        .filter(|a| **a != Answer::Ok)
        .collect();
    assert!(
        others.is_empty(),
        "with no load every request is answered 200: {others:?}"
    );
    let all: Vec<&Sample> = run.samples.iter().collect();
    quantile(&latencies(&all), 0.99)
}

/// The gateway's own view of the limit, when it exports one.
async fn limit_metrics(gw: &Gateway) -> String {
    gw.metrics_text()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("gatehouse_upstream_concurrency_limit")
                || l.starts_with("gatehouse_overloaded_total")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_limit_latency_grows_without_bound() {
    let _serial = SERIAL.lock().await;
    raise_open_file_limit();
    let up = SlowUpstream::start().await;
    let gw = gateway(routes(&up, "")).await;
    let unloaded = unloaded_p99(&gw).await;

    // Three times the capacity for 3 s: 1,800 requests, of which the upstream can serve
    // 600 in that time; the rest queue, the last ones for about 6 s.
    let length = Duration::from_secs(3);
    let run = drive(
        &gw.url("/slow"),
        LOAD_PER_SECOND,
        length,
        Duration::from_secs(30),
    )
    .await;
    let others: Vec<(Duration, &Answer)> = run
        .samples
        .iter()
        .filter(|s| s.answer != Answer::Ok)
        .map(|s| (s.sent, &s.answer))
        .take(10)
        .collect();
    assert!(
        others.is_empty(),
        "with no limit every request is admitted and answered 200, however late: {others:?}"
    );
    let all: Vec<&Sample> = run.samples.iter().collect();
    let loaded = quantile(&latencies(&all), 0.99);
    let second = Duration::from_secs(1);
    let first = quantile(
        &latencies(&run.sent_between(Duration::ZERO, second, &Answer::Ok)),
        0.5,
    );
    let last = quantile(
        &latencies(&run.sent_between(length - second, length, &Answer::Ok)),
        0.5,
    );
    // What the upstream served while the load lasted (its first 250 ms served nothing yet).
    let waits = up.served_between(run.start, run.start + length);
    let served = waits.len() as f64 / length.as_secs_f64();
    let queue = quantile(&waits, 0.99);
    let admitted = all.len() as f64 / run.sending.as_secs_f64();
    println!(
        "without a limit: unloaded P99 {:.0} ms; at {LOAD_PER_SECOND}/s for {length:?} (sent \
         in {:.2?}): P99 {:.0} ms ({:.1}x), median of the first second {:.0} ms, of the last \
         {:.0} ms; upstream served {served:.1}/s, P99 of its queue wait {:.0} ms, peak {} in \
         flight at it; admitted {admitted:.1}/s, refused 0/s",
        ms(unloaded),
        run.sending,
        ms(loaded),
        ms(loaded) / ms(unloaded),
        ms(first),
        ms(last),
        ms(queue),
        up.peak_in_flight(),
    );
    println!(
        "figures: case=none unloaded_p99_ms={:.0} loaded_p99_ms={:.0} ratio={:.2} \
         first_median_ms={:.0} last_median_ms={:.0} served_per_s={served:.1} \
         queue_p99_ms={:.0} admitted_per_s={admitted:.1} refused_per_s=0.0 \
         refused_p99_ms=- peak_in_flight={}",
        ms(unloaded),
        ms(loaded),
        ms(loaded) / ms(unloaded),
        ms(first),
        ms(last),
        ms(queue),
        up.peak_in_flight(),
    );
    assert!(
        loaded > unloaded * 4,
        "the queue makes the loaded P99 ({loaded:?}) far more than the unloaded one ({unloaded:?})"
    );
    assert!(
        last > first * 2,
        "latency keeps growing while the load lasts: the median of the last second's \
         requests ({last:?}) is well above the first second's ({first:?})"
    );
    assert_eq!(up.in_flight(), 0, "every request was answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_concurrency_keeps_admitted_latency_and_uses_the_capacity() {
    let _serial = SERIAL.lock().await;
    raise_open_file_limit();
    let up = SlowUpstream::start().await;
    let gw = gateway(routes(
        &up,
        "concurrency:\n  adaptive: { min: 5, max: 1000 }\n",
    ))
    .await;
    let status = gw.status().await;
    let rejected = status["rejected"].as_array().cloned().unwrap_or_default();
    assert!(
        rejected.is_empty(),
        "the gateway does not take an upstream with `concurrency.adaptive`: {rejected:?}"
    );
    let unloaded = unloaded_p99(&gw).await;

    // Three times the capacity for 15 s. The limit needs a warm-up: it first measures the
    // upstream's round-trip time with no load (concurrency pinned to `min` for a few dozen
    // requests), then grows window by window. Only requests sent after the first 5 s are
    // counted; the whole run is checked for answers other than 200 and 503 `overloaded`.
    let warm_up = Duration::from_secs(5);
    let length = Duration::from_secs(15);
    // An admitted request takes about 250 ms; 5 s is far past anything these assertions
    // accept, and bounds the run should the limit not work.
    let run = drive(
        &gw.url("/slow"),
        LOAD_PER_SECOND,
        length,
        Duration::from_secs(5),
    )
    .await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for s in &run.samples {
        let key = match &s.answer {
            Answer::Ok => "200".to_string(),
            Answer::Overloaded => "503 overloaded".to_string(),
            Answer::Other(status, _) => format!("{status} other"),
            Answer::TimedOut => "timed out".to_string(),
            Answer::Failed(_) => "failed".to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }

    let admitted = run.sent_between(warm_up, length, &Answer::Ok);
    let refused = run.sent_between(warm_up, length, &Answer::Overloaded);
    let window = (length - warm_up).as_secs_f64();
    // What the upstream itself served in the counted part, by when each service ended.
    let waits = up.served_between(run.start + warm_up, run.start + length);
    let served = waits.len() as f64 / window;
    let admitted_per_s = admitted.len() as f64 / window;
    let refused_per_s = refused.len() as f64 / window;
    let some_quantile = |d: &[Duration], p: f64| (!d.is_empty()).then(|| quantile(d, p));
    let loaded = some_quantile(&latencies(&admitted), 0.99);
    let refused_p99 = some_quantile(&latencies(&refused), 0.99);
    let queue = some_quantile(&waits, 0.99);
    let second = Duration::from_secs(1);
    let median_of = |from: Duration| {
        some_quantile(
            &latencies(&run.sent_between(from, from + second, &Answer::Ok)),
            0.5,
        )
    };
    let (first, last) = (median_of(warm_up), median_of(length - second));
    let shown = |d: Option<Duration>| d.map_or(f64::NAN, ms);
    println!(
        "adaptive limit: unloaded P99 {:.0} ms; at {LOAD_PER_SECOND}/s for {length:?} (sent in \
         {:.2?}), counted after {warm_up:?}: admitted P99 {:.0} ms ({:.2}x), median of the \
         first counted second {:.0} ms, of the last {:.0} ms; upstream served {served:.1}/s \
         ({:.0} % of its capacity), P99 of its queue wait {:.0} ms, peak {} in flight at it \
         (whole run); admitted {admitted_per_s:.1}/s, refused {refused_per_s:.1}/s (P99 {:.0} \
         ms); whole run: {counts:?}; gateway: {}",
        ms(unloaded),
        run.sending,
        shown(loaded),
        shown(loaded) / ms(unloaded),
        shown(first),
        shown(last),
        100.0 * served / CAPACITY_PER_SECOND,
        shown(queue),
        up.peak_in_flight(),
        shown(refused_p99),
        limit_metrics(&gw).await,
    );
    println!(
        "figures: case=adaptive unloaded_p99_ms={:.0} loaded_p99_ms={:.0} ratio={:.2} \
         first_median_ms={:.0} last_median_ms={:.0} served_per_s={served:.1} \
         queue_p99_ms={:.0} admitted_per_s={admitted_per_s:.1} \
         refused_per_s={refused_per_s:.1} refused_p99_ms={:.0} peak_in_flight={}",
        ms(unloaded),
        shown(loaded),
        shown(loaded) / ms(unloaded),
        shown(first),
        shown(last),
        shown(queue),
        shown(refused_p99),
        up.peak_in_flight(),
    );

    let others: Vec<(Duration, &Answer)> = run
        .samples
        .iter()
        .filter(|s| !matches!(s.answer, Answer::Ok | Answer::Overloaded))
        .map(|s| (s.sent, &s.answer))
        .take(10)
        .collect();
    assert!(
        others.is_empty(),
        "every request is admitted (200) or refused at once (503 overloaded), none times out \
         or fails otherwise; the first others (sent at, answer): {others:?}"
    );
    assert!(
        !refused.is_empty(),
        "at three times the upstream's capacity the limit refuses some requests; none was \
         refused after the warm-up: the limit is not enforced"
    );
    let loaded = loaded.expect("some requests are admitted after the warm-up");
    assert!(
        loaded <= unloaded * 2,
        "the admitted requests' P99 ({loaded:?}) stays within twice the unloaded one \
         ({unloaded:?})"
    );
    assert!(
        served >= 0.8 * CAPACITY_PER_SECOND,
        "the upstream is kept busy: it served {served:.1} requests/s after the warm-up, \
         less than 80 % of its capacity ({CAPACITY_PER_SECOND}/s)"
    );
}
