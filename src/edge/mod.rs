//! Edge safety (SPEC §8): what a hostile client cannot do to the gateway or past it.
//!
//! - [`path`]: one normal form for every spelling of a path, before routing;
//! - [`target`]: the request target forms a gateway takes (no CONNECT, no `OPTIONS *`);
//! - [`headers`]: framing, authority and hop-by-hop headers;
//! - [`clients`], [`stream`], [`app`]: connection caps, the whole-head clock, the drain;
//! - [`departure`]: a client that leaves while the gateway waits on its behalf;
//! - [`tls`]: TLS listeners, whose handshakes the door times and counts;
//! - [`limits`]: the process's descriptor limit and what is kept in reserve;
//! - [`listeners`]: listening sockets shut the moment a stopping process stops accepting.
//!
//! Everything here is pure or owns its own state; the proxy calls it and nothing in it knows
//! a route or a snapshot.

pub mod app;
pub mod clients;
pub mod departure;
pub mod headers;
pub mod limits;
pub mod listeners;
pub mod path;
pub mod stream;
pub mod target;
pub mod tls;

pub use app::{ClientDoor, Draining};
pub use clients::ClientTable;
pub use headers::Underscores;
pub use listeners::Listening;
pub use path::PathPolicy;
pub use stream::ClientStream;
pub use tls::TlsListeners;
