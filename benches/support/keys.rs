//! Key pairs for benchmarks, made by the openssl command line: real keys, as in the tests.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A key pair made by `openssl genpkey` with `options`: (private PEM, public PEM).
pub fn key_pair(dir: &Path, name: &str, options: &[&str]) -> (String, String) {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["-out", name]);
    openssl(dir, &args);
    let public = format!("{name}.pub");
    openssl(dir, &["pkey", "-in", name, "-pubout", "-out", &public]);
    (
        std::fs::read_to_string(dir.join(name)).unwrap(),
        std::fs::read_to_string(dir.join(public)).unwrap(),
    )
}
