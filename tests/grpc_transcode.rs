//! HTTP/JSON → gRPC transcoding (SPEC §9) with real parts: the Python grpcio server of
//! `tests/grpc/transcode/server.py`, built from `users.proto` with its `google.api.http`
//! annotations, behind a `scheme: grpc` upstream; the descriptor set written by protoc;
//! plain HTTP/1.1 REST calls through the gateway.

mod common;

use common::python::PythonServer;
use common::{client, free_addr, Gateway};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn dir() -> String {
    format!("{}/tests/grpc/transcode", env!("CARGO_MANIFEST_DIR"))
}

fn server() -> PythonServer {
    PythonServer::start(&format!("{}/server.py", dir()), &[])
}

/// The FileDescriptorSet of users.proto and its imports, as `protoc --include_imports -o`.
fn descriptors(out: &Path) {
    let status = Command::new("python3")
        .arg(format!("{}/server.py", dir()))
        .arg("--descriptors")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "writing the descriptor set failed");
}

fn upstream(id: &str, port: u16) -> String {
    format!("kind: Upstream\nid: {id}\nscheme: grpc\nnodes: [{{ addr: \"127.0.0.1:{port}\" }}]\n")
}

/// A transcoded route on `/v1/**` with the descriptors at `source`.
fn route(id: &str, path: &str, upstream: &str, source: &str, extra: &str) -> String {
    format!(
        r#"kind: Route
id: {id}
match: {{ paths: ["{path}"] }}
upstream: {upstream}
timeouts: {{ read: 700ms }}
grpc_transcode:
  descriptors: "{source}"
  services: [users.v1.UserService]
  rules:
    - {{ selector: users.v1.UserService.DeleteUser, delete: "/v1/users/{{id}}" }}
{extra}"#
    )
}

async fn gateway(server: &PythonServer) -> Gateway {
    let pb = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    descriptors(&pb);
    let source = pb.to_str().unwrap().to_string();
    // Kept for the gateway's life: the route reads it whenever it compiles.
    std::mem::forget(pb);
    let routes = format!(
        "{}---\n{}",
        upstream("users", server.port),
        route("rest", "/v1/**", "users", &source, "")
    );
    Gateway::builder().file("routes.yaml", routes).start().await
}

async fn call(gw: &Gateway, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .request(method.parse().unwrap(), gw.url(path))
        .header("x-who", "alice");
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread")]
async fn annotated_methods_answer_rest_calls_in_proto3_json() {
    let server = server();
    let gw = gateway(&server).await;

    let (status, user) = call(&gw, "GET", "/v1/users/7?view=full", None).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        user,
        json!({
            "id": "7",
            "displayName": "alice",
            "role": "ADMIN",
            "tags": ["a", "b"],
            "address": {"city": "Lyon", "zipCode": "69001"},
            "createdAt": "2023-11-14T22:13:20Z",
            "sessionTtl": "90s",
            "nickname": "full",
            "profile": {"theme": "dark", "n": 3.0},
            "active": true,
            "avatar": "AP9oaQ==",
            "visits": "18446744073709551615",
        })
    );
    // An additional binding reaches the same method.
    let (status, user) = call(&gw, "GET", "/v1/people/8", None).await;
    assert_eq!((status, &user["id"]), (200, &json!("8")));

    // body "*": the whole message from JSON, proto names taken beside json names.
    let body = r#"{"displayName": "Bo", "role": "MEMBER", "tags": ["x"],
        "address": {"zip_code": "1"}, "createdAt": "2024-01-02T03:04:05Z",
        "sessionTtl": "1.500s", "nickname": "b", "profile": {"a": [1, "x", null]},
        "visits": "42", "active": false}"#;
    let (status, user) = call(&gw, "POST", "/v1/users", Some(body)).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        user,
        json!({
            "id": "100", "displayName": "Bo", "role": "MEMBER", "tags": ["x"],
            "address": {"zipCode": "1"}, "createdAt": "2024-01-02T03:04:05Z",
            "sessionTtl": "1.500s", "nickname": "b", "profile": {"a": [1.0, "x", null]},
            "visits": "42",
        })
    );

    // body "user" with a nested path variable: the path's id wins over the body's.
    let body = r#"{"displayName": "Cy", "id": "1"}"#;
    let (status, user) = call(&gw, "PATCH", "/v1/users/55", Some(body)).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user, json!({"id": "55", "displayName": "Cy"}));

    // No body: query parameters fill the fields, repeated and nested, by either name.
    let query =
        "/v1/users?page_size=2&tags=x&tags=y&role=MEMBER&filter.city=Paris&filter.active=true";
    let (status, list) = call(&gw, "GET", query, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2);
    let first = &list["users"][1];
    assert_eq!(first["id"], "1");
    assert_eq!(first["tags"], json!(["x", "y"]));
    assert_eq!(first["role"], "MEMBER");
    assert_eq!(first["address"]["city"], "Paris");
    assert_eq!(first["active"], true);
    let (_, list) = call(&gw, "GET", "/v1/users?pageSize=1&role=2", None).await;
    assert_eq!(list["users"][0]["role"], "MEMBER", "{list}");

    // A method bound by the route's rules rather than an annotation.
    assert_eq!(
        call(&gw, "DELETE", "/v1/users/5", None).await,
        (200, json!({}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_errors_become_http_statuses_with_the_json_error_body() {
    let server = server();
    let gw = gateway(&server).await;

    let (status, error) = call(&gw, "GET", "/v1/users/404", None).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"], "not_found");
    assert_eq!(error["message"], "no user 404 ✓");
    assert_eq!(error["grpc_status"], 5);
    assert_eq!(error["request_id"].as_str().unwrap().len(), 32, "{error}");

    let (status, error) = call(&gw, "DELETE", "/v1/users/13", None).await;
    assert_eq!(
        (status, &error["error"]),
        (403, &json!("permission_denied"))
    );
    assert_eq!(
        (&error["message"], &error["grpc_status"]),
        (&json!("not yours"), &json!(7))
    );

    let (status, error) = call(&gw, "GET", "/v1/users/400", None).await;
    assert_eq!((status, &error["grpc_status"]), (400, &json!(3)));

    // The route's timeouts.read bounds the call.
    let (status, error) = call(&gw, "GET", "/v1/users/999", None).await;
    assert_eq!((status, &error["error"]), (504, &json!("upstream_timeout")));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_streaming_answers_a_json_array_ended_by_an_error_when_the_call_fails() {
    let server = server();
    let gw = gateway(&server).await;

    let (status, users) = call(&gw, "GET", "/v1/users:watch?count=3", None).await;
    assert_eq!(status, 200, "{users}");
    let names: Vec<&Value> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["displayName"])
        .collect();
    assert_eq!(
        names,
        [&json!("user 0"), &json!("user 1"), &json!("user 2")]
    );
    // A default value is left out, as the proto3 JSON mapping does by default.
    assert_eq!(users[0].get("id"), None);
    assert_eq!(users[2]["id"], "2");

    assert_eq!(
        call(&gw, "GET", "/v1/users:watch?count=0", None).await,
        (200, json!([]))
    );

    let (status, users) = call(&gw, "GET", "/v1/users:watch?count=2&fail=true", None).await;
    assert_eq!(status, 200, "{users}");
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 3, "{users:?}");
    assert_eq!(users[1]["displayName"], "user 1");
    assert_eq!(users[2]["error"], "unavailable");
    assert_eq!(users[2]["grpc_status"], 14);
    assert_eq!(users[2]["message"], "watch lost");

    // Failing before any message: the status is the answer's.
    let (status, error) = call(&gw, "GET", "/v1/users:watch?count=0&fail=true", None).await;
    assert_eq!((status, &error["error"]), (503, &json!("unavailable")));
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_do_not_fit_are_refused_naming_the_field_and_unbound_paths_are_404() {
    let server = server();
    let gw = gateway(&server).await;

    for (method, path, body, named) in [
        ("POST", "/v1/users", Some(r#"{"role": "BOSS"}"#), "role"),
        ("POST", "/v1/users", Some(r#"{"id": "abc"}"#), "id"),
        (
            "POST",
            "/v1/users",
            Some(r#"{"address": {"city": 5}}"#),
            "address.city",
        ),
        ("POST", "/v1/users", Some(r#"{"nope": 1}"#), "nope"),
        ("POST", "/v1/users", Some("{not json"), "JSON"),
        (
            "PATCH",
            "/v1/users/5",
            Some(r#"{"tags": "one"}"#),
            "user.tags",
        ),
        ("GET", "/v1/users/abc", None, "id"),
        ("GET", "/v1/users?nope=1", None, "nope"),
        (
            "GET",
            "/v1/users?filter.active=maybe",
            None,
            "filter.active",
        ),
        ("GET", "/v1/users?page_size=1&role=BOSS", None, "role"),
    ] {
        let (status, error) = call(&gw, method, path, body).await;
        assert_eq!(status, 400, "{method} {path} {body:?}: {error}");
        assert_eq!(error["error"], "bad_request");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(named), "{method} {path}: {message}");
    }

    for (method, path) in [
        ("GET", "/v1/nothing"),
        ("PUT", "/v1/users/1"),
        ("GET", "/v1/users/1/extra"),
        ("GET", "/v1/users:unwatch"),
    ] {
        let (status, error) = call(&gw, method, path, None).await;
        assert_eq!(
            (status, &error["error"]),
            (404, &json!("no_route")),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_descriptor_set_or_rule_that_does_not_resolve_is_rejected_alone() {
    let server = server();
    let pb = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    descriptors(&pb);
    let good = pb.to_str().unwrap();
    let routes = [
        upstream("users", server.port),
        route("rest", "/v1/**", "users", good, ""),
        route(
            "garbage",
            "/v2/**",
            "users",
            "base64:bm90IGEgZGVzY3JpcHRvciBzZXQ=",
            "",
        ),
        route(
            "wrong-selector",
            "/v3/**",
            "users",
            good,
            "    - { selector: users.v1.UserService.Fly, get: \"/v3/fly\" }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;

    let rejected = gw.status().await["rejected"].to_string();
    assert!(
        rejected.contains("grpc_transcode.descriptors"),
        "{rejected}"
    );
    assert!(
        rejected.contains("grpc_transcode.rules[1].selector"),
        "{rejected}"
    );
    assert!(rejected.contains("users.v1.UserService.Fly"), "{rejected}");
    assert_eq!(call(&gw, "GET", "/v1/users/1", None).await.0, 200);
    assert_eq!(call(&gw, "GET", "/v2/users/1", None).await.0, 404);
    assert_eq!(call(&gw, "GET", "/v3/fly", None).await.0, 404);
    drop(pb);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_refuses_connections_is_a_502() {
    let pb = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    descriptors(&pb);
    let dead = free_addr();
    let routes = format!(
        "{}---\n{}",
        upstream("down", dead.port()),
        route("down", "/v1/**", "down", pb.to_str().unwrap(), "")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let (status, error) = call(&gw, "GET", "/v1/users/1", None).await;
    assert_eq!(
        (status, &error["error"]),
        (502, &json!("upstream_error")),
        "{error}"
    );
}

/// A transcoded route reading its descriptors from the upstream's reflection service.
fn reflected_route(upstream: &str, services: &str) -> String {
    format!(
        r#"kind: Route
id: reflected
match: {{ paths: ["/v1/**"] }}
upstream: {upstream}
grpc_transcode:
  reflection: true
{services}  rules:
    - {{ selector: users.v1.UserService.DeleteUser, delete: "/v1/users/{{id}}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_reads_the_services_and_reads_them_again_when_the_nodes_change() {
    use common::eventually;
    use std::time::Duration;

    // No node answers yet: the route says so rather than guessing.
    let dead = free_addr();
    let routes = format!(
        "{}---\n{}",
        upstream("users", dead.port()),
        reflected_route("users", "  services: [users.v1.UserService]\n")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let (status, error) = call(&gw, "GET", "/v1/users/7", None).await;
    assert_eq!(
        (status, &error["error"]),
        (503, &json!("no_upstream")),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("reflection"),
        "{error}"
    );

    // A server with `grpc.reflection.v1`, the services named by the route.
    let first = PythonServer::start(&format!("{}/server.py", dir()), &["--reflection", "v1"]);
    let routes = format!(
        "{}---\n{}",
        upstream("users", first.port),
        reflected_route("users", "  services: [users.v1.UserService]\n")
    );
    gw.write_file("routes.yaml", &routes);
    eventually(
        Duration::from_secs(15),
        "descriptors read by reflection",
        || async { call(&gw, "GET", "/v1/users/7", None).await.0 == 200 },
    )
    .await;
    let (_, user) = call(&gw, "GET", "/v1/users/7?view=v", None).await;
    assert_eq!((&user["id"], &user["nickname"]), (&json!("7"), &json!("v")));
    assert_eq!(
        call(&gw, "DELETE", "/v1/users/5", None).await,
        (200, json!({}))
    );

    // The node changes to a server with only `v1alpha`, and the route names no service:
    // the services are listed, and the descriptors read again from the new node.
    let second = server();
    let routes = format!(
        "{}---\n{}",
        upstream("users", second.port),
        reflected_route("users", "")
    );
    gw.write_file("routes.yaml", &routes);
    let read_from_second = format!("127.0.0.1:{}", second.port);
    eventually(
        Duration::from_secs(15),
        "a read from the new node",
        || async {
            gw.logs()
                .lines()
                .any(|l| l.contains("read by reflection") && l.contains(&read_from_second))
        },
    )
    .await;
    drop(first);
    assert_eq!(call(&gw, "GET", "/v1/users/9", None).await.0, 200);
    assert_eq!(call(&gw, "GET", "/v1/users/404", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_during_a_call_is_not_waited_for() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let server = server();
    let pb = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    descriptors(&pb);
    // Long enough that only the client's departure can end the call before its answer; one
    // failure would put the node out.
    let slow = route("rest", "/v1/**", "users", pb.to_str().unwrap(), "")
        .replace("read: 700ms", "read: 10s");
    let routes = format!(
        "{}health_check: {{ passive: {{ max_fails: 1, fail_timeout: 30s }} }}\n---\n{slow}",
        upstream("users", server.port)
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;

    // User 998 is answered after 6 s; these clients hang up after 100 ms. The second was
    // told `100 Continue` before it sent its body: that is no answer, and it counts as 499.
    let left = Instant::now();
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(b"GET /v1/users/998 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    let body = br#"{"id": "998", "displayName": "slow"}"#;
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "PATCH /v1/users/998 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::io::AsyncReadExt::read_exact(&mut raw, &mut interim)
        .await
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    raw.write_all(body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    // An HTTP/2 client that resets its stream.
    let h2 = common::h2_giving_up(&gw.url("/v1/users/7"), 200, &gw.url("/v1/users/998")).await;
    let series = "gatehouse_requests_total{route=\"rest\",status=\"499\"} 3";
    common::eventually(Duration::from_secs(10), "the departure logged", || async {
        gw.metrics_text().await.lines().any(|l| l == series)
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(4),
        "the call ran on after its client left: {:?}",
        left.elapsed()
    );
    let logs = gw.logs();
    assert!(!logs.contains("the client left"), "{logs}");
    // The node was not blamed for it.
    let healthy = format!(
        "gatehouse_upstream_node_healthy{{node=\"127.0.0.1:{}\",upstream=\"users\"}} 1",
        server.port
    );
    let metrics = gw.metrics_text().await;
    assert!(metrics.lines().any(|l| l == healthy), "{metrics}");

    // Calls go on being answered, on either protocol.
    let (status, user) = call(&gw, "GET", "/v1/users/7", None).await;
    assert_eq!((status, &user["id"]), (200, &json!("7")));
    let resp = h2.get(gw.url("/v1/users/7")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
