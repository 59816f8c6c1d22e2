//! Opening a connection to etcd: credentials, TLS, and the HTTP/2 keep-alive.

use super::EtcdError;
use super::EtcdSettings;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// How often a connection is pinged, even while idle. A watch on a prefix that does not
/// change receives nothing, so without pings a hung etcd (its TCP connection open, nothing
/// answering) would go unnoticed; with them it is noticed within this plus the configured
/// `timeout`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to etcd with the configured credentials and TLS. `https://` endpoints use the
/// configured CA (or the system's roots) and a client certificate when one is given.
pub async fn connect(settings: &EtcdSettings) -> Result<Client, EtcdError> {
    connect_to(settings, &settings.endpoints).await
}

/// Connects to one member only, the `member`-th endpoint (counting round the list). For a
/// watch: etcd's client balances calls over every endpoint and keeps offering a dead one
/// for a while, so a watch opened again after its member died could land on it again and
/// again; a watch on one member moves on to the next when it breaks.
pub async fn connect_member(settings: &EtcdSettings, member: usize) -> Result<Client, EtcdError> {
    let endpoints = &settings.endpoints;
    let endpoint = endpoints[member % endpoints.len().max(1)].clone();
    connect_to(settings, &[endpoint]).await
}

async fn connect_to(settings: &EtcdSettings, endpoints: &[String]) -> Result<Client, EtcdError> {
    let timeout = settings.timeout.0;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, timeout)
        .with_keep_alive_while_idle(true);
    if let Some(user) = settings.username.as_deref().filter(|u| !u.is_empty()) {
        options = options.with_user(user, settings.password.clone().unwrap_or_default());
    }
    if endpoints.iter().any(|e| e.starts_with("https://")) {
        options = options.with_tls(tls_options(settings)?);
    }
    Ok(Client::connect(endpoints, Some(options)).await?)
}

fn tls_options(settings: &EtcdSettings) -> Result<TlsOptions, EtcdError> {
    let mut tls = TlsOptions::new();
    let Some(files) = &settings.tls else {
        return Ok(tls.with_native_roots());
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| EtcdError::Tls {
            path: path.display().to_string(),
            source,
        })
    };
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}
