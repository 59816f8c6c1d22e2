//! Writes N RS256 tokens, one per line, for load tests of authenticated routes.
//!
//! Usage: `mint_tokens PRIVATE_KEY_PEM KID COUNT OUT` — each token has its own `sub`
//! (`user-0`, `user-1`, …), the scope `bench`, and expires in a day.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, key, kid, count, out] = &args[..] else {
        eprintln!("usage: mint_tokens PRIVATE_KEY_PEM KID COUNT OUT");
        std::process::exit(2);
    };
    let pem = std::fs::read(key).expect("the private key can be read");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA private key in PEM");
    let count: usize = count.parse().expect("COUNT is a number");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.clone());
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).expect("OUT is writable"));
    for i in 0..count {
        let claims = serde_json::json!({"sub": format!("user-{i}"), "scope": "bench", "exp": exp});
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("signs");
        writeln!(file, "{token}").unwrap();
    }
}
