use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatehouse::bootstrap::Bootstrap;
use gatehouse::demo::{self, DemoOptions};
use gatehouse::provider::file::FileSource;
use gatehouse::resource::{admit, Catalog, Kind};
use gatehouse::server::{self, Launch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Validate { paths }) => return validate(paths),
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
    let (docs, _) = FileSource::new(paths).read();
    let (catalog, rejections) = admit(docs, &Catalog::default());
    if rejections.is_empty() {
        println!(
            "ok: {} routes, {} upstreams, {} auth policies",
            catalog.len(Kind::Route),
            catalog.len(Kind::Upstream),
            catalog.len(Kind::AuthPolicy)
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
