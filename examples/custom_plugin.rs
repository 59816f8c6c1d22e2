//! A gateway with a plugin of its own: `stamp` puts a header from its configuration on
//! every request sent upstream. Everything else is the `gatehouse` command, unchanged:
//!
//! ```yaml
//! plugins:
//!   - name: stamp
//!     config: { header: X-Stamp, value: blue }
//! ```

use gatehouse::plugins::http::{HeaderName, HeaderValue};
use gatehouse::plugins::pingora_http::RequestHeader;
use gatehouse::plugins::registry::{decode, Config, ConfigError, PluginFactory, Registry};
use gatehouse::plugins::{Exchange, Plugin, Stage};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    header: String,
    value: String,
}

struct Stamp(HeaderName, HeaderValue);

impl Plugin for Stamp {
    fn name(&self) -> &'static str {
        "stamp"
    }
    fn stage(&self) -> Stage {
        Stage::Transform
    }
    fn upstream_request(&self, req: &mut RequestHeader, _ex: &Exchange) {
        let _ = req.insert_header(self.0.clone(), self.1.clone());
    }
}

struct StampFactory;

impl PluginFactory for StampFactory {
    fn name(&self) -> &'static str {
        "stamp"
    }
    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let s: Settings = decode(config)?;
        let name = s
            .header
            .parse()
            .map_err(|_| ConfigError::new("header", "not a header name"))?;
        let value = s
            .value
            .parse()
            .map_err(|_| ConfigError::new("value", "not a header value"))?;
        Ok(Box::new(Stamp(name, value)))
    }
}

fn main() -> std::process::ExitCode {
    let mut plugins = Registry::builtin();
    plugins.add(StampFactory);
    gatehouse::cli::main_with(plugins)
}
