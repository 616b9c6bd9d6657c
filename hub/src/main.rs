//! `hub`: parse the command line, load the configuration, run. Nothing else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub::auth::tokens::TokenSpec;
use hub::cli::{self, CertKind, CredentialAction, TokenAction};
use hub::config::{Config, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;

/// The system allocator, with long-lived records packed side by side after a load (see
/// `hub::memory`).
#[global_allocator]
static ALLOCATOR: hub::memory::Allocator = hub::memory::Allocator;

/// Edge/IoT device API hub.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, every default applies.
    #[arg(short, long, global = true, env = "HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides data.dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// HTTPS API listener (overrides api.listen).
    #[arg(long, global = true)]
    api_listen: Option<String>,
    /// Embedded broker listener (overrides mqtt.listen).
    #[arg(long, global = true)]
    mqtt_listen: Option<String>,
    /// `embedded` or mqtt://host:port (overrides mqtt.broker).
    #[arg(long, global = true)]
    mqtt_broker: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve,
    /// Load and validate the configuration, print every problem, exit non-zero if any.
    CheckConfig,
    /// Print the annotated example configuration.
    PrintConfig,
    /// Make, list and revoke API tokens: through the running hub's API, or in the store when no
    /// hub listens on api.listen.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Make, list, rotate and revoke devices' MQTT passwords (user name: the device id), for
    /// devices without a certificate: through the running hub's API, or in the store when no hub
    /// listens on api.listen.
    DeviceCredential {
        #[command(subcommand)]
        action: CredentialCommand,
    },
    /// Issue certificates signed by the hub's CA (`<data.dir>/tls/ca.crt` and `ca.key`).
    Certs {
        #[command(subcommand)]
        action: CertsCommand,
    },
    /// A one-screen summary of the running hub: devices, ingest rate, store and quota, lag of
    /// every sink and pull consumer.
    Status,
    /// The running hub's live stream: one line per durable reading, device event and command
    /// change, until interrupted.
    Watch {
        /// Device-id patterns, comma-separated (`greenhouse-*`); all devices if absent.
        #[arg(long = "device", alias = "devices", value_delimiter = ',')]
        devices: Vec<String>,
        /// Metric patterns, comma-separated (`temp,hum*`); all metrics if absent.
        #[arg(long = "metric", alias = "metrics", value_delimiter = ',')]
        metrics: Vec<String>,
        /// Readings only: no device or command events.
        #[arg(long)]
        no_events: bool,
        /// Print the stream's JSON messages, one per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many readings.
        #[arg(long)]
        count: Option<u64>,
    },
    /// A consistent backup of the data directory, while the hub runs (or not): into
    /// `<data.dir>/backups/<UTC time>/`, or moved to --out.
    Backup {
        /// Where to put the backup (a new directory on the same file system).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Put a backup back into the data directory; the hub must be stopped.
    Restore {
        /// The backup directory.
        from: PathBuf,
        /// Replace a store that is there (its files are kept beside, renamed *.before-restore).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret alone on stdout (shown this once).
    Create {
        /// A name for people: 1 to 64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated: read, command, admin, metrics, sync.
        #[arg(
            long = "scope",
            alias = "scopes",
            value_delimiter = ',',
            required = true
        )]
        scopes: Vec<String>,
        /// Device-id patterns it is limited to, comma-separated (`greenhouse-*`); all if absent.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// How long it lives (`30d`, `12h`); for ever if absent.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON, as the API's `GET /api/v1/tokens` answers.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// The token's id, as `hub token list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Make a device's password and print it alone on stdout (shown this once).
    Create {
        /// The device id (also the MQTT user name).
        #[arg(long)]
        device: String,
    },
    /// List credentials (never their passwords).
    List {
        /// Print JSON, as the API's `GET /api/v1/device-credentials` answers.
        #[arg(long)]
        json: bool,
    },
    /// Replace a device's password and print the new one (the old one is refused at once, and
    /// the connection that used it closed).
    Rotate {
        /// The device id.
        #[arg(long)]
        device: String,
    },
    /// Revoke a device's password (refused at once; its connection closed).
    Revoke {
        /// The device id.
        #[arg(long)]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// A client certificate for the API: CN and DNS name NAME; prints the paths.
    IssueClient {
        /// The client's name: 1 to 64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Days it is valid (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Directory for NAME.crt and NAME.key (default `<data.dir>/tls/clients/`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A device certificate: CN and DNS name ID; prints the paths.
    IssueDevice {
        /// The device id: 1 to 64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        /// Days it is valid (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Directory for ID.crt and ID.key (default `<data.dir>/tls/devices/`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate the hub's CA issued: a device's (`--id`) or a client's (`--name`).
    /// The CA's revocation list (`tls/ca.crl`) is written again; a running hub applies it on
    /// SIGHUP (`systemctl reload hub`), for the API and the MQTT device listener.
    Revoke {
        /// The device whose certificate (`tls/devices/ID.crt`) is revoked.
        #[arg(long, conflicts_with = "name", required_unless_present = "name")]
        id: Option<String>,
        /// The API client whose certificate (`tls/clients/NAME.crt`) is revoked.
        #[arg(long)]
        name: Option<String>,
        /// The certificate file, when it is not where `hub certs` wrote it.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::PrintConfig)) {
        print!("{}", hub::config::EXAMPLE);
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        api_listen: cli.api_listen.clone(),
        mqtt_listen: cli.mqtt_listen.clone(),
        mqtt_broker: cli.mqtt_broker.clone(),
        log_format: cli.log_format,
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        Some(Command::Token { action }) => return token(&config, action),
        Some(Command::DeviceCredential { action }) => {
            let action = match action {
                CredentialCommand::Create { device } => CredentialAction::Create(device),
                CredentialCommand::List { json } => CredentialAction::List { json },
                CredentialCommand::Rotate { device } => CredentialAction::Rotate(device),
                CredentialCommand::Revoke { device } => CredentialAction::Revoke(device),
            };
            return operate(cli::credential(&config, action), |()| ());
        }
        Some(Command::Certs { action }) => return certs(&config, action),
        Some(Command::Status) => {
            return operate(cli::status(&config), |screen| print!("{screen}"));
        }
        Some(Command::Watch {
            devices,
            metrics,
            no_events,
            json,
            count,
        }) => {
            let options = cli::WatchOptions {
                devices,
                metrics,
                events: !no_events,
                json,
                count,
            };
            return operate(
                cli::watch(&config, &options, |line| println!("{line}")),
                |()| {},
            );
        }
        Some(Command::Backup { out }) => {
            return operate(cli::backup(&config, out.as_deref()), |dir| {
                println!("{}", dir.display())
            });
        }
        Some(Command::Restore { from, force }) => {
            return operate(cli::restore(&config, &from, force), |()| {
                println!("restored into {}", config.data.dir.display())
            });
        }
        _ => {}
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    without_thread_caches();
    let log_filter = init_logging(&config);
    // SIGHUP reads the same file, environment and flags again.
    let config_path = cli.config.clone();
    let reload = hub::app::Reload {
        config: Box::new(move || {
            Config::load(config_path.as_deref(), std::env::vars(), &overrides)
        }),
        log_level: Box::new(move |level| {
            let filter = hub::config::log_filter(level).map_err(|e| e.to_string())?;
            log_filter.reload(filter).map_err(|e| e.to_string())
        }),
    };
    match serve(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The log is on stderr: one line says it.
            tracing::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command on a small runtime and prints its outcome.
fn operate<T>(
    command: impl std::future::Future<Output = Result<T, cli::CliError>>,
    print: impl FnOnce(T),
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(value) => {
            print(value);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn token(config: &Config, action: TokenCommand) -> ExitCode {
    let action = match action {
        TokenCommand::Create {
            name,
            scopes,
            devices,
            expires,
        } => TokenAction::Create(TokenSpec {
            name,
            scopes,
            devices,
            expires,
        }),
        TokenCommand::List { json } => TokenAction::List { json },
        TokenCommand::Revoke { id } => TokenAction::Revoke(id),
    };
    operate(cli::token(config, action), |()| ())
}

fn certs(config: &Config, action: CertsCommand) -> ExitCode {
    let result = match &action {
        CertsCommand::IssueClient { name, days, out } => {
            cli::issue_cert(config, CertKind::Client, name, *days, out.as_deref())
        }
        CertsCommand::IssueDevice { id, days, out } => {
            cli::issue_cert(config, CertKind::Device, id, *days, out.as_deref())
        }
        CertsCommand::Revoke { id, name, cert } => {
            return revoke_cert(config, id.as_deref(), name.as_deref(), cert.as_deref());
        }
    };
    match result {
        Ok((cert, key)) => {
            println!("{}", cert.display());
            println!("{}", key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `hub certs revoke`: a device's certificate (`id`) or a client's (`name`).
fn revoke_cert(
    config: &Config,
    id: Option<&str>,
    name: Option<&str>,
    cert: Option<&std::path::Path>,
) -> ExitCode {
    let (kind, who) = match (id, name) {
        (Some(id), _) => (CertKind::Device, id),
        (None, Some(name)) => (CertKind::Client, name),
        (None, None) => {
            eprintln!("hub: certs revoke needs --id (a device) or --name (an API client)");
            return ExitCode::from(2);
        }
    };
    match cli::revoke_cert(config, kind, who, cert) {
        Ok(revoked) => {
            let state = if revoked.already {
                "was revoked already"
            } else {
                "revoked"
            };
            println!("{who}: certificate {} {state}", revoked.serial);
            println!("revocation list: {}", revoked.crl.display());
            if let Some(moved) = &revoked.moved_to {
                println!("moved to {}", moved.display());
            }
            println!(
                "a running hub applies it on SIGHUP: systemctl reload hub (or kill -HUP its pid)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The handle that changes the log filter while the hub runs.
type LogFilter = tracing_subscriber::reload::Handle<
    tracing_subscriber::filter::Targets,
    tracing_subscriber::Registry,
>;

fn init_logging(config: &Config) -> LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // RUST_LOG, when set and valid, wins over the configuration, as it always did.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|level| hub::config::log_filter(&level).ok())
        .or_else(|| hub::config::log_filter(&config.log.level).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::INFO)
        });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal: a journal or a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Pretty => registry.with(fmt).init(),
    }
    handle
}

/// glibc gives threads that allocate their own malloc arenas (up to 8 per core), and an arena keeps
/// what was freed in it for the threads that use it. With the runtime's workers, the blocking pool
/// and the broker's threads, that held over 10 MB of freed memory after a load peak (50 MB peak RSS
/// at 18k readings/s, 39 MB with two arenas, same throughput; bench/ingest.sh). One arena, where
/// every thread reuses what any other freed, took the overload peaks down by another 6 to 9 MB
/// (`bench/run --only overload --seconds 20`, alternating in one session: 100 devices bursting
/// 21.3 and 21.4 MB against 27.5 and 27.7, 1000 JSON devices 36.4 and 36.3 against 46.0 and 43.7,
/// 1000 binary devices 41.9 and 41.4 against 49.2 and 48.1). The rate held with 100 devices and
/// 1000 JSON devices; 1000 binary devices lost about 18% (medians 82k against 100k readings/s),
/// far above what they send at 1/s, while the peak is a bar the hub must never pass.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // An operator's own setting wins, as with the thread caches below.
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max")) {
        return;
    }
    // SAFETY: mallopt only tunes the allocator; it is called once, before any other thread
    // exists, with a valid option and value.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The glibc tunable that turns off its per-thread caches of freed blocks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// Starts the hub again in the same process with glibc's per-thread caches off, unless the
/// environment already sets them (an operator's choice wins). Each thread keeps up to 7 freed
/// blocks of every size for itself; after a load, those blocks sat on pages that were otherwise
/// free, and neither merged with their neighbours nor let `malloc_trim` give the pages back.
/// Measured (`bench/run --only overload`, release build, one run each): the idle hub after the
/// three overload runs went from 23.8 to ~17 MB, at the same ingest rate. Glibc reads tunables only
/// when a program starts, hence the `exec`; it runs before any thread or file of the hub's exists,
/// and if it fails the hub goes on with glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn without_thread_caches() {
    use std::ffi::CString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("glibc.malloc.tcache_count") {
        return;
    }
    let tunables = match tunables.as_str() {
        "" => NO_THREAD_CACHES.to_owned(),
        other => format!("{other}:{NO_THREAD_CACHES}"),
    };
    // execve itself, not std's Command: that machinery was 65 KB of the aarch64 binary.
    let c_string = |bytes: Vec<u8>| CString::new(bytes).ok();
    let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|exe| c_string(exe.into_os_string().into_vec()))
    else {
        return;
    };
    let args: Option<Vec<CString>> = std::env::args_os()
        .map(|arg| c_string(arg.into_vec()))
        .collect();
    let env: Option<Vec<CString>> = std::env::vars_os()
        .filter(|(name, _)| name != "GLIBC_TUNABLES")
        .map(|(name, value)| {
            let mut entry = name.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            c_string(entry)
        })
        .chain(std::iter::once(c_string(
            format!("GLIBC_TUNABLES={tunables}").into_bytes(),
        )))
        .collect();
    let (Some(args), Some(env)) = (args, env) else {
        return;
    };
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (pointers(&args), pointers(&env));
    // SAFETY: every pointer is to a NUL-terminated string that outlives the call, and both arrays
    // end with a null pointer, as execve requires; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    let failed = std::io::Error::last_os_error();
    eprintln!("hub: could not restart itself with glibc's thread caches off ({failed}); going on");
}

/// How often freed memory is handed back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands the allocator's free memory back to the system every [`TRIM_PERIOD`]. glibc keeps what a
/// load peak freed (measured: 54 MB RSS after ingesting 300k readings from 100 devices, 34 MB after
/// one `malloc_trim`); trimming costs a walk of the heap, a few milliseconds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn trim_memory(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        hub::memory::give_back();
    }
}

fn serve(config: Config, reload: hub::app::Reload) -> anyhow::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    limit_malloc_arenas();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a TLS crypto provider was already installed");
    }
    // Two workers are plenty for a gateway; blocking work (commits, scans) has its own small pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("hub")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        tokio::spawn(trim_memory(shutdown.clone()));
        let data_dir = config.data.dir.clone();
        hub::app::run(config, Some(reload), shutdown, |bound| {
            let mqtt = bound.mqtt.map(|a| a.to_string()).unwrap_or_else(|| "external".into());
            let host = if bound.api.ip().is_loopback() { "localhost".to_owned() } else { bound.api.ip().to_string() };
            let dir = data_dir.display();
            // A closed stdout (a reader that went away) must not stop the hub: the lines are a
            // courtesy, the log says the same.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "hub ready: api=https://{} mqtt={mqtt} data={dir}", bound.api);
            let _ = writeln!(
                out,
                "try: curl --cacert {dir}/tls/ca.crt -H \"Authorization: Bearer $(cat {dir}/admin.token)\" https://{host}:{}/api/v1/devices",
                bound.api.port()
            );
            let _ = out.flush();
            hub::notify::ready();
            // Opening the store, its log's replay and the TLS set-up leave about 3 MB free in the
            // heap; without this, a fresh hub held them until the first period's trim.
            hub::memory::give_back();
        })
        .await?;
        Ok(())
    })
}

/// SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the hub with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received; shutting down (again to quit at once)");
    hub::notify::stopping();
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}

/// The error and its causes, each said once: our errors often name their cause in their own
/// message already, and `{:#}` would repeat it.
fn error_chain(error: &anyhow::Error) -> String {
    let mut said = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !said.contains(&cause) {
            said.push_str(": ");
            said.push_str(&cause);
        }
    }
    said
}
