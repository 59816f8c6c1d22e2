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
//! route's `on_store_error`. A connection that broke or let a step time out is dropped and
//! opened again in the background (a stopped or unreachable Redis would otherwise keep
//! every request waiting for the full timeout), the script loaded with it, so a step is
//! one round trip.

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use gatehouse_plugins::rate_limit::shared::{LimitStore, PendingStep, Quota, StoreError, Verdict};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
    /// Why the last connection attempt or step failed, while not connected.
    pub error: Option<String>,
}

/// The Redis store and its connection; clones share both.
#[derive(Clone)]
pub struct RedisLimits(Arc<Store>);

struct Store {
    client: Client,
    timeout: Duration,
    script: Arc<Script>,
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Wakes the keeper when a step dropped the connection.
    broken: tokio::sync::Notify,
    error: Mutex<Option<String>>,
}

impl RedisLimits {
    /// A store for `url` (`redis://host:port/db`), each step bounded by `timeout`. Connects
    /// later, in the background ([`RedisKeeper`]).
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLimits, String> {
        let client = Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisLimits(Arc::new(Store {
            client,
            timeout,
            script: Arc::new(Script::new(GCRA)),
            connection: ArcSwapOption::empty(),
            broken: tokio::sync::Notify::new(),
            error: Mutex::new(Some("not connected yet".into())),
        })))
    }

    pub fn status(&self) -> StoreStatus {
        self.0.status()
    }
}

impl Store {
    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            connected: self.connection.load().is_some(),
            error: self.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn note(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Drops `used` (unless another connection replaced it already) and wakes the keeper.
    fn drop_connection(&self, used: &Arc<MultiplexedConnection>, why: String) {
        let previous = self.connection.compare_and_swap(used, None::<Arc<_>>);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, used)) {
            tracing::warn!("redis: {why}; connecting again");
            self.note(Some(why));
            self.broken.notify_one();
        }
    }

    fn connect_timeout(&self) -> Duration {
        self.timeout.max(MIN_CONNECT_TIMEOUT)
    }

    /// A new connection with the script loaded, within the connect timeout.
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let limit = self.connect_timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(limit))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        let opened = async {
            let mut connection = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
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
}

impl LimitStore for RedisLimits {
    fn step(&self, key: Vec<u8>, quota: Quota) -> PendingStep {
        let store = self.0.clone();
        let Some(connection) = store.connection.load_full() else {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable)));
        };
        let timeout = store.timeout;
        let script = store.script.clone();
        Box::pin(async move {
            let mut conn = (*connection).clone();
            let interval = (quota.interval.as_micros() as u64).max(1);
            let mut invocation = script.key(key);
            invocation.arg(interval).arg(quota.burst);
            let answer = tokio::time::timeout(
                timeout,
                invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn),
            )
            .await;
            match answer {
                Ok(Ok((admitted, remaining, wait, reset))) => Ok(Verdict {
                    admitted: admitted == 1,
                    remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                    wait: Duration::from_micros(wait.max(0) as u64),
                    reset: Duration::from_micros(reset.max(0) as u64),
                }),
                Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => {
                    store.drop_connection(&connection, e.to_string());
                    Err(StoreError::Failed(e.to_string()))
                }
                Ok(Err(e)) => Err(StoreError::Failed(e.to_string())),
                Err(_) => {
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

/// Keeps the store connected: opens the connection at start, and again whenever a step
/// dropped it, backing off while Redis does not answer.
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
        let mut last_error: Option<String> = None;
        loop {
            if store.connection.load().is_none() {
                match store.connect().await {
                    Ok(connection) => {
                        store.connection.store(Some(Arc::new(connection)));
                        store.note(None);
                        tracing::info!("redis: connected");
                        backoff = FIRST_BACKOFF;
                        last_error = None;
                    }
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!("redis: cannot connect: {e}");
                        }
                        store.note(Some(e.clone()));
                        last_error = Some(e);
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = store.broken.notified() => {}
            }
        }
    }
}
