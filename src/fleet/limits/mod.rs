//! The Redis limit store: where `rate_limit.scope: cluster` buckets live, so every instance
//! of the fleet draws from one bucket per key (SPEC §13).
//!
//! Each request is one `EVALSHA` of [`GCRA`]: the script reads the bucket, decides and
//! writes it back atomically on the server, by the server's clock (instances' clocks may
//! differ; Redis has one), and lets the key expire when the bucket is full again, so Redis
//! holds only the buckets of clients active lately.
//!
//! The store never makes a request wait past `redis.timeout`: a step without a connection
//! fails at once, and one without an answer in time fails at the timeout, both to the
//! route's `on_store_error`. A connection that broke, let a step time out, or reached a
//! server that can no longer write (a demoted primary) is dropped and opened again in the
//! background (a stopped or unreachable Redis would otherwise keep every request waiting
//! for the full timeout), the script loaded with it, so a step is one round trip. A
//! connection that never served a step is opened again only after a growing pause, so a
//! Redis too slow for the timeout is not flooded with connections. Each worker thread
//! steps on a connection of its own ([`local`]); the shared one says whether Redis answers.

mod local;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use gatehouse_plugins::rate_limit::shared::{LimitStore, PendingStep, Quota, StoreError, Verdict};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One GCRA step. KEYS[1]: the bucket. ARGV[1]: microseconds per request (the emission
/// interval); ARGV[2]: the burst. The bucket holds its theoretical arrival time (TAT) in
/// microseconds of the server's clock; no key is a full bucket. Returns
/// `{admitted, remaining, wait_us, reset_us}`.
pub const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local next_tat = tat + interval
local allow_at = next_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, next_tat - now}
"#;

/// Commands queued on the connection before callers wait for room: enough for a busy
/// instance's requests in flight.
const PIPELINE_BUFFER: usize = 4096;
/// The first pause between connection attempts, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The least time a connection attempt (with loading the script) is given.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

static INSTALLED: OnceLock<RedisLimits> = OnceLock::new();

/// Makes `store` the one `scope: cluster` limits use. Done once, before the first
/// configuration is compiled.
pub fn install(store: RedisLimits) {
    if INSTALLED.set(store).is_err() {
        tracing::warn!("a limit store is already installed; the second is ignored");
    }
}

/// The store in force, if the bootstrap configures one.
pub fn installed() -> Option<RedisLimits> {
    INSTALLED.get().cloned()
}

/// The store in force as the rate limit plugin takes it.
pub fn shared_store() -> Option<Arc<dyn LimitStore>> {
    installed().map(|store| Arc::new(store) as Arc<dyn LimitStore>)
}

/// How the store's connection stands, for `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    pub connected: bool,
    /// Why the last connection attempt or step failed, until a step succeeds again.
    pub error: Option<String>,
}

/// The Redis store and its connection; clones share both.
#[derive(Clone)]
pub struct RedisLimits(Arc<Store>);

struct Store {
    client: Client,
    /// How connections are opened: the shared one and each worker thread's own.
    config: AsyncConnectionConfig,
    timeout: Duration,
    script: Arc<Script>,
    /// The shared connection: whether Redis is reachable now, and the steps of a thread
    /// whose own connection is not open yet.
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Counts the shared connection's openings: a thread's own connection of an older
    /// generation is opened again.
    generation: AtomicU64,
    /// Wakes the keeper when a step dropped the connection.
    broken: tokio::sync::Notify,
    /// Whether a step succeeded on the connection in use: only then is a connection that
    /// breaks opened again at once (a Redis too slow for the timeout is not hammered with
    /// new connections).
    proven: AtomicBool,
    /// Whether `error` holds something a successful step should clear: read on every
    /// step, so a healthy store never takes the lock.
    failing: AtomicBool,
    error: Mutex<Failure>,
}

#[derive(Default)]
struct Failure {
    message: Option<String>,
    /// When a failure was last logged: a failing step is logged at most every
    /// [`LOG_EVERY`], however many requests meet it.
    logged: Option<Instant>,
}

/// How often a recurring store failure is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the keeper checks an idle connection, so a Redis that went away is noticed
/// (and said in the status) before a request meets it.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Errors of a Redis that cannot serve steps on this connection any more, though the
/// connection stands: a primary demoted to a replica (behind the same address after a
/// failover), a primary that lost its own, a server still loading its data.
const REOPEN_ON: [&str; 3] = ["READONLY", "MASTERDOWN", "LOADING"];

impl RedisLimits {
    /// A store for `url` (`redis://host:port/db`), each step bounded by `timeout`. Connects
    /// later, in the background ([`RedisKeeper`]).
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLimits, String> {
        let client = Client::open(url).map_err(|e| e.to_string())?;
        let limit = timeout.max(MIN_CONNECT_TIMEOUT);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(limit))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        Ok(RedisLimits(Arc::new(Store {
            client,
            config,
            timeout,
            script: Arc::new(Script::new(GCRA)),
            connection: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            broken: tokio::sync::Notify::new(),
            proven: AtomicBool::new(false),
            failing: AtomicBool::new(true),
            error: Mutex::new(Failure {
                message: Some("not connected yet".into()),
                logged: None,
            }),
        })))
    }

    pub fn status(&self) -> StoreStatus {
        self.0.status()
    }
}

impl Store {
    fn status(&self) -> StoreStatus {
        StoreStatus {
            connected: self.connection.load().is_some(),
            error: self.failure().message.clone(),
        }
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Failure> {
        self.error.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records why the store failed, logging it unless it was logged lately.
    fn failed(&self, why: String) {
        let mut failure = self.failure();
        if failure.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!("redis: {why}");
            failure.logged = Some(Instant::now());
        }
        failure.message = Some(why);
        self.failing.store(true, Ordering::Release);
    }

    /// A step succeeded: the connection has proved itself, and no failure stands.
    fn succeeded(&self) {
        if !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
        if self.failing.load(Ordering::Acquire) && self.failing.swap(false, Ordering::AcqRel) {
            *self.failure() = Failure::default();
        }
    }

    /// Drops `used` (unless another connection replaced it already) and wakes the keeper.
    fn drop_connection(&self, used: &Arc<MultiplexedConnection>, why: String) {
        let previous = self.connection.compare_and_swap(used, None::<Arc<_>>);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, used)) {
            self.failed(format!("{why}; connecting again"));
            self.broken.notify_one();
        }
    }

    fn connect_timeout(&self) -> Duration {
        self.timeout.max(MIN_CONNECT_TIMEOUT)
    }

    /// A new connection with the script loaded, within the connect timeout.
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let limit = self.connect_timeout();
        let opened = async {
            let mut connection = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            self.script.load_async(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(limit, opened).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Asks the connection in use for a PING; drops it if none comes within the timeout
    /// (a connection that cannot answer a step would not answer a PING either).
    async fn check(&self) {
        let Some(connection) = self.connection.load_full() else {
            return;
        };
        let mut conn = (*connection).clone();
        let limit = self.connect_timeout();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut conn);
        match tokio::time::timeout(limit, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.drop_connection(&connection, format!("a check failed: {e}")),
            Err(_) => self.drop_connection(
                &connection,
                format!("a check had no answer within {limit:?}"),
            ),
        }
    }
}

/// The emission interval in whole microseconds, rounded up: the store counts in the
/// microseconds of Redis's clock, and a rounded interval must never admit more than the
/// limit says.
fn interval_micros(quota: Quota) -> u64 {
    let micros = quota.interval.as_nanos().div_ceil(1000).max(1);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

impl LimitStore for RedisLimits {
    fn step(&self, key: Vec<u8>, quota: Quota) -> PendingStep {
        let store = self.0.clone();
        let Some(connection) = store.connection.load_full() else {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable)));
        };
        let timeout = store.timeout;
        let script = store.script.clone();
        let generation = store.generation.load(Ordering::Acquire);
        let own = local::connection(
            &store.client,
            &store.config,
            generation,
            store.connect_timeout(),
        );
        Box::pin(async move {
            let mut conn = own.unwrap_or_else(|| (*connection).clone());
            let mut invocation = script.key(key);
            invocation.arg(interval_micros(quota)).arg(quota.burst);
            let answer = tokio::time::timeout(
                timeout,
                invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn),
            )
            .await;
            match answer {
                Ok(Ok((admitted, remaining, wait, reset))) => {
                    store.succeeded();
                    Ok(Verdict {
                        admitted: admitted == 1,
                        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                        wait: Duration::from_micros(wait.max(0) as u64),
                        reset: Duration::from_micros(reset.max(0) as u64),
                    })
                }
                Ok(Err(e))
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.code().is_some_and(|code| REOPEN_ON.contains(&code)) =>
                {
                    local::forget(generation);
                    store.drop_connection(&connection, e.to_string());
                    Err(StoreError::Failed(e.to_string()))
                }
                Ok(Err(e)) => {
                    store.failed(format!("a step failed: {e}"));
                    Err(StoreError::Failed(e.to_string()))
                }
                Err(_) => {
                    local::forget(generation);
                    store.drop_connection(
                        &connection,
                        format!("a step had no answer within {timeout:?}"),
                    );
                    Err(StoreError::TimedOut(timeout))
                }
            }
        })
    }
}

/// Keeps the store connected: opens the connection at start, checks it every second while
/// it stands, and opens it again when a step or a check dropped it. A connection that
/// never served a step is opened again only after a growing pause.
pub struct RedisKeeper {
    store: RedisLimits,
}

impl RedisKeeper {
    pub fn new(store: RedisLimits) -> RedisKeeper {
        RedisKeeper { store }
    }
}

#[async_trait]
impl BackgroundService for RedisKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.store.0;
        let mut backoff = FIRST_BACKOFF;
        let mut pause = None;
        loop {
            if let Some(delay) = pause.take() {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if store.connection.load().is_none() {
                match store.connect().await {
                    Ok(connection) => {
                        store.proven.store(false, Ordering::Relaxed);
                        store.generation.fetch_add(1, Ordering::AcqRel);
                        store.connection.store(Some(Arc::new(connection)));
                        store.failure().message = None;
                        tracing::info!("redis: connected");
                    }
                    Err(e) => {
                        store.failed(format!("cannot connect: {e}"));
                        pause = Some(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = store.broken.notified() => {
                    if store.proven.load(Ordering::Relaxed) {
                        backoff = FIRST_BACKOFF;
                    } else {
                        pause = Some(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                _ = tokio::time::sleep(CHECK_EVERY) => store.check().await,
            }
        }
    }
}
