//! The gateway's own wire forms, shared by the proxy and the admin API: request ids, the JSON
//! error body of SPEC §4, and cheap renderings of ids and addresses into header values.
//! Each rendering runs on every request, where the formatting machinery (`{:032x}`,
//! `Display` for addresses) would cost ten times as much as these few loops.

use bytes::Bytes;
use http::HeaderValue;
use std::net::IpAddr;

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    hex_id(fastrand::u128(..))
}

/// Marks a header value that differs on every request (a request id, a `traceparent`) as one
/// HTTP/2 must never index. HPACK would otherwise put each into the connection's header
/// table, where it is never used again and pushes out the values that do repeat
/// (`content-type`, `te`, `x-forwarded-for`, `user-agent`), which must then be sent in full
/// and inserted again. HTTP/1 ignores the mark.
pub fn unique_per_request(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The body of a gateway error: `{"error": CODE, "message": TEXT, "request_id": ID}`.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    Bytes::from(body.to_string())
}

/// 128 bits as 32 lower-case hex digits, the shape of a W3C trace id.
pub fn hex_id(bits: u128) -> String {
    let mut id = [0u8; 32];
    write_hex(&mut id, &bits.to_be_bytes());
    // Hex digits are ASCII, so this never falls back.
    std::str::from_utf8(&id).unwrap_or_default().to_owned()
}

/// Writes `bytes` into `out` as lower-case hex, two digits a byte; `out` is twice as long.
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// Appends an IP address the way `Display` writes it; IPv4, nearly every client, without
/// the formatting machinery.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_as_format_writes_them() {
        assert_eq!(hex_id(0xabc), format!("{:032x}", 0xabc));
        assert_eq!(hex_id(u128::MAX), "f".repeat(32));
        let mut short = [0u8; 4];
        write_hex(&mut short, &[0x0a, 0xf7]);
        assert_eq!(&short, b"0af7");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.2",
            "127.0.0.1",
            "192.168.100.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x {ip}"));
        }
    }
}
