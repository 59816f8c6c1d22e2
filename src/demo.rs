//! `gatehouse demo`: the gateway on the sample routes, with two built-in upstreams standing
//! in for the `demo-v1` and `demo-v2` services, and curl commands to try.

use crate::bootstrap::{Bootstrap, FileSettings, Listener, Provider};
use crate::resource::{Document, NodeSpec, Resource, Upstream};
use crate::server::Launch;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

/// A demo upstream: answers every request with a JSON echo naming itself.
pub struct EchoService {
    name: &'static str,
}

#[async_trait]
impl ServeHttp for EchoService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Drain the body so the connection can be reused.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let req = session.req_header();
        let headers: BTreeMap<String, String> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "service": self.name,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
            "headers": headers,
        });
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        body.push(b'\n');
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::SERVER, self.name)
            .body(body)
            .expect("static parts are valid")
    }
}

fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub routes: PathBuf,
}

/// Builds the demo launch: config, overlay and the two echo services.
pub fn launch(options: DemoOptions) -> anyhow::Result<Launch> {
    if !options.routes.exists() {
        anyhow::bail!(
            "{}: not found; run the demo from the gatehouse checkout or pass --routes",
            options.routes.display()
        );
    }
    let v1 = free_loopback_addr()?;
    let v2 = free_loopback_addr()?;
    let mut bootstrap =
        Bootstrap::parse("demo", "provider: { file: { paths: [routes] } }\n", |_| {
            None
        })
        .expect("the built-in demo config is valid");
    bootstrap.listen = vec![Listener {
        addr: options.listen,
        tls: None,
    }];
    bootstrap.admin.listen = options.admin;
    bootstrap.threads = 2;
    bootstrap.shutdown.timeout = crate::units::Span::secs(5);
    bootstrap.provider = Provider {
        file: Some(FileSettings {
            paths: vec![options.routes.clone()],
            watch: true,
        }),
        etcd: None,
    };

    let overlay = Arc::new(move |docs: &mut Vec<Document>| {
        for doc in docs.iter_mut() {
            if let Ok(Resource::Upstream(u)) = &doc.parsed {
                let addr = match u.id.as_str() {
                    "demo-v1" => v1,
                    "demo-v2" => v2,
                    _ => continue,
                };
                let pinned = Upstream {
                    nodes: vec![NodeSpec {
                        addr: addr.to_string(),
                        weight: 1,
                        metadata: Default::default(),
                    }],
                    ..(**u).clone()
                };
                doc.parsed = Ok(Resource::Upstream(Arc::new(pinned)));
            }
        }
    });

    let mut launch = Launch::new(bootstrap);
    launch.overlay = Some(overlay);
    launch.upgrade_sock = format!("/tmp/gatehouse_demo_{}.sock", std::process::id());
    for (name, addr) in [("demo-v1", v1), ("demo-v2", v2)] {
        let mut service = Service::new(name.to_string(), EchoService { name });
        service.add_tcp(&addr.to_string());
        service.threads = Some(1);
        launch.extra_services.push(Box::new(service));
    }
    print_tour(options.listen, options.admin, v1, v2);
    Ok(launch)
}

fn print_tour(listen: SocketAddr, admin: SocketAddr, v1: SocketAddr, v2: SocketAddr) {
    let gw = format!("http://{listen}");
    println!(
        r#"gatehouse demo: gateway on {gw}, admin on http://{admin}
built-in upstreams: demo-v1 on {v1}, demo-v2 on {v2}

Try:
  # a direct response, no upstream involved
  curl -i {gw}/hello
  # routing with a prefix, strip_prefix and header rewrites (answered by demo-v1)
  curl -i {gw}/api/users/42
  # a header canary: the same path, sent to demo-v2 when X-Canary matches
  curl -i -H 'X-Canary: true' {gw}/api/users/42
  # a weighted split, 90/10: count who answers
  for i in $(seq 1 20); do curl -s {gw}/api/split/ | grep -o 'demo-v[12]'; done | sort | uniq -c
  # the same split, sticky per user: one user always lands on the same side
  for i in $(seq 1 5); do curl -s -H 'X-User-Id: alice' {gw}/api/split/ | grep -o 'demo-v[12]'; done
  # a parameter path, GET only (answered by demo-v2)
  curl -i {gw}/api/orders/7
  # nothing matches: the gateway's JSON error
  curl -i {gw}/nope
  # what is in force
  curl -s http://{admin}/admin/status
  curl -s http://{admin}/admin/routes

Edit the files under routes/ while this runs: changes apply at once (docs/routes.md).
Stop with Ctrl-C.
"#
    );
}
