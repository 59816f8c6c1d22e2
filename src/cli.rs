//! The command line: `run`, `validate`, `apply`, `get`, `delete`, `demo`, `import`. A library
//! function rather than the binary's own code, so a program with plugins of its own runs
//! the very same gateway: [`main_with`] installs its registry, then does what the
//! `gatehouse` binary does.

use crate::bootstrap::{Bootstrap, EtcdSettings};
use crate::demo::{self, DemoOptions};
use crate::provider::file::FileSource;
use crate::resource::{admit, Catalog, Kind, ObjectKey};
use crate::server::{self, Launch};
use crate::store::{Conditional, Store};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatehouse_plugins::registry::{self, Registry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A programmable API gateway on Pingora.
#[derive(Parser)]
#[command(name = "gatehouse", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, gatehouse runs.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Run(RunArgs),
    /// Check resource files or folders; list every error and exit 1 if there is any.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate resource files or folders against what etcd holds, then write them all in
    /// one transaction (nothing is written if anything is invalid).
    Apply {
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print resources stored in etcd (`get routes`, `get upstreams ID`), or the gateway
    /// instances registered there (`get instances [-o json]`).
    Get {
        /// routes, upstreams, auth, global_rules or instances
        kind: String,
        id: Option<String>,
        /// For `instances`: `table` (default) or `json`.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Delete a resource from etcd: `delete routes ID`.
    Delete {
        /// routes, upstreams, auth or global_rules
        kind: String,
        id: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Translate Spring Cloud Gateway routes or a go-kratos gateway config into gatehouse
    /// resources under DIR; list on stderr what could not be translated.
    Import {
        /// The format of the files: spring-cloud-gateway or kratos-gateway.
        #[arg(long = "from", value_enum)]
        from: crate::import::Dialect,
        /// The configuration files, translated together.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The folder the resources are written to (created if missing).
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: PathBuf,
    },
    /// Start the gateway on the sample routes with two built-in demo upstreams.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
        #[arg(long, default_value = "routes")]
        routes: PathBuf,
    },
}

#[derive(Args)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "GATEHOUSE_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// The key prefix gatehouse reads.
    #[arg(long, env = "GATEHOUSE_ETCD_PREFIX", default_value = "/gatehouse")]
    prefix: String,
}

impl EtcdArgs {
    fn settings(&self) -> EtcdSettings {
        EtcdSettings::with_endpoints(
            self.etcd.clone(),
            self.prefix.trim_end_matches('/').to_string(),
        )
    }
}

#[derive(Args)]
struct RunArgs {
    /// The bootstrap config.
    #[arg(short, long, default_value = "config/gatehouse.yaml")]
    config: PathBuf,
    /// Take over the listening sockets of a running gatehouse (zero-downtime upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// The socket used to hand listeners over during an upgrade.
    #[arg(long, default_value = "/tmp/gatehouse_upgrade.sock")]
    upgrade_sock: String,
    /// Where the daemon writes its pid.
    #[arg(long, default_value = "/tmp/gatehouse.pid")]
    pid_file: String,
}

/// The `gatehouse` command with the built-in plugins.
pub fn main() -> ExitCode {
    main_with(Registry::builtin())
}

/// The `gatehouse` command with `plugins` as the registry every route is compiled against
/// (the built-ins and a program's own, see docs/plugins.md).
pub fn main_with(plugins: Registry) -> ExitCode {
    if registry::install(plugins).is_err() {
        eprintln!("gatehouse: a plugin registry was installed before the command ran");
        return ExitCode::FAILURE;
    }
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Validate { paths }) => return validate(paths),
        Some(Command::Apply { files, etcd }) => return block_on(apply(files, etcd.settings())),
        Some(Command::Get {
            kind,
            id,
            output,
            etcd,
        }) => {
            if kind == crate::fleet::INSTANCES {
                return block_on(instances(output, etcd.settings()));
            }
            return block_on(get(kind, id, etcd.settings()));
        }
        Some(Command::Delete { kind, id, etcd }) => {
            return block_on(delete(kind, id, etcd.settings()))
        }
        Some(Command::Import {
            from,
            files,
            output,
        }) => return import(from, files, output),
        Some(Command::Demo {
            listen,
            admin,
            routes,
        }) => demo::launch(DemoOptions {
            listen,
            admin,
            routes,
        })
        .and_then(server::run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let bootstrap = Bootstrap::load(&args.config)?;
    let mut launch = Launch::new(bootstrap);
    launch.upgrade = args.upgrade;
    launch.daemon = args.daemon;
    launch.upgrade_sock = args.upgrade_sock;
    launch.pid_file = args.pid_file;
    server::run(launch).context("gatehouse stopped")
}

/// Judges the files exactly as the file provider would, against an empty catalog: every
/// reference must resolve within the files given.
fn validate(paths: Vec<PathBuf>) -> ExitCode {
    let docs = FileSource::new(paths).read().docs;
    let (catalog, rejections) = admit(&docs, &Catalog::default());
    if rejections.is_empty() {
        println!(
            "ok: {} routes, {} upstreams, {} auth policies, {} global rules",
            catalog.len(Kind::Route),
            catalog.len(Kind::Upstream),
            catalog.len(Kind::AuthPolicy),
            catalog.len(Kind::GlobalRule)
        );
        return ExitCode::SUCCESS;
    }
    for rejection in &rejections {
        for line in rejection.lines() {
            eprintln!("{line}");
        }
    }
    ExitCode::FAILURE
}

/// Writes the translated resources, lists what was not translated, and exits 0; exits 1
/// with nothing written when an input does not parse or holds no route.
fn import(from: crate::import::Dialect, files: Vec<PathBuf>, output: PathBuf) -> ExitCode {
    match crate::import::run(from, &files, &output) {
        Ok(outcome) => {
            for report in &outcome.reports {
                eprintln!("{report}");
            }
            println!(
                "imported {} routes and {} upstreams into {}; {} items not translated or not exactly (listed on stderr)",
                outcome.routes,
                outcome.upstreams,
                output.display(),
                outcome.reports.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse import: {e}");
            eprintln!("nothing written");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command that talks to etcd; errors print and exit 1.
fn block_on(command: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(command))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn apply(files: Vec<PathBuf>, settings: EtcdSettings) -> anyhow::Result<ExitCode> {
    let mut store = Store::open(&settings).await?;
    let stored = store.contents().await?;
    let plan = crate::apply::plan(&files, &stored, &settings.prefix);
    if !plan.errors.is_empty() {
        for line in &plan.errors {
            eprintln!("{line}");
        }
        eprintln!("nothing written");
        return Ok(ExitCode::FAILURE);
    }
    let count = plan.writes.len();
    let keys: Vec<String> = plan.writes.iter().map(|(k, _)| k.to_string()).collect();
    let revision = store.put_all(plan.writes).await.context(
        "writing in one transaction failed (etcd allows --max-txn-ops operations per transaction, 128 by default)",
    )?;
    for key in keys {
        println!("applied {key}");
    }
    println!("{count} objects written at revision {revision}");
    Ok(ExitCode::SUCCESS)
}

fn kind_of(name: &str) -> anyhow::Result<Kind> {
    let plural = if name.ends_with('s') || name == "auth" {
        name.to_string()
    } else {
        format!("{name}s")
    };
    Kind::from_collection(&plural)
        .with_context(|| format!("`{name}` is not one of {}", Kind::collections()))
}

async fn get(kind: String, id: Option<String>, settings: EtcdSettings) -> anyhow::Result<ExitCode> {
    let kind = kind_of(&kind)?;
    let mut store = Store::open(&settings).await?;
    if let Some(id) = id {
        let key = ObjectKey { kind, id };
        return Ok(match store.get(&key).await? {
            Some(value) => {
                print!("{}", String::from_utf8_lossy(&value));
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("{key} is not in etcd");
                ExitCode::FAILURE
            }
        });
    }
    let collection = format!("{}/{}/", settings.prefix, kind.collection());
    let contents = store.contents().await?;
    let mut first = true;
    for (key, value) in contents
        .entries
        .iter()
        .filter(|(k, _)| k.starts_with(&collection))
    {
        if !first {
            println!("---");
        }
        first = false;
        println!("# {key}");
        let text = String::from_utf8_lossy(value);
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `get instances`: the fleet, as a table with a `LAGGING` column or as JSON.
async fn instances(output: String, settings: EtcdSettings) -> anyhow::Result<ExitCode> {
    if output != "table" && output != "json" {
        anyhow::bail!("-o takes `table` or `json`, not `{output}`");
    }
    let mut store = Store::open(&settings).await?;
    let fleet = crate::fleet::read(&mut store.client, &settings.prefix).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&fleet.instances)?);
    } else {
        print!("{}", crate::fleet::table(&fleet));
        let lagging = fleet.instances.iter().filter(|i| i.lagging).count();
        if lagging > 0 {
            eprintln!(
                "{lagging} instance(s) lag the newest change (revision {})",
                fleet.config_revision
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(kind: String, id: String, settings: EtcdSettings) -> anyhow::Result<ExitCode> {
    let key = ObjectKey {
        kind: kind_of(&kind)?,
        id,
    };
    let mut store = Store::open(&settings).await?;
    match store.delete(&key, None).await? {
        Conditional::Done(revision) => {
            println!("deleted {key} at revision {revision}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{key} is not in etcd");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
