//! `tokd-bench`: the benchmark suite. Measures, side by side in one run,
//! tokd against the floors it is judged by and writes `BENCHMARKS.md`:
//!
//! 1. `tokctl get` as a whole process (hyperfine) against `cat` of a token
//!    file, a bare one-call zbus client and `dbus-send`;
//! 2. GetToken throughput through dbus-daemon against a bare zbus server
//!    under the same load (`bench-load`), and over the private socket;
//! 3. tokd with 10,000 installations holding 1 KiB tokens: start to name
//!    owned, then RSS and CPU over 60 s idle;
//! 4. 1,000 concurrent gets on an installation that needs a refresh:
//!    provider requests and the latency spread;
//! 5. memory: tokd idle with one installation beside `pizauth server` with
//!    one account, and tokd's memory after the burst of 4;
//! 6. 10,000 client-credentials installations, each fetched once (768-byte
//!    tokens): RSS, and own memory per installation beyond its token;
//! 7. `tokctl get` of one installation while a connect loop floods another's
//!    login listener and 20,000 other sockets are open: p99 latency.
//!
//! Everything runs on a private dbus-daemon, against the provider emulator
//! on 127.0.0.1. The binaries measured are the release builds beside this
//! one: run it through `bench/run`, which builds them first.

use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use tokd::secret::{AccessToken, RefreshToken};
use tokd::storage::{Record, StateFolder};
use tokd_testkit::{Behaviour, Emulator, Fault, Home, PrivateBus, Tokd};

const CLIENT_ID: &str = "bench-client";
const SECRET: &str = "bench-client-secret";
/// Not on this machine: logins finish with a code given by hand.
const REDIRECT: &str = "https://app.example.com/callback";
const HOUR: Duration = Duration::from_secs(3600);
/// Rounds the whole-process runs are split into.
const PROCESS_ROUNDS: u32 = 5;

#[derive(Debug, Parser)]
#[command(name = "tokd-bench")]
struct Args {
    /// Where the report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// A smoke run (few repetitions, 5 s idle, 1,000 installations): checks
    /// that the suite works, its figures mean little.
    #[arg(long)]
    quick: bool,
    /// Set up the world of the first three sections, print its environment
    /// as shell `export` lines and wait until killed: for profiling by hand
    /// (`perf`, `strace`, `valgrind`) against the same tokd.
    #[arg(long)]
    hold: bool,
    /// With --hold: a Secret Service (gnome-keyring) on the world's bus
    /// first, so that tokd keeps its tokens in the keyring, as it does by
    /// default on a desktop (`bench/order` profiles both stores).
    #[arg(long, requires = "hold")]
    keyring: bool,
    /// Set up the home of the installations section (config and state of
    /// 10,000 installations, a private bus, the emulator) without starting
    /// tokd, print its environment and wait: to run tokd by hand under a
    /// profiler (`valgrind --tool=massif`, `perf`, `strace -c`).
    #[arg(long)]
    hold_many: bool,
    /// For the login flood: open this many connected loopback socket pairs,
    /// say `held`, and keep them until standard input closes (a process
    /// of its own, for its own descriptor limit).
    #[arg(long, hide = true)]
    hold_sockets: Option<usize>,
    /// Run one section only (the report then has only its figures).
    #[arg(long, value_enum)]
    only: Option<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Process,
    Throughput,
    Burst,
    Installations,
    Memory,
    ClientCredentials,
    LoginFlood,
}

/// How much of everything: the full run, or the smoke run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    process_runs: u32,
    throughput_rounds: usize,
    throughput_seconds: f64,
    installations: usize,
    starts: usize,
    idle: Duration,
    burst: usize,
    /// `tokctl get`s timed in the login flood (and before it).
    flood_gets: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                process_runs: 50,
                throughput_rounds: 1,
                throughput_seconds: 0.5,
                installations: 1000,
                starts: 2,
                idle: Duration::from_secs(5),
                burst: 1000,
                flood_gets: 50,
            }
        } else {
            Self {
                process_runs: 500,
                throughput_rounds: 9,
                throughput_seconds: 2.0,
                installations: 10_000,
                starts: 5,
                idle: Duration::from_secs(60),
                burst: 1000,
                flood_gets: 300,
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(pairs) = args.hold_sockets {
        return match hold_sockets(pairs) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tokd-bench: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokd-bench: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(_) if args.hold || args.hold_many => std::process::ExitCode::SUCCESS,
        Ok(missed) => {
            eprintln!("tokd-bench: wrote {}", args.out.display());
            if missed.is_empty() {
                eprintln!("tokd-bench: every target met");
            } else {
                eprintln!("tokd-bench: targets missed: {}", missed.join("; "));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokd-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// The binaries beside this one.
#[derive(Debug)]
struct Binaries {
    tokd: PathBuf,
    tokctl: PathBuf,
    bare_client: PathBuf,
    bare_server: PathBuf,
    load: PathBuf,
    /// The same two clients linked as `cargo build` links them (glibc
    /// shared), when `bench/run` kept copies.
    tokctl_dynamic: Option<PathBuf>,
    bare_client_dynamic: Option<PathBuf>,
    /// tokctl's `get` path with a clock at each stage.
    get_stages: Option<PathBuf>,
    /// `pizauth`, the closest peer: `$PIZAUTH`, else where `bench/run`
    /// installs it (`target/pizauth/bin/pizauth`).
    pizauth: Option<PathBuf>,
}

impl Binaries {
    fn find() -> Fallible<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().ok_or("no folder for this binary")?;
        let find = |name: &str| -> Fallible<PathBuf> {
            let path = dir.join(name);
            if path.exists() {
                Ok(path)
            } else {
                Err(format!(
                    "{} is missing: run `bench/run`, which builds every binary in release first",
                    path.display()
                )
                .into())
            }
        };
        Ok(Self {
            tokd: find("tokd")?,
            tokctl: find("tokctl")?,
            bare_client: find("bare-client")?,
            bare_server: find("bare-server")?,
            load: find("bench-load")?,
            tokctl_dynamic: find("tokctl-dynamic").ok(),
            bare_client_dynamic: find("bare-client-dynamic").ok(),
            get_stages: find("get-stages").ok(),
            pizauth: std::env::var_os("PIZAUTH")
                .map(PathBuf::from)
                .or_else(|| {
                    dir.parent()
                        .map(|target| target.join("pizauth").join("bin").join("pizauth"))
                })
                .filter(|path| path.exists()),
        })
    }
}

/// A target: what it says, the measured value, and whether it is met.
#[derive(Debug)]
struct Target {
    what: String,
    measured: String,
    met: bool,
}

async fn run(args: &Args) -> Fallible<Vec<String>> {
    let plan = Plan::new(args.quick);
    let bin = Binaries::find()?;
    let mut report = String::new();
    let mut targets = Vec::new();
    writeln!(report, "# Benchmarks\n")?;
    if args.quick {
        writeln!(
            report,
            "**A smoke run (`--quick`): too few repetitions to mean much.**\n"
        )?;
    }
    writeln!(report, "{}", machine())?;

    if args.hold_many {
        let emulator = Emulator::start(Behaviour::bitbucket_classic()).await;
        emulator.register_client(CLIENT_ID, SECRET);
        let home = many_homes(plan.installations, &emulator)?;
        let bus = PrivateBus::start();
        let mut exports = String::new();
        for (key, value) in home.env(&bus) {
            writeln!(exports, "export {key}='{value}'")?;
        }
        writeln!(exports, "# tokd: {}", bin.tokd.display())?;
        std::io::Write::write_all(&mut std::io::stdout(), exports.as_bytes())?;
        wait_for_a_stop().await?;
        return Ok(Vec::new());
    }
    let world = World::start(&bin, args.keyring).await?;
    if args.hold {
        let mut exports = String::new();
        for (key, value) in world.env() {
            writeln!(exports, "export {key}='{value}'")?;
        }
        writeln!(
            exports,
            "# tokd pid {}, token file {}",
            world.tokd.pid(),
            world.token_file.display()
        )?;
        std::io::Write::write_all(&mut std::io::stdout(), exports.as_bytes())?;
        wait_for_a_stop().await?;
        return Ok(Vec::new());
    }
    let runs = |section: Section| args.only.is_none_or(|only| only == section);
    if runs(Section::Process) {
        eprintln!("tokd-bench: 1/7 one `tokctl get` as a whole process");
        report.push_str(&process_latency(&bin, &world, &plan, &mut targets)?);
    }
    if runs(Section::Throughput) {
        eprintln!("tokd-bench: 2/7 GetToken throughput");
        report.push_str(&throughput(&bin, &world, &plan, &mut targets)?);
    }
    if runs(Section::Burst) {
        eprintln!("tokd-bench: 3/7 concurrent gets on a token that needs a refresh");
        report.push_str(&burst(&bin, &world, &plan, &mut targets)?);
    }
    let small_rss = rss_kib(world.tokd.pid())?;
    drop(world);
    if runs(Section::Installations) {
        eprintln!(
            "tokd-bench: 4/7 {} installations: start and idle",
            plan.installations
        );
        report.push_str(&many_installations(&bin, &plan, small_rss, &mut targets).await?);
    }
    if runs(Section::Memory) {
        eprintln!("tokd-bench: 5/7 memory: idle beside pizauth, and after a burst");
        report.push_str(&memory_section(&bin, &plan, &mut targets).await?);
    }
    if runs(Section::ClientCredentials) {
        eprintln!(
            "tokd-bench: 6/7 {} client-credentials installations, each fetched once",
            plan.installations
        );
        report.push_str(&client_credentials(&bin, &plan, &mut targets).await?);
    }

    if runs(Section::LoginFlood) {
        eprintln!("tokd-bench: 7/7 gets while the login listener is flooded, 20,000 sockets open");
        report.push_str(&login_flood(&bin, &plan, &mut targets).await?);
    }

    let mut summary = String::from("## Targets\n\n| target | measured | |\n|---|---|---|\n");
    let mut missed = Vec::new();
    for target in &targets {
        writeln!(
            summary,
            "| {} | {} | {} |",
            target.what,
            target.measured,
            if target.met { "met" } else { "**missed**" }
        )?;
        if !target.met {
            missed.push(target.what.clone());
        }
    }
    summary.push('\n');
    // What each change bought: kept by hand, from runs of this suite.
    if let Ok(changes) = std::fs::read_to_string("bench/changes.md") {
        report.push_str(&changes);
    }
    let report = report.replacen("<!-- targets -->\n", &summary, 1);
    std::fs::write(&args.out, report)?;
    Ok(missed)
}

/// Until Ctrl-C or SIGTERM (for `--hold`); returning cleans everything up.
async fn wait_for_a_stop() -> Fallible<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// What to say after the commit when the work tree differs from it: the
/// figures are then not that commit's.
fn uncommitted() -> &'static str {
    let changed = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
    if changed {
        " with uncommitted changes"
    } else {
        ""
    }
}

/// The machine, the toolchain and the date, for the top of the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal"))
                .map(|line| line.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{} GiB", kib / 1024 / 1024),
        );
    let first_line = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "not found".into())
    };
    format!(
        "Written by `bench/run` on {date} (UTC) at commit {commit}.\n\n\
         | | |\n|---|---|\n\
         | CPU | {cpu}, {cores} cores available |\n\
         | memory | {memory} |\n\
         | kernel | {kernel} |\n\
         | rustc | {rustc} |\n\
         | dbus-daemon | {dbus} |\n\
         | hyperfine | {hyperfine} |\n\n\
         Every figure below comes from this one run. Servers listen on 127.0.0.1 \
         and on a private dbus-daemon started for the run; the binaries are the \
         release builds (`cargo build --release`).\n\n<!-- targets -->\n",
        date = first_line("date", "-u"),
        commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|rev| !rev.is_empty())
            .map_or_else(|| "unknown".into(), |rev| rev + uncommitted()),
        kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |text| text.trim().to_owned()),
        rustc = first_line("rustc", "-V"),
        dbus = first_line("dbus-daemon", "--version"),
        hyperfine = first_line("hyperfine", "--version"),
    )
}

/// A private bus, the emulator, and tokd with one logged-in installation
/// `bench` holding a 1 KiB token, plus the bare server on the same bus.
struct World {
    emulator: Emulator,
    bus: PrivateBus,
    home: Home,
    tokd: Tokd,
    bare: std::process::Child,
    token_file: PathBuf,
    /// The Secret Service, when the world has one (`--keyring`).
    _keyring: Option<tokd_testkit::GnomeKeyring>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.bare.kill();
        let _ = self.bare.wait();
    }
}

impl World {
    async fn start(bin: &Binaries, keyring: bool) -> Fallible<Self> {
        let emulator = Emulator::start(Behaviour {
            token_length: 1024,
            ..Behaviour::bitbucket_classic()
        })
        .await;
        emulator.register_client(CLIENT_ID, SECRET);
        let bus = PrivateBus::start();
        let keyring = match keyring {
            true => Some(tokd_testkit::GnomeKeyring::start(&bus).await),
            false => None,
        };
        let home = Home::new();
        let secret = home.write_secret("bench.secret", SECRET);
        home.write_config(&format!(
            "{}\n[installations.bench]\nconsumer = \"bench\"\nscopes = [\"read\"]\n",
            emulator.consumer_table("bench", CLIENT_ID, &secret, REDIRECT)
        ));
        let tokd = Tokd::start_with_env(&bin.tokd, &home, &bus, &[("TOKD_LOG", "info")]).await;
        let code = emulator.issue_code(CLIENT_ID, &["read"], Some(REDIRECT), None);
        let login = home
            .tokctl(&bin.tokctl, &bus, &["login", "bench", "--code", &code])
            .output()
            .await?;
        if !login.status.success() {
            return Err(format!(
                "the login failed: {}",
                String::from_utf8_lossy(&login.stderr)
            )
            .into());
        }
        let token = home
            .tokctl(&bin.tokctl, &bus, &["get", "bench"])
            .output()
            .await?;
        if !token.status.success() || token.stdout.len() != 1025 {
            return Err(format!(
                "`tokctl get bench` did not print a 1 KiB token: {}",
                String::from_utf8_lossy(&token.stderr)
            )
            .into());
        }
        let token_file = home.path().join("token");
        std::fs::write(&token_file, &token.stdout)?;
        let bare = Command::new(&bin.bare_server)
            .env("DBUS_SESSION_BUS_ADDRESS", bus.address())
            .stdin(Stdio::null())
            .spawn()?;
        let world = Self {
            emulator,
            bus,
            home,
            tokd,
            bare,
            token_file,
            _keyring: keyring,
        };
        world.wait_for_bare().await?;
        Ok(world)
    }

    async fn wait_for_bare(&self) -> Fallible<()> {
        let connection = self.bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
        let name = zbus::names::BusName::try_from(BARE_NAME)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dbus.name_has_owner(name.clone()).await? {
            if std::time::Instant::now() > deadline {
                return Err("the bare server did not take its name".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The environment of tokctl and the clients, as a user's shell has it.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.home.env(&self.bus);
        env.retain(|(key, _)| key != "TOKD_LOG");
        env
    }

    fn private_socket(&self) -> PathBuf {
        self.home
            .path()
            .join("runtime")
            .join(tokd_shared::PRIVATE_SOCKET)
    }
}

const BARE_NAME: &str = "org.tokd.bench.Bare";

/// One command's timings: median and spread, in milliseconds.
#[derive(Debug, Clone)]
struct Timing {
    command: String,
    median: f64,
    mean: f64,
    stddev: f64,
    min: f64,
    max: f64,
}

impl Timing {
    fn of(command: &str, times: &mut [f64]) -> Self {
        times.sort_by(f64::total_cmp);
        let n = times.len() as f64;
        let mean = times.iter().sum::<f64>() / n;
        let stddev = (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / n).sqrt();
        Self {
            command: command.to_owned(),
            median: median(times),
            mean,
            stddev,
            min: times.first().copied().unwrap_or(f64::NAN),
            max: times.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Runs hyperfine over `commands` (each a name and an argv) with `env`,
/// no shell in between (`-N`), and adds each run's time (ms) to `times`.
fn hyperfine(
    commands: &[(&str, Vec<String>)],
    env: &[(String, String)],
    runs: u32,
    times: &mut std::collections::BTreeMap<String, Vec<f64>>,
) -> Fallible<()> {
    let export = tempfile::NamedTempFile::new()?;
    let mut command = Command::new("hyperfine");
    command
        .args(["-N", "--style", "none", "--warmup", "20", "--runs"])
        .arg(runs.to_string())
        .arg("--export-json")
        .arg(export.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, argv) in commands {
        command.args(["-n", name]).arg(shell_words(argv));
    }
    let status = command.status().map_err(|e| {
        format!("cannot run hyperfine ({e}); `bench/run` installs it (Debian: hyperfine)")
    })?;
    if !status.success() {
        return Err(format!("hyperfine failed: {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(export.path())?)?;
    for result in json["results"]
        .as_array()
        .ok_or("no results from hyperfine")?
    {
        let name = result["command"].as_str().unwrap_or("?").to_owned();
        let runs = result["times"]
            .as_array()
            .ok_or("no times from hyperfine")?;
        times.entry(name).or_default().extend(
            runs.iter()
                .filter_map(serde_json::Value::as_f64)
                .map(|s| s * 1000.0),
        );
    }
    Ok(())
}

/// hyperfine splits its `-N` commands on whitespace, with quotes.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if arg.contains([' ', '"', '\'']) {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn process_latency(
    bin: &Binaries,
    world: &World,
    plan: &Plan,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    let env = world.env();
    let get = vec![path(&bin.tokctl), "get".into(), "bench".into()];
    let mut commands = vec![
        (
            "cat token-file",
            vec!["cat".into(), path(&world.token_file)],
        ),
        ("tokctl get, private socket", get.clone()),
        (
            "bare zbus client, session bus",
            vec![path(&bin.bare_client), "bench".into()],
        ),
        (
            "tokctl --version",
            vec![path(&bin.tokctl), "--version".into()],
        ),
    ];
    if let Some(tokctl) = &bin.tokctl_dynamic {
        commands.push((
            "tokctl get, private socket, glibc shared",
            vec![path(tokctl), "get".into(), "bench".into()],
        ));
    }
    if let Some(bare) = &bin.bare_client_dynamic {
        commands.push((
            "bare zbus client, session bus, glibc shared",
            vec![path(bare), "bench".into()],
        ));
    }
    let dbus_send = Command::new("dbus-send").arg("--version").output().is_ok();
    if dbus_send {
        commands.push((
            "dbus-send, session bus",
            [
                "dbus-send",
                "--session",
                "--print-reply",
                "--dest=org.tokd.tokd1",
                "/org/tokd/tokd1",
                "org.tokd.tokd1.Manager.GetToken",
                "string:bench",
                "uint32:60",
            ]
            .map(String::from)
            .to_vec(),
        ));
    }
    // The same tokctl where no private socket is found: the session bus.
    let mut no_socket = env.clone();
    for (key, value) in &mut no_socket {
        if key == "XDG_RUNTIME_DIR" {
            *value = path(&world.home.path().join("no-runtime"));
        }
    }
    let fallback = [("tokctl get, session bus", get)];
    // Rounds, so that a slow spell of the machine falls on every command
    // alike rather than on whichever ran then.
    let mut times = std::collections::BTreeMap::new();
    for _ in 0..PROCESS_ROUNDS {
        hyperfine(
            &commands,
            &env,
            plan.process_runs / PROCESS_ROUNDS,
            &mut times,
        )?;
        hyperfine(
            &fallback,
            &no_socket,
            plan.process_runs / PROCESS_ROUNDS,
            &mut times,
        )?;
    }
    let order = commands.iter().chain(&fallback).map(|(name, _)| *name);
    let timings: Vec<Timing> = order
        .map(|name| {
            Timing::of(
                name,
                times.get_mut(name).map_or(&mut [][..], Vec::as_mut_slice),
            )
        })
        .collect();
    let median_of = |name: &str| {
        timings
            .iter()
            .find(|t| t.command == name)
            .map_or(f64::NAN, |t| t.median)
    };
    let cat = median_of("cat token-file");
    let tokctl = median_of("tokctl get, private socket");
    let bare = median_of("bare zbus client, session bus");
    let floor = median_of("tokctl --version");
    let mut out = format!(
        "## One `tokctl get`, as a whole process\n\n\
         hyperfine, no shell (`-N`), {} runs of each command in {} rounds (each \
         round runs every command in turn, after 20 warm-up runs). The token is 1 KiB; `tokctl get bench` asks \
         for the default 60 s of validity and the held token has about 2 h. \
         tokctl and the bare client are linked as the README's install section \
         builds tokctl, with glibc linked in statically \
         (`cargo rustc --release -p tokctl --bin tokctl -- -C target-feature=+crt-static`); \
         the rows marked \"glibc shared\" are the same programs as a plain \
         `cargo build --release` links them. \"session bus\" for tokctl means no \
         private socket was found, so it fell back to the bus (and `Hello`).\n\n\
         | command | median ms | mean ± σ ms | min ms | max ms | median / cat |\n\
         |---|---|---|---|---|---|\n",
        plan.process_runs, PROCESS_ROUNDS
    );
    for t in &timings {
        writeln!(
            out,
            "| {} | {:.2} | {:.2} ± {:.2} | {:.2} | {:.2} | {:.2}× |",
            t.command,
            t.median,
            t.mean,
            t.stddev,
            t.min,
            t.max,
            t.median / cat
        )?;
    }
    writeln!(
        out,
        "\n`tokctl get` over the private socket: {:.2}× `cat`, {:.2}× the bare session-bus client.\n",
        tokctl / cat,
        tokctl / bare
    )?;
    writeln!(
        out,
        "`tokctl get` over the private socket takes {:.2} ms more than `tokctl --version` \
         (the same binary started, its arguments parsed, the version printed: the \
         process-start floor).\n",
        tokctl - floor
    )?;
    if let Some(stages) = &bin.get_stages {
        out.push_str(&get_stages(stages, &env, plan.process_runs)?);
    }
    out.push_str(&instructions(&commands, &env)?);
    // tokd's side of one get: its CPU time over sequential runs.
    let runs = plan.process_runs;
    let tokd_cpu_per_get = |env: &[(String, String)]| -> Fallible<f64> {
        let before = cpu_time(world.tokd.pid())?;
        for _ in 0..runs {
            Command::new(&bin.tokctl)
                .args(["get", "bench"])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .status()?;
        }
        Ok((cpu_time(world.tokd.pid())? - before).as_secs_f64() * 1e6 / f64::from(runs))
    };
    let p2p_cpu = tokd_cpu_per_get(&env)?;
    let bus_cpu = tokd_cpu_per_get(&no_socket)?;
    writeln!(
        out,
        "tokd's own CPU time per `tokctl get` ({runs} runs in a row, `/proc/PID/stat`): \
         {p2p_cpu:.0} µs over the private socket, {bus_cpu:.0} µs over the bus. A \
         `tokctl get` makes one round trip to tokd over the socket: the \
         handshake and the call go in one write, and tokd answers `OK` and then \
         the reply (`tokd_shared::direct`). Over the bus there are three, each \
         through dbus-daemon (handshake, `Hello`, the call, which dbus-daemon \
         passes on to tokd and back).\n"
    )?;
    if tokctl > 1.5 * cat || tokctl > 0.75 * bare {
        let shared = median_of("bare zbus client, session bus, glibc shared");
        writeln!(
            out,
            "\n### Why `tokctl get` misses a target here\n\n\
             Not by its own work: it runs a few hundred thousand user-space \
             instructions (above), a tenth of a millisecond. The rest is the \
             socket: one round trip, in which tokd does {p2p_cpu:.0} µs of work \
             for the connection (accept, the uid check and the caller's pidfd, a \
             new zbus server connection with its object server, the handshake, \
             the caller's identity for the record of deliveries, the call, the \
             hang-up), against {bus_cpu:.0} µs per call over the bus, where the \
             connection already exists. The profile of a loop of gets \
             (`tokd-bench --hold`, then `perf record -p` on tokd) is mostly \
             kernel: accept, epoll, send, receive, close, procfs. Going further \
             needs a cheaper server-side connection in zbus. Against the bare \
             client as a plain `cargo build` links it ({shared:.2} ms), tokctl \
             is at {:.2}×.\n",
            tokctl / shared
        )?;
    }
    targets.push(Target {
        what: "`tokctl get` (static) ≤ `tokctl --version` + 0.3 ms".into(),
        measured: format!(
            "+{:.2} ms ({tokctl:.2} ms vs {floor:.2} ms)",
            tokctl - floor
        ),
        met: tokctl - floor <= 0.3,
    });
    targets.push(Target {
        what: "`tokctl get` ≤ 1.5× `cat` of a token file".into(),
        measured: format!("{:.2}× ({tokctl:.2} ms vs {cat:.2} ms)", tokctl / cat),
        met: tokctl <= 1.5 * cat,
    });
    targets.push(Target {
        what: "`tokctl get` ≤ 0.75× a bare one-call zbus client on the session bus".into(),
        measured: format!("{:.2}× ({tokctl:.2} ms vs {bare:.2} ms)", tokctl / bare),
        met: tokctl <= 0.75 * bare,
    });
    Ok(out)
}

/// User-space instructions of one run of each of the first three
/// commands (cat, tokctl, the bare client), by callgrind when valgrind is
/// installed: what the programs execute themselves, as against the time
/// the kernel and the other processes take.
fn instructions(commands: &[(&str, Vec<String>)], env: &[(String, String)]) -> Fallible<String> {
    let mut out = String::from(
        "User-space instructions of one run (`valgrind --tool=callgrind`, dynamic \
         loader included; the same count on every run of the same binary):\n\n\
         | command | instructions |\n|---|---|\n",
    );
    for (name, argv) in commands.iter().take(3) {
        let run = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .args(argv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .output();
        let Ok(run) = run else {
            return Ok("valgrind is not installed here: no instruction counts.\n\n".into());
        };
        let count = String::from_utf8_lossy(&run.stderr)
            .lines()
            .find_map(|line| {
                line.split_once("Collected :")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        writeln!(out, "| {name} | {count} |")?;
    }
    out.push('\n');
    Ok(out)
}

/// One round of load: calls answered per second, and the server's CPU
/// time per call in microseconds.
fn load(bin: &Binaries, how: &[String], plan: &Plan, server: u32) -> Fallible<(f64, f64)> {
    let cpu_before = cpu_time(server)?;
    let output = Command::new(&bin.load)
        .args(how)
        .args(["--seconds", &plan.throughput_seconds.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let cpu = cpu_time(server)? - cpu_before;
    if !output.status.success() {
        return Err(format!("bench-load {how:?} failed: {}", output.status).into());
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rate = json["per_second"]
        .as_f64()
        .ok_or("bench-load printed no rate")?;
    let calls = json["calls"]
        .as_f64()
        .ok_or("bench-load printed no count")?;
    Ok((rate, cpu.as_secs_f64() * 1e6 / calls))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn throughput(
    bin: &Binaries,
    world: &World,
    plan: &Plan,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    let address = world.bus.address().to_owned();
    let mut out = format!(
        "## GetToken throughput\n\n\
         `bench-load` (one process, current-thread runtime) keeps 8 calls in flight \
         on each connection for {} s; each figure is the median of {} rounds, the \
         three servers taking turns. The bare server answers a constant 1 KiB token \
         with no lookup and no check; tokd looks the installation up, checks the \
         caller's uid (cached per connection) and answers its 1 KiB token. Both run \
         a current-thread runtime. \"CPU/call\" is the server's own CPU time \
         (`/proc/PID/stat`, 10 ms ticks) divided by the calls it answered: it does \
         not depend on how the two cores were shared, so it shows what tokd's own \
         work adds.\n\n\
         | connections × in flight | bare zbus server, bus | tokd, bus | tokd / bare | CPU/call bare, tokd | tokd, private socket |\n\
         |---|---|---|---|---|---|\n",
        plan.throughput_seconds, plan.throughput_rounds
    );
    let bare_pid = world.bare.id();
    let tokd_pid = world.tokd.pid();
    for connections in [1usize, 8] {
        let common = vec![
            "--connections".to_owned(),
            connections.to_string(),
            "--in-flight".into(),
            "8".into(),
        ];
        let on_bus = |dest: &str| {
            let mut how = common.clone();
            how.extend([
                "--address".into(),
                address.clone(),
                "--dest".into(),
                dest.into(),
            ]);
            how
        };
        let bare_how = on_bus(BARE_NAME);
        let tokd_how = on_bus(tokd_shared::BUS_NAME);
        let mut p2p_how = common.clone();
        p2p_how.extend(["--p2p".into(), path(&world.private_socket())]);
        let mut rounds: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        for _ in 0..plan.throughput_rounds {
            for (i, (how, pid)) in [
                (&bare_how, bare_pid),
                (&tokd_how, tokd_pid),
                (&p2p_how, tokd_pid),
            ]
            .into_iter()
            .enumerate()
            {
                let (rate, cpu) = load(bin, how, plan, pid)?;
                rounds[i].0.push(rate);
                rounds[i].1.push(cpu);
            }
        }
        let [bare, tokd, p2p] =
            rounds.map(|(mut rates, mut cpus)| (median(&mut rates), median(&mut cpus)));
        writeln!(
            out,
            "| {connections} × 8 | {:.0}/s | {:.0}/s | {:.2} | {:.1} µs, {:.1} µs | {:.0}/s |",
            bare.0,
            tokd.0,
            tokd.0 / bare.0,
            bare.1,
            tokd.1,
            p2p.0
        )?;
        targets.push(Target {
            what: format!(
                "GetToken throughput ≥ 0.9× a bare zbus server ({connections} connection{} × 8 in flight)",
                if connections == 1 { "" } else { "s" }
            ),
            measured: format!("{:.2}× ({:.0}/s vs {:.0}/s)", tokd.0 / bare.0, tokd.0, bare.0),
            met: tokd.0 >= 0.9 * bare.0,
        });
    }
    out.push('\n');
    out.push_str(&profile(bin, world, plan)?);
    Ok(out)
}

/// Where tokd's CPU goes while it answers GetToken on the bus (8 × 8), by
/// `perf record` when the machine has perf; the answer to "does tokd's
/// own work (allocation, locking) show?".
fn profile(bin: &Binaries, world: &World, plan: &Plan) -> Fallible<String> {
    let mut out = String::from("### Where tokd's time goes under that load\n\n");
    let data = tempfile::NamedTempFile::new()?;
    let seconds = plan.throughput_seconds.max(1.0);
    let recorder = Command::new("perf")
        .args(["record", "-F", "2000", "-g", "-o"])
        .arg(data.path())
        .args(["-p", &world.tokd.pid().to_string(), "--", "sleep"])
        .arg(seconds.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut recorder) = recorder else {
        out.push_str("`perf` is not installed here: no profile.\n\n");
        return Ok(out);
    };
    let how = [
        "--connections",
        "8",
        "--in-flight",
        "8",
        "--address",
        world.bus.address(),
        "--seconds",
    ]
    .map(String::from);
    Command::new(&bin.load)
        .args(how)
        .arg((seconds + 1.0).to_string())
        .stdout(Stdio::null())
        .status()?;
    let recorded = recorder.wait()?;
    let report = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "sym", "-i"])
        .arg(data.path())
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&report.stdout);
    // Lines like "     4.72%  [k] finish_task_switch.isra.0".
    let rows: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|line| {
            let (share, symbol) = line.trim_start().split_once("%  ")?;
            Some((share.parse().ok()?, symbol.trim()))
        })
        .collect();
    if !recorded.success() || rows.is_empty() {
        out.push_str("`perf record` did not work here (perf_event_paranoid?): no profile.\n\n");
        return Ok(out);
    }
    let share = |test: &dyn Fn(&str) -> bool| -> f64 {
        rows.iter().filter(|(_, s)| test(s)).map(|(p, _)| p).sum()
    };
    let own = share(&|s| s.contains("tokd::"));
    let kernel = share(&|s| s.starts_with("[k]"));
    let zbus = share(&|s| s.contains("zbus"));
    let allocator = share(&|s| {
        let name = s.trim_start_matches("[.] ");
        [
            "malloc",
            "_int_malloc",
            "free",
            "cfree",
            "_int_free",
            "realloc",
            "_int_realloc",
            "malloc_consolidate",
        ]
        .iter()
        .any(|f| name.starts_with(f))
    });
    let locks = share(&|s| {
        !s.starts_with("[k]") && (s.contains("Mutex") || s.contains("futex") || s.contains("lock"))
    });
    writeln!(
        out,
        "`perf record -g` on tokd for {seconds} s of the 8 × 8 load above, \
         self time by symbol:\n\n\
         | tokd's own functions (`tokd::`) | zbus | allocator (malloc, free) | locks (user space) | kernel |\n\
         |---|---|---|---|---|\n\
         | {own:.1}% | {zbus:.1}% | {allocator:.1}% | {locks:.1}% | {kernel:.1}% |\n\n\
         The ten heaviest symbols:\n\n| self | symbol |\n|---|---|"
    )?;
    for (share, symbol) in rows.iter().take(10) {
        writeln!(out, "| {share:.2}% | `{symbol}` |")?;
    }
    out.push('\n');
    Ok(out)
}

/// The burst: the held token is 2 h long and the gets ask for 3 h, so all
/// of them need a new one; the provider now issues 24 h tokens and takes
/// 100 ms to answer, as a real one over the internet does.
fn burst(
    bin: &Binaries,
    world: &World,
    plan: &Plan,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    const PROVIDER_DELAY: Duration = Duration::from_millis(100);
    world.emulator.set_behaviour(Behaviour {
        token_length: 1024,
        access_lifetime: 24 * HOUR,
        ..Behaviour::bitbucket_classic()
    });
    world.emulator.fail_next(1, Fault::slow(PROVIDER_DELAY));
    let before = world.emulator.counters().token_requests();
    let output = Command::new(&bin.load)
        .args(["--address", world.bus.address()])
        .args(["--connections", "8", "--min-valid"])
        .arg((3 * HOUR).as_secs().to_string())
        .args(["--burst", &plan.burst.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("the burst failed: {}", output.status).into());
    }
    let requests = world.emulator.counters().token_requests() - before;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut latencies: Vec<f64> = json["latencies_us"]
        .as_array()
        .ok_or("no latencies")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or(f64::NAN)
    };
    let wall = json["wall_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let out = format!(
        "## {count} concurrent gets on an installation that needs a refresh\n\n\
         `bench-load` sends {count} GetToken calls at once over 8 session-bus \
         connections, each asking for 3 h of validity while the held token has \
         about 2 h left: every call needs a new token. The emulator answers the \
         refresh after {delay} ms, as a provider across the internet does.\n\n\
         | provider requests | min | median | p90 | p99 | max | all answered after |\n\
         |---|---|---|---|---|---|---|\n\
         | {requests} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {wall:.1} ms |\n\n\
         Each latency runs from the call being sent to its answer; the provider's \
         {delay} ms is in every one of them.\n\n",
        at(0.0),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        count = latencies.len(),
        delay = PROVIDER_DELAY.as_millis(),
    );
    targets.push(Target {
        what: format!(
            "{} concurrent gets needing a refresh make 1 provider request",
            plan.burst
        ),
        measured: format!("{requests}"),
        met: requests == 1 && latencies.len() == plan.burst,
    });
    Ok(out)
}

/// Resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> Fallible<u64> {
    status_field(pid, "VmRSS:")
}

/// The size of `program`'s executable mappings in `pid`, from
/// `/proc/PID/smaps`: how much code there is to be mapped.
fn code_kib(pid: u32, program: &std::path::Path) -> Fallible<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let program = std::fs::canonicalize(program)?;
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_some_and(|range| range.contains('-')) && fields.len() >= 5 {
            counting = fields[1].contains('x')
                && fields
                    .get(5)
                    .is_some_and(|path| std::path::Path::new(path) == program);
        } else if counting && fields.first() == Some(&"Size:") {
            total += fields
                .get(1)
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn status_field(pid: u32, field: &str) -> Fallible<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("no {field} for {pid}").into())
}

/// CPU time (user + system) used so far by `pid`, exited threads
/// included (tokio's blocking threads come and go), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Fallible<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields follow its `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("no ) in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15, so 11 and 12 after the state.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// `CLK_TCK`, the unit of `/proc/PID/stat` times (100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The state of `count` installations, each holding a 1 KiB access token
/// valid for a day: written as tokd writes them, through its store.
fn many_homes(count: usize, emulator: &Emulator) -> Fallible<Home> {
    let home = Home::new();
    let secret = home.write_secret("bench.secret", SECRET);
    let mut config = String::new();
    for consumer in 0..10 {
        config.push_str(&emulator.consumer_table(
            &format!("c{consumer}"),
            CLIENT_ID,
            &secret,
            REDIRECT,
        ));
    }
    let store = StateFolder::open(home.state_dir())?;
    let now = SystemTime::now();
    for i in 0..count {
        let name = format!("i{i:05}");
        writeln!(
            config,
            "[installations.{name}]\nconsumer = \"c{}\"\nscopes = [\"read\"]",
            i % 10
        )?;
        let record = Record {
            access_token: Some(AccessToken::new(format!("{i:05}{}", "a".repeat(1019)))),
            refresh_token: Some(RefreshToken::new(format!("{i:05}{}", "r".repeat(59)))),
            expires_at: Some(now + 24 * HOUR),
            scopes: vec!["read".into()],
            last_refresh: Some(now),
            ..Record::default()
        };
        store.save(&name, &record)?;
    }
    home.write_config(&config);
    Ok(home)
}

async fn many_installations(
    bin: &Binaries,
    plan: &Plan,
    small_rss: u64,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    let emulator = Emulator::start(Behaviour::bitbucket_classic()).await;
    emulator.register_client(CLIENT_ID, SECRET);
    let home = many_homes(plan.installations, &emulator)?;
    let bus = PrivateBus::start();
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    let mut tokd = None;
    for round in 0..plan.starts {
        let started = Tokd::start_with_env(&bin.tokd, &home, &bus, &[("TOKD_LOG", "info")]).await;
        starts.push(started.ready_after().as_secs_f64() * 1000.0);
        if round + 1 < plan.starts {
            let mut started = started;
            let asked = std::time::Instant::now();
            let status = started.terminate();
            stops.push(asked.elapsed().as_secs_f64() * 1000.0);
            if !status.success() {
                return Err(format!("tokd stopped with {status}").into());
            }
        } else {
            tokd = Some(started);
        }
    }
    let tokd = tokd.ok_or("tokd did not start")?;
    let pid = tokd.pid();
    // The window starts once the start-up work is over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests_before = emulator.counters().token_requests();
    let cpu_before = cpu_time(pid)?;
    tokio::time::sleep(plan.idle).await;
    let cpu = cpu_time(pid)? - cpu_before;
    let requests = emulator.counters().token_requests() - requests_before;
    let rss = rss_kib(pid)?;
    let anon = status_field(pid, "RssAnon:")?;
    let file = status_field(pid, "RssFile:")?;
    let code = code_kib(pid, &bin.tokd)?;
    let peak = status_field(pid, "VmHWM:")?;
    let threads = status_field(pid, "Threads:")?;
    let mut start_ms = starts.clone();
    let start_median = median(&mut start_ms);
    let start_max = starts.iter().copied().fold(0.0, f64::max);
    let mut stop_ms = stops.clone();
    let stop_median = median(&mut stop_ms);
    let n = plan.installations;
    let out = format!(
        "## {n} installations\n\n\
         {n} installations (10 consumers), each with a 1 KiB access token valid for a \
         day and a refresh token, written through tokd's own store. tokd was started \
         {starts} times; \"start\" runs from spawning the process to the bus \
         reporting `org.tokd.tokd1` owned (config parsed, every state file read). \
         The last one then sat idle: CPU is its user and system time \
         (`/proc/PID/stat`, in 10 ms ticks) over {idle} s, from 2 s after the start.\n\n\
         | start to name owned (median, max of {starts}) | SIGTERM to exit (median) | RSS after idling | peak RSS | threads | CPU over {idle} s idle | provider requests while idle |\n\
         |---|---|---|---|---|---|---|\n\
         | {start_median:.0} ms, {start_max:.0} ms | {stop_median:.0} ms | {rss:.1} MiB | {peak:.1} MiB | {threads} | {cpu:.3} s | {requests} |\n\n\
         Of the RSS after idling, {anon:.1} MiB is tokd's own memory (anonymous: \
         heap and stacks) and {file:.1} MiB is pages of the program and its libraries \
         mapped from their files (clean, shared with the page cache, dropped first \
         under memory pressure); tokd's executable code is {code:.1} MiB, and the \
         kernel maps most of it once a few pages are touched (fault-around).\n\n\
         For scale: tokd with the one installation of the sections above held \
         {small:.1} MiB.\n\n",
        starts = plan.starts,
        idle = plan.idle.as_secs(),
        rss = rss as f64 / 1024.0,
        peak = peak as f64 / 1024.0,
        cpu = cpu.as_secs_f64(),
        small = small_rss as f64 / 1024.0,
        anon = anon as f64 / 1024.0,
        file = file as f64 / 1024.0,
        code = code as f64 / 1024.0,
    );
    let scaled = |limit: f64| limit * plan.idle.as_secs_f64() / 60.0;
    targets.push(Target {
        what: format!("{n} installations: RSS ≤ 30 MiB"),
        measured: format!(
            "{:.1} MiB ({:.1} anonymous, {:.1} mapped from files)",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        ),
        met: rss <= 30 * 1024,
    });
    targets.push(Target {
        what: format!("{n} installations: CPU ≤ 0.1 s over 60 s idle"),
        measured: format!("{:.3} s over {} s", cpu.as_secs_f64(), plan.idle.as_secs()),
        met: cpu.as_secs_f64() <= scaled(0.1),
    });
    targets.push(Target {
        what: format!("{n} installations: start to name owned ≤ 200 ms"),
        measured: format!("{start_median:.0} ms (median), {start_max:.0} ms (max)"),
        met: start_median <= 200.0,
    });
    drop(tokd);
    Ok(out)
}

/// The medians of `get-stages` over `runs` runs: where the time of one
/// `tokctl get` goes inside the process.
fn get_stages(binary: &Path, env: &[(String, String)], runs: u32) -> Fallible<String> {
    let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let run = Command::new(binary)
            .arg("bench")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::inherit())
            .output()?;
        if !run.status.success() {
            return Err(format!("get-stages failed: {}", run.status).into());
        }
        let json: serde_json::Value = serde_json::from_slice(&run.stdout)?;
        let pairs = json.as_array().ok_or("get-stages printed no array")?;
        for (index, pair) in pairs.iter().enumerate() {
            let stage = pair[0].as_str().unwrap_or("?");
            let micros = pair[1].as_f64().unwrap_or(f64::NAN);
            match stages.get_mut(index) {
                Some((_, times)) => times.push(micros),
                None => stages.push((stage.to_owned(), vec![micros])),
            }
        }
    }
    let mut out = format!(
        "Inside one `tokctl get` (`get-stages`: tokctl's get path, the same crates \
         and calls, linked the same way, a clock read after each stage; median of \
         {runs} runs, µs). Process start and exit around these are what `tokctl \
         --version` costs too.\n\n| stage | what | median µs |\n|---|---|---|\n"
    );
    let what = |stage: &str| match stage {
        "connect" => "`connect` to `$XDG_RUNTIME_DIR/tokd/bus`",
        "uid check" => "`SO_PEERCRED` against `getuid`",
        "call" => {
            "`AUTH EXTERNAL`, `BEGIN` and `GetToken` in one write; tokd's `OK` and answer read and decoded"
        }
        "teardown" => "the socket closed",
        _ => "",
    };
    let mut total = 0.0;
    for (stage, times) in &mut stages {
        let median = median(times);
        total += median;
        writeln!(out, "| {stage} | {} | {median:.0} |", what(stage))?;
    }
    writeln!(out, "| all | | {total:.0} |\n")?;
    Ok(out)
}

/// A process's resident memory, KiB: all of it, its own (anonymous: heap
/// and stacks), and pages mapped from files (code, libraries).
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
}

impl Memory {
    fn of(pid: u32) -> Fallible<Self> {
        Ok(Self {
            rss: rss_kib(pid)?,
            anon: status_field(pid, "RssAnon:")?,
            file: status_field(pid, "RssFile:")?,
        })
    }

    fn cell(&self) -> String {
        format!(
            "{:.1} MiB ({:.1} own + {:.1} mapped files)",
            mib(self.rss),
            mib(self.anon),
            mib(self.file)
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How long after the burst its memory is read again.
const AFTER_BURST: Duration = Duration::from_secs(5);

/// A fresh tokd with one installation, idle, beside `pizauth server` with
/// one account; then the burst of section 3 on it and its memory after.
async fn memory_section(
    bin: &Binaries,
    plan: &Plan,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    let world = World::start(bin, false).await?;
    let pid = world.tokd.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = Memory::of(pid)?;
    let pizauth = match &bin.pizauth {
        Some(binary) => Some(pizauth_idle(binary, &world.emulator).await?),
        None => None,
    };
    let mut out = String::from(
        "## Memory\n\n\
         A fresh tokd with the one installation of the sections above (logged in, \
         one `get` served, a 1 KiB token held), 2 s after that `get`; beside it, \
         `pizauth server` (the closest peer, built from its release 1.1.0 sources) \
         with a one-account config, 2 s after its start (pizauth holds no token: \
         it has no login here). RSS from `/proc/PID/status`.\n\n\
         | | RSS | own (anonymous) | mapped files |\n|---|---|---|---|\n",
    );
    let row = |name: &str, m: &Memory| {
        format!(
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            mib(m.rss),
            mib(m.anon),
            mib(m.file)
        )
    };
    out.push_str(&row("tokd, one installation, idle", &idle));
    let layout = code_layout(&bin.tokd);
    match &pizauth {
        Some(pizauth) => {
            out.push_str(&row("pizauth server, one account, idle", pizauth));
            targets.push(Target {
                what: "idle RSS, one installation ≤ 1.0× `pizauth server`".into(),
                measured: format!(
                    "{:.2}× ({:.1} MiB vs {:.1} MiB)",
                    idle.rss as f64 / pizauth.rss as f64,
                    mib(idle.rss),
                    mib(pizauth.rss)
                ),
                met: idle.rss <= pizauth.rss,
            });
        }
        None => {
            out.push_str("| pizauth server | not built here | | |\n");
            targets.push(Target {
                what: "idle RSS, one installation ≤ 1.0× `pizauth server`".into(),
                measured: format!("{:.1} MiB; pizauth not built here", mib(idle.rss)),
                met: false,
            });
        }
    }
    writeln!(out, "\n{layout}")?;
    // The burst of section 3, on this fresh tokd.
    burst(bin, &world, plan, &mut Vec::new())?;
    let right_after = Memory::of(pid)?;
    tokio::time::sleep(AFTER_BURST).await;
    let after = Memory::of(pid)?;
    let peak = status_field(pid, "VmHWM:")?;
    writeln!(
        out,
        "\nThen the burst of section 3 ({} concurrent gets needing a refresh, over 8 \
         session-bus connections) on this tokd:\n\n\
         | | RSS | own (anonymous) | mapped files |\n|---|---|---|---|\n{}{}{}\
         Peak RSS: {:.1} MiB. Own memory {:.0}s after the burst: {:+.1} MiB against idle.\n",
        plan.burst,
        row("idle, before the burst", &idle),
        row("as the burst ends", &right_after),
        row(
            &format!("{} s after the burst", AFTER_BURST.as_secs()),
            &after
        ),
        mib(peak),
        AFTER_BURST.as_secs_f64(),
        (after.anon as f64 - idle.anon as f64) / 1024.0,
    )?;
    targets.push(Target {
        what: format!(
            "own memory {} s after a {}-call burst ≤ idle + 2 MiB",
            AFTER_BURST.as_secs(),
            plan.burst
        ),
        measured: format!(
            "{:+.1} MiB ({:.1} vs {:.1} MiB idle)",
            (after.anon as f64 - idle.anon as f64) / 1024.0,
            mib(after.anon),
            mib(idle.anon)
        ),
        met: after.anon <= idle.anon + 2 * 1024,
    });
    Ok(out)
}

/// How much of `daemon/tokd.order` (the functions tokd runs until it
/// idles, which the linker places first) this tokd's build found: names
/// carry hashes of the compiler and the locked dependencies, so after
/// either changes the file is stale until `bench/order` writes it anew.
fn code_layout(tokd: &Path) -> String {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tokd.order");
    let Ok(listed) = std::fs::read_to_string(&order) else {
        return "tokd's code is not laid out by an order file (`daemon/tokd.order` is missing)."
            .into();
    };
    let listed: std::collections::HashSet<&str> = listed.lines().collect();
    let defined = Command::new("nm")
        .arg("--defined-only")
        .arg(tokd)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let found = defined
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|name| listed.contains(name))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let verdict = if found * 10 >= listed.len() * 9 {
        "current"
    } else {
        "**stale**: run `bench/order` and commit the file"
    };
    format!(
        "tokd's code is laid out by `daemon/tokd.order` (the functions it runs from its start \
         until it idles, placed first by the linker; `daemon/build.rs`): {found} of its {} \
         names are in this build ({verdict}).",
        listed.len()
    )
}

/// `pizauth server` in the foreground with a one-account config pointing
/// at the emulator, its memory 2 s after the start.
async fn pizauth_idle(binary: &Path, emulator: &Emulator) -> Fallible<Memory> {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir()?;
    let runtime = home.path().join("runtime");
    std::fs::create_dir(&runtime)?;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))?;
    let config = home.path().join("pizauth.conf");
    std::fs::write(
        &config,
        format!(
            "account \"bench\" {{\n    auth_uri = \"{}\";\n    token_uri = \"{}\";\n    \
             client_id = \"{CLIENT_ID}\";\n    client_secret = \"{SECRET}\";\n    \
             scopes = [\"read\"];\n}}\n",
            emulator.auth_url(),
            emulator.token_url()
        ),
    )?;
    let mut child = Command::new(binary)
        .args(["server", "-d", "-c"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = match child.try_wait()? {
        None => Memory::of(child.id()),
        Some(status) => Err(format!("pizauth server exited: {status}").into()),
    };
    let _ = child.kill();
    let _ = child.wait();
    memory
}

/// The token length of the client-credentials section.
const CC_TOKEN: usize = 768;

/// `count` client-credentials installations, each fetched once over the
/// private socket; tokd's memory 2 s after the last fetch.
async fn fetched_client_credentials(
    bin: &Binaries,
    emulator: &Emulator,
    bus: &PrivateBus,
    count: usize,
) -> Fallible<(Memory, Duration)> {
    use futures_util::StreamExt as _;
    let home = Home::new();
    let secret = home.write_secret("bench.secret", SECRET);
    let mut config = String::new();
    for consumer in 0..10 {
        config.push_str(&emulator.consumer_table(
            &format!("c{consumer}"),
            CLIENT_ID,
            &secret,
            REDIRECT,
        ));
    }
    for i in 0..count {
        writeln!(
            config,
            "[installations.i{i:05}]\nconsumer = \"c{}\"\ngrant = \"client_credentials\"\nscopes = [\"read\"]",
            i % 10
        )?;
    }
    home.write_config(&config);
    let tokd = Tokd::start_with_env(&bin.tokd, &home, bus, &[("TOKD_LOG", "info")]).await;
    let socket = home
        .path()
        .join("runtime")
        .join(tokd_shared::PRIVATE_SOCKET);
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let connection = zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await?;
    let proxy = tokd_shared::ManagerProxy::builder(&connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let started = std::time::Instant::now();
    let mut answers = futures_util::stream::iter(0..count)
        .map(|i| {
            let proxy = &proxy;
            async move { proxy.get_token(&format!("i{i:05}"), 60).await }
        })
        .buffer_unordered(16);
    while let Some(answer) = answers.next().await {
        let (token, _, _, _) = answer?;
        if token.len() != CC_TOKEN {
            return Err(format!("a {}-byte token, not {CC_TOKEN}", token.len()).into());
        }
    }
    drop(answers);
    let took = started.elapsed();
    drop(proxy);
    drop(connection);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = Memory::of(tokd.pid())?;
    Ok((memory, took))
}

async fn client_credentials(
    bin: &Binaries,
    plan: &Plan,
    targets: &mut Vec<Target>,
) -> Fallible<String> {
    let emulator = Emulator::start(Behaviour {
        token_length: CC_TOKEN,
        ..Behaviour::bitbucket_classic()
    })
    .await;
    emulator.register_client(CLIENT_ID, SECRET);
    let bus = PrivateBus::start();
    let (one, _) = fetched_client_credentials(bin, &emulator, &bus, 1).await?;
    let n = plan.installations;
    let (many, took) = fetched_client_credentials(bin, &emulator, &bus, n).await?;
    let per = (many.anon as f64 - one.anon as f64) * 1024.0 / (n - 1) as f64;
    let beyond = per - CC_TOKEN as f64;
    let out = format!(
        "## {n} client-credentials installations\n\n\
         {n} installations (10 consumers) with `grant = \"client_credentials\"`, \
         none held at start; each fetched once over the private socket (16 calls in \
         flight: each is a token request to the emulator, which answers a \
         {CC_TOKEN}-byte token, and a state file written), in {:.1} s. Memory 2 s \
         after the last fetch, against the same with one installation:\n\n\
         | installations | RSS | own (anonymous) | mapped files |\n|---|---|---|---|\n\
         | 1 | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\
         | {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\n\
         Own memory per installation: {per:.0} bytes, of which {CC_TOKEN} are its \
         token: {beyond:.0} bytes beyond it.\n\n",
        took.as_secs_f64(),
        mib(one.rss),
        mib(one.anon),
        mib(one.file),
        mib(many.rss),
        mib(many.anon),
        mib(many.file),
    );
    targets.push(Target {
        what: format!("{n} client-credentials installations, fetched: RSS ≤ 30 MiB"),
        measured: many.cell(),
        met: many.rss <= 30 * 1024,
    });
    targets.push(Target {
        what: format!(
            "{n} client-credentials installations: own memory ≤ 1.2 KiB per installation beyond its token"
        ),
        measured: format!("{:.2} KiB ({beyond:.0} bytes)", beyond / 1024.0),
        met: beyond <= 1.2 * 1024.0,
    });
    Ok(out)
}

/// Sockets held open during the login flood: this many connected loopback
/// pairs (two sockets each) fill the kernel's socket table.
const FLOOD_PAIRS: usize = 10_000;
/// Pairs per holding process.
const HOLDER_PAIRS: usize = 400;

/// A connect loop against an open login listener while 20,000 other
/// sockets are open, and `tokctl get` of another installation meanwhile
/// (the third review: with the listener reading all of `/proc/net/tcp`
/// per connection, on tokd's only thread, such a get took 20 s).
async fn login_flood(bin: &Binaries, plan: &Plan, targets: &mut Vec<Target>) -> Fallible<String> {
    let emulator = Emulator::start(Behaviour::bitbucket_classic()).await;
    emulator.register_client(CLIENT_ID, SECRET);
    let bus = PrivateBus::start();
    let home = Home::new();
    let secret = home.write_secret("bench.secret", SECRET);
    let port = tokd_testkit::free_port();
    home.write_config(&format!(
        "{}\n[installations.victim]\nconsumer = \"local\"\nscopes = [\"read\"]\n\n\
         [installations.other]\nconsumer = \"local\"\ngrant = \"client_credentials\"\nscopes = [\"read\"]\n",
        emulator.consumer_table(
            "local",
            CLIENT_ID,
            &secret,
            &format!("http://127.0.0.1:{port}/callback")
        )
    ));
    let tokd = Tokd::start(&bin.tokd, &home, &bus).await;
    let get = |home: &Home| {
        let mut command = std::process::Command::new(&bin.tokctl);
        command
            .args(["get", "other"])
            .envs(home.env(&bus))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    if !get(&home).status()?.success() {
        return Err("the first get of `other` failed".into());
    }
    let runs = plan.flood_gets;
    let measure = |home: &Home| -> Fallible<Vec<f64>> {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = std::time::Instant::now();
            if !get(home).status()?.success() {
                return Err("a get of `other` failed".into());
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(times)
    };
    let quiet = measure(&home)?;

    // The listener opens with a login that waits for its browser.
    let mut login = home
        .tokctl(&bin.tokctl, &bus, &["login", "victim", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err("the login listener did not open".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 20,000 sockets: pairs connected over loopback, held by this process.
    // Held by child processes of 400 pairs (800 descriptors) each: a
    // process's descriptor limit is 1,024 by default.
    let mut held = Vec::new();
    for _ in 0..FLOOD_PAIRS / HOLDER_PAIRS {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["--hold-sockets", &HOLDER_PAIRS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?),
            &mut said,
        )?;
        if said.trim() != "held" {
            let _ = child.kill();
            return Err("a socket holder failed".into());
        }
        held.push(child);
    }
    let table = std::fs::read_to_string("/proc/net/tcp")?.lines().count();

    // The connect loop, on a thread of its own, until the gets are done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut connections = 0u64;
        while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                connections += 1;
            }
        }
        connections
    });
    let started = std::time::Instant::now();
    let flooded = measure(&home);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections = flood.join().map_err(|_| "the connect loop panicked")?;
    let mut flooded = flooded?;
    for mut child in held {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let _ = login.kill().await;
    drop(tokd);

    let p99 = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[((times.len() as f64) * 0.99).ceil() as usize - 1]
    };
    let mut quiet = quiet;
    let (quiet_median, quiet_p99) = (median(&mut quiet.clone()), p99(&mut quiet));
    let (flooded_median, flooded_p99) = (median(&mut flooded.clone()), p99(&mut flooded));
    targets.push(Target {
        what: "`tokctl get` of another installation while a login listener is flooded, 20,000 sockets open: p99 < 50 ms".to_owned(),
        measured: format!("{flooded_p99:.1} ms"),
        met: flooded_p99 < 50.0,
    });
    Ok(format!(
        "\n## A flooded login listener\n\n\
         A login waits at its loopback listener while this process holds \
         {} loopback sockets ({} lines in `/proc/net/tcp`) and a thread \
         connects to the listener and closes, in a loop ({connections} \
         connections in {:.1} s); meanwhile `tokctl get` of a \
         client-credentials installation runs {runs} times, one after the \
         other. Before the flood, the same {runs} gets.\n\n\
         | | median | p99 |\n|---|---|---|\n\
         | quiet | {quiet_median:.2} ms | {quiet_p99:.2} ms |\n\
         | flooded | {flooded_median:.2} ms | {flooded_p99:.2} ms |\n",
        FLOOD_PAIRS * 2,
        table,
        took.as_secs_f64(),
    ))
}

/// `--hold-sockets`: `pairs` connected loopback pairs, held until standard
/// input closes.
fn hold_sockets(pairs: usize) -> Fallible<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut held = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let client = std::net::TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        held.push(client);
        held.push(server);
    }
    let mut stdout = std::io::stdout();
    std::io::Write::write_all(&mut stdout, b"held\n")?;
    std::io::Write::flush(&mut stdout)?;
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
    drop(held);
    Ok(())
}
