//! Assembles the Pingora server: proxy listeners, admin listener, the provider, and the
//! shutdown behaviour of SPEC §1.

use crate::admin::{AdminApi, Readiness, Writes};
use crate::bootstrap::Bootstrap;
use crate::edge::{
    self, app::LAST_CALL, ClientDoor, ClientTable, Draining, Listening, TlsListeners,
};
use crate::provider::etcd::EtcdProvider;
use crate::provider::file::{FileProvider, FileSource, Overlay};
use crate::provider::Ingest;
use crate::proxy::{Gateway, InFlight, ProxySettings};
use crate::snapshot::Live;
use crate::telemetry::Telemetry;
use anyhow::bail;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to start: the bootstrap config plus command-line choices.
pub struct Launch {
    pub bootstrap: Bootstrap,
    /// Take over the listeners of a running gatehouse (Pingora's zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
    /// The socket listeners are handed over on during an upgrade.
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Adjusts file documents after reading; used by the demo.
    pub overlay: Option<Overlay>,
    /// More services to run in the same server (the demo's upstreams).
    pub extra_services: Vec<Box<dyn ServiceWithDependents>>,
}

impl Launch {
    pub fn new(bootstrap: Bootstrap) -> Launch {
        Launch {
            bootstrap,
            upgrade: false,
            daemon: false,
            upgrade_sock: "/tmp/gatehouse_upgrade.sock".into(),
            pid_file: "/tmp/gatehouse.pid".into(),
            overlay: None,
            extra_services: Vec::new(),
        }
    }
}

/// Runs the gateway until it is told to stop; then exits the process with status 0.
pub fn run(launch: Launch) -> anyhow::Result<()> {
    let config = launch.bootstrap;
    let shutdown_timeout = config.shutdown.timeout.0;
    // Before any route is compiled: a Wasm plugin gets an instance slot per worker.
    gatehouse_plugins::wasm::set_worker_threads(config.threads);

    let conf = ServerConf {
        threads: config.threads,
        // One runtime per thread without stealing: cheaper per request, and connections are
        // spread by the kernel across listener tasks anyway.
        work_stealing: false,
        // Pingora sleeps this long before stopping; the drain service below exits earlier,
        // as soon as no request is in flight.
        grace_period_seconds: Some(shutdown_timeout.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: launch.upgrade_sock,
        pid_file: launch.pid_file,
        daemon: launch.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: launch.upgrade,
        daemon: launch.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let open_files = match edge::limits::raise_open_files() {
        Ok(n) => n,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            u64::MAX
        }
    };
    let max_clients = edge::limits::client_share(config.http.max_connections, open_files);
    if max_clients < config.http.max_connections {
        tracing::warn!(
            open_files,
            configured = config.http.max_connections,
            allowed = max_clients,
            "http.max_connections lowered to what the open-file limit can back"
        );
    }
    let clients = Arc::new(ClientTable::new(
        max_clients,
        config.http.max_connections_per_ip,
    ));
    let draining = Arc::new(Draining::default());

    // Before the first configuration is compiled: `scope: cluster` limits are built with it.
    if let Some(redis) = &config.redis {
        let store = crate::fleet::limits::RedisLimits::new(&redis.url, redis.timeout.0)
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        crate::fleet::limits::install(store.clone());
        server.add_service(background_service(
            "redis",
            crate::fleet::limits::RedisKeeper::new(store),
        ));
    }

    let live = Arc::new(Live::new());
    let ingest = Ingest::new(live.clone());
    let writes = match (&config.provider.file, &config.provider.etcd) {
        (Some(file), _) => {
            let mut source = FileSource::new(file.paths.clone());
            if let Some(overlay) = launch.overlay {
                source = source.with_overlay(overlay);
            }
            let provider = FileProvider::new(source, ingest, file.watch);
            // The first snapshot is in force before any listener accepts.
            provider.reload();
            server.add_service(background_service("file provider", provider));
            Writes::File
        }
        (None, Some(etcd)) => {
            // Listeners start at once; /readyz says 503 until etcd has answered.
            server.add_service(background_service(
                "etcd provider",
                EtcdProvider::new(etcd.clone(), ingest),
            ));
            let me = crate::fleet::InstanceRecord {
                id: config.instance_id(),
                addr: config
                    .listen
                    .first()
                    .map(|l| l.addr.to_string())
                    .unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").into(),
                revision: 0,
                seen: None,
                source_connected: false,
                started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
            };
            server.add_service(background_service(
                "instance registration",
                crate::fleet::Registration::new(etcd.clone(), live.clone(), me),
            ));
            Writes::etcd(etcd.clone())
        }
        (None, None) => bail!("provider: give one of `file` or `etcd`"),
    };

    let inflight = Arc::new(InFlight::default());
    let settings = ProxySettings {
        trusted_proxies: config.trusted_proxies.clone(),
        max_header_size: config.http.max_header_size.0,
        keepalive_secs: config.http.keepalive_timeout.0.as_secs().max(1),
        path: config.http.path,
        underscores: config.http.underscores_in_headers,
        draining: draining.clone(),
    };
    let telemetry = Arc::new(Telemetry::start(&config.telemetry)?);
    let gateway = Gateway::new(live.clone(), settings, inflight.clone(), telemetry.clone());
    let head_sweeper = gateway.head_sweeper();
    let mut logic = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // CONNECT reaches the gateway's own hooks, to be refused there with the JSON error,
    // request id and log line of every other refusal (Pingora's own 405 has none of them).
    options.allow_connect_method_proxying = true;
    // HTTP/2 connections have no request head to time: an idle one is closed after the
    // keep-alive timeout instead.
    options.h2_idle_timeout = Some(config.http.keepalive_timeout.0);
    logic.server_options = Some(options);
    // Every listener is plain TCP to Pingora: the door runs TLS handshakes itself, under
    // the caps and the head clock (SPEC §8).
    let mut tls = TlsListeners::default();
    for listener in &config.listen {
        if let Some(files) = &listener.tls {
            tls.add(listener.addr, &files.cert, &files.key)?;
        }
    }
    let door = ClientDoor::new(
        logic,
        clients,
        config.http.header_timeout.0,
        draining.clone(),
        tls,
    );
    let mut proxy = Service::new("gatehouse".to_string(), door);
    for listener in &config.listen {
        proxy.add_tcp(&listener.addr.to_string());
    }
    server.add_service(proxy);

    let live_for_cleanup = live.clone();
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApi::new(
            live.clone(),
            config.admin.api_key.clone(),
            writes,
            Arc::new(ProxyReadiness {
                draining: draining.clone(),
                listening: Listening::new(config.listen.iter().map(|l| l.addr).collect()),
            }),
        ),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    server.add_service(background_service(
        "plugin upkeep",
        PluginUpkeep {
            live: live_for_cleanup,
        },
    ));
    server.add_service(background_service(
        "discovery",
        crate::upstream::DiscoveryService::new(
            live.clone(),
            config.registry.as_ref().map(|r| r.etcd.clone()),
        ),
    ));
    server.add_service(background_service(
        "health checks",
        crate::upstream::Prober::new(live.clone())?,
    ));
    server.add_service(background_service(
        "transcoding reflection",
        crate::snapshot::Reflector::new(live.clone())?,
    ));
    server.add_service(background_service("upstream head clock", head_sweeper));
    server.add_service(background_service(
        "drain",
        Drain {
            inflight,
            timeout: shutdown_timeout,
            telemetry,
            draining: draining.clone(),
        },
    ));
    for service in launch.extra_services {
        server.add_boxed_service(service);
    }

    tracing::info!(
        listen = ?config.listen.iter().map(|l| l.addr).collect::<Vec<_>>(),
        admin = %config.admin.listen,
        "gatehouse starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace: config.shutdown.grace.0,
            draining,
            listen: config.listen.iter().map(|l| l.addr).collect(),
        }),
    });
    std::process::exit(0)
}

/// Ready means the proxy takes traffic: every listener bound, and no stop asked for.
struct ProxyReadiness {
    draining: Arc<Draining>,
    listening: Listening,
}

impl Readiness for ProxyReadiness {
    fn blocker(&self) -> Option<&'static str> {
        if self.draining.is_stopping() {
            Some("draining")
        } else if !self.listening.accepting() {
            Some("starting")
        } else {
            None
        }
    }
}

/// SIGTERM and SIGINT both stop gracefully (after `shutdown.grace`, during which listeners
/// still accept); SIGQUIT hands the listeners to a new process (`run --upgrade`).
struct Signals {
    grace: Duration,
    draining: Arc<Draining>,
    /// The proxy's listening addresses, shut when a stop (not an upgrade) begins.
    listen: Vec<std::net::SocketAddr>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        let upgrade = tokio::select! {
            _ = term.recv() => false,
            _ = int.recv() => false,
            _ = quit.recv() => true,
        };
        // Not ready from now on, so a load balancer stops sending new traffic.
        self.draining.request_stop();
        if upgrade {
            // From now on every answer closes its connection: clients reconnect, and the new
            // process accepts on the same sockets.
            self.draining.start();
            return ShutdownSignal::GracefulUpgrade;
        }
        if !self.grace.is_zero() {
            // Still a full member: a load balancer takes the instance out meanwhile.
            tracing::info!(grace = ?self.grace, "shutdown requested; still accepting during the grace period");
            tokio::time::sleep(self.grace).await;
        }
        // First make new connects fail (Pingora stops accepting now, but would leave the
        // sockets open), then tell kept-alive clients to go: in that order, no client is sent
        // to reconnect into a backlog that is never read.
        let shut = edge::listeners::stop_listening(&self.listen);
        self.draining.start();
        tracing::info!(listeners = shut, "stopped accepting; draining");
        ShutdownSignal::GracefulTerminate
    }
}

/// Every plugin's upkeep now and then, off the request path: a limiter drops the keys it
/// has not seen for a while, so memory stays bounded under any number of distinct clients.
struct PluginUpkeep {
    live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for PluginUpkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {
                    let snapshot = self.live.load();
                    for route in snapshot.routes.values() {
                        for plugin in &route.own {
                            plugin.housekeep();
                        }
                    }
                    for rule in snapshot.global_rules.values() {
                        for plugin in rule.plugins.iter() {
                            plugin.housekeep();
                        }
                    }
                }
            }
        }
    }
}

/// Once listeners have stopped, waits for the requests in flight (at most `timeout`) and
/// exits, instead of sleeping out the whole of Pingora's grace period.
struct Drain {
    inflight: Arc<InFlight>,
    timeout: Duration,
    telemetry: Arc<Telemetry>,
    draining: Arc<Draining>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        // Kept-alive connections may bring one last request (answered with
        // `Connection: close`) until the proxy closes the idle ones; from then on no request
        // can begin. Then let requests whose heads were being read get counted.
        let deadline = tokio::time::Instant::now() + self.timeout;
        tokio::time::sleep(LAST_CALL).await;
        let _ = tokio::time::timeout_at(deadline, self.draining.wait_doors_closed()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tokio::time::timeout_at(deadline, self.inflight.settled()).await;
        let left = self.inflight.count();
        if left > 0 {
            tracing::warn!(
                requests = left,
                "shutdown timeout reached; exiting with requests in flight"
            );
        } else {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "all requests finished; exiting"
            );
        }
        // Every answer given gets its log line and span before the process ends.
        let telemetry = self.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || telemetry.flush(Duration::from_secs(2))).await;
        std::process::exit(0);
    }
}
