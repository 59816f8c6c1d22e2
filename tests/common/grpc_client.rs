//! The real gRPC client of the tests: `tests/grpc/client.py` (grpcio) making the calls of
//! one case through the gateway.

use super::Gateway;
use std::process::Command;

/// Runs the Python client's `case` against the gateway (blocking); its JSON answer.
pub fn call(gw: &Gateway, case: &str) -> serde_json::Value {
    let target = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/grpc/client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([&target, case])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
