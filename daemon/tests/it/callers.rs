//! Who may ask: per-installation caller policies (`callers`,
//! `unknown_callers`), `tokctl allow`/`disallow`/`callers`/`log`.

use crate::support::{Out, World, tokctl_bin};
use tokd_testkit::{Behaviour, Desktop, DesktopOptions};

/// `tokd-caller NAME` (the test kit's): a program of its own, neither
/// tokctl nor a general-purpose tool, that asks tokd for a token over the
/// bus as a desktop program would.
async fn caller_get(world: &World, name: &str) -> Out {
    run(caller_command(world, name)).await
}

/// [`caller_get`], started: the test answers the question first.
fn caller_started(world: &World, name: &str) -> tokio::task::JoinHandle<Out> {
    tokio::spawn(run(caller_command(world, name)))
}

fn caller_command(world: &World, name: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(caller_path());
    command
        .arg(name)
        .envs(world.home.env(&world.bus))
        .kill_on_drop(true);
    command
}

fn caller_path() -> String {
    std::fs::canonicalize(crate::support::tokd_bin().with_file_name("tokd-caller"))
        .expect("tokd-caller is built with the workspace")
        .display()
        .to_string()
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

fn guarded(callers: &str) -> String {
    format!(
        "[installations.guarded]\nconsumer = \"acme\"\ngrant = \"client_credentials\"\ncallers = {callers}\n"
    )
}

#[tokio::test]
async fn a_caller_the_policy_does_not_name_gets_nothing_until_the_sentence_is_followed() {
    crate::support::within(async {
        let tokctl = std::fs::canonicalize(tokctl_bin()).expect("tokctl");
        let mut world = World::prepare(Behaviour::wso2()).await;
        world
            .home
            .write_config(&world.config(&guarded(&format!("[\"exe:{}\"]", tokctl.display()))));
        world.start_tokd().await;

        // tokctl is named: it gets the token.
        let token = world.get("guarded").await;
        // dbus-send is not: a refusal that says who, and what allows it.
        let refused = caller_get(&world, "guarded").await;
        assert_ne!(refused.status, 0, "{refused:?}");
        let program = caller_path();
        assert!(
            refused.stderr.contains(&format!("{program} "))
                && refused
                    .stderr
                    .contains("may not get the tokens of `guarded`"),
            "{refused:?}"
        );
        assert!(
            !format!("{refused:?}").contains(&token),
            "a refused caller saw the token"
        );
        let advice = format!("tokctl allow guarded exe:{program}");
        assert!(refused.stderr.contains(&advice), "{refused:?}");
        // An installation without a policy serves it as before.
        let open = caller_get(&world, "bot").await;
        assert_eq!(open.status, 0, "{open:?}");

        let nothing = world
            .tokctl(&["allow", "bot", &format!("exe:{program}")])
            .await;
        assert_ne!(nothing.status, 0, "{nothing:?}");
        assert!(
            nothing.stderr.contains("serves every caller of yours"),
            "{nothing:?}"
        );

        // Doing exactly what the sentence says lets it in...
        let words: Vec<&str> = advice.split(' ').skip(1).collect();
        let allowed = world.tokctl(&words).await;
        assert_eq!(allowed.status, 0, "{allowed:?}");
        assert!(
            allowed.stderr.contains("may now get the tokens of guarded"),
            "{allowed:?}"
        );
        let got = caller_get(&world, "guarded").await;
        assert_eq!(got.status, 0, "{got:?}\n{}", world.log());
        assert!(got.stdout.contains(&token), "{got:?}");

        // ...which `tokctl callers` shows, and a restart keeps.
        let shown = world.tokctl(&["callers", "guarded"]).await;
        assert_eq!(shown.status, 0, "{shown:?}");
        assert!(
            shown
                .stdout
                .contains(&format!("exe:{} (config)", tokctl.display())),
            "{shown:?}"
        );
        assert!(
            shown.stdout.contains(&format!("exe:{program} (allowed;")),
            "{shown:?}"
        );
        assert!(shown.stdout.contains("others: deny"), "{shown:?}");
        assert!(world.tokd().terminate().success());
        world.start_tokd().await;
        assert_eq!(caller_get(&world, "guarded").await.status, 0);
        world.get("bot").await;

        // `tokctl log`: who got which token, never the token.
        let log = world.tokctl(&["log", "guarded"]).await;
        assert_eq!(log.status, 0, "{log:?}");
        assert!(
            log.stdout
                .contains(&format!(" guarded GetToken {program} (pid ")),
            "{log:?}"
        );
        assert!(!log.stdout.contains(" bot "), "only guarded's: {log:?}");
        assert!(!log.stdout.contains(&token) && !world.log().contains(&token));
        assert!(
            world
                .tokctl(&["log"])
                .await
                .stdout
                .contains(" bot GetToken "),
            "all installations'"
        );

        // Taken back: refused again.
        let taken = world
            .tokctl(&["disallow", "guarded", &format!("exe:{program}")])
            .await;
        assert_eq!(taken.status, 0, "{taken:?}");
        assert_ne!(caller_get(&world, "guarded").await.status, 0);

        // The config's own list changes with a reload.
        world
            .home
            .write_config(&world.config(&guarded("[\"any\"]")));
        let reloaded = world.tokctl(&["reload"]).await;
        assert_eq!(reloaded.status, 0, "{reloaded:?}");
        assert_eq!(caller_get(&world, "guarded").await.status, 0);

        // At most 64 allowances; the sentence says how to make room.
        for n in 0..64 {
            let out = world
                .tokctl(&["allow", "guarded", &format!("unit:n{n}.service")])
                .await;
            assert_eq!(out.status, 0, "{n}: {out:?}");
        }
        let full = world
            .tokctl(&["allow", "guarded", "unit:more.service"])
            .await;
        assert_ne!(full.status, 0, "{full:?}");
        assert!(
            full.stderr
                .contains("take one back first (`tokctl callers guarded` lists them)"),
            "{full:?}"
        );
        let listed = world.tokctl(&["callers", "guarded"]).await;
        assert!(
            listed.stdout.contains("unit:n0.service (allowed;"),
            "{listed:?}"
        );
        assert_eq!(
            world
                .tokctl(&["disallow", "guarded", "unit:n0.service"])
                .await
                .status,
            0
        );
        assert_eq!(
            world
                .tokctl(&["allow", "guarded", "unit:more.service"])
                .await
                .status,
            0
        );

        // Bad rules are refused, in the config and on the command line.
        let bad = world.tokctl(&["allow", "guarded", "pid:1"]).await;
        assert_ne!(bad.status, 0);
        assert!(bad.stderr.contains("is not a caller"), "{bad:?}");
        world
            .home
            .write_config(&world.config(&guarded("[\"dbus-send\"]")));
        let refused_reload = world.tokctl(&["reload"]).await;
        assert_ne!(refused_reload.status, 0);
        assert!(
            refused_reload
                .stderr
                .contains("`callers`: `dbus-send` is not a caller"),
            "{refused_reload:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn ask_shows_a_notification_and_the_answer_decides() {
    crate::support::within(async {
        let mut world = World::prepare(Behaviour::wso2()).await;
        world.home.write_config(&world.config(
            "[installations.guarded]\nconsumer = \"acme\"\ngrant = \"client_credentials\"\nunknown_callers = \"ask\"\n",
        ));
        let desktop = Desktop::start(&world.bus, DesktopOptions::default()).await;
        world.start_tokd().await;
        let program = caller_path();
        let questions = |d: &Desktop| d.notifications().into_iter().filter(|n| n.summary.contains("guarded")).collect::<Vec<_>>();

        // "Allow once": this call gets the token, the next is asked again.
        let call = caller_started(&world, "guarded");
        desktop.until(|d| questions(d).len() == 1).await;
        let question = questions(&desktop).remove(0);
        assert!(question.body.contains(&program), "{question:?}");
        assert!(question.actions.contains(&"always".to_owned()), "{question:?}");
        desktop.invoke(question.id, "once").await;
        let once = call.await.expect("dbus-send");
        assert_eq!(once.status, 0, "{once:?}\n{}", world.log());

        // "Deny": refused, with the command that would allow it.
        let call = caller_started(&world, "guarded");
        desktop.until(|d| questions(d).len() == 2).await;
        desktop.invoke(questions(&desktop)[1].id, "deny").await;
        let denied = call.await.expect("dbus-send");
        assert_ne!(denied.status, 0, "{denied:?}");
        assert!(denied.stderr.contains(&format!("tokctl allow guarded exe:{program}")), "{denied:?}");

        // "Always allow": remembered; the next call is not asked.
        let call = caller_started(&world, "guarded");
        desktop.until(|d| questions(d).len() == 3).await;
        desktop.invoke(questions(&desktop)[2].id, "always").await;
        assert_eq!(call.await.expect("dbus-send").status, 0);
        assert_eq!(caller_get(&world, "guarded").await.status, 0);
        assert_eq!(questions(&desktop).len(), 3, "asked again after Always");
        let shown = world.tokctl(&["callers", "guarded"]).await;
        assert!(shown.stdout.contains(&format!("exe:{program} (allowed;")), "{shown:?}");
        assert!(shown.stdout.contains("others: ask"), "{shown:?}");

        // tokctl outside a unit of its own cannot be told from other
        // programs: it may be let in once, but "Always" is not offered.
        let call = world.command(&["get", "guarded"]).output();
        let call = tokio::spawn(call);
        desktop.until(|d| questions(d).len() == 4).await;
        let question = questions(&desktop).remove(3);
        assert!(!question.actions.contains(&"always".to_owned()), "{question:?}");
        assert!(question.body.contains("can only be allowed once"), "{question:?}");
        desktop.invoke(question.id, "once").await;
        assert!(call.await.expect("join").expect("tokctl").status.success());

        // No notification server: ask refuses, and says why and what to do.
        let taken = world
            .tokctl(&["disallow", "guarded", &format!("exe:{program}")])
            .await;
        assert_eq!(taken.status, 0, "{taken:?}");
        drop(desktop);
        let refused = caller_get(&world, "guarded").await;
        assert_ne!(refused.status, 0, "{refused:?}");
        assert!(refused.stderr.contains("tokd could not ask"), "{refused:?}");
        let advice = format!("tokctl allow guarded exe:{program}");
        assert!(refused.stderr.contains(&advice), "{refused:?}");
        let words: Vec<&str> = advice.split(' ').skip(1).collect();
        assert_eq!(world.tokctl(&words).await.status, 0);
        assert_eq!(caller_get(&world, "guarded").await.status, 0);
    })
    .await;
}

/// Runs `program args…` in a fake Flatpak sandbox of app `app`: a mount
/// namespace whose root is a tmpfs holding `/.flatpak-info` and the
/// host's folders bound in (what tokd reads through /proc/PID/root).
fn in_fake_flatpak(world: &World, app: &str, program: &[&str]) -> tokio::process::Command {
    const SCRIPT: &str = r#"set -e
root=$(mktemp -d)
mount -t tmpfs tmpfs "$root"
for entry in /*; do
    name=${entry#/}
    if [ -L "$entry" ]; then ln -s "$(readlink "$entry")" "$root/$name"
    elif [ -d "$entry" ]; then mkdir "$root/$name"; mount --rbind "$entry" "$root/$name"
    fi
done
printf '[Application]\nname=%s\nruntime=runtime/org.example.Platform/x86_64/1\n' "$APP" > "$root/.flatpak-info"
exec chroot "$root" "$@""#;
    let mut command = tokio::process::Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .args(program)
        .envs(world.home.env(&world.bus))
        .env("APP", app)
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command) -> Out {
    let output = command.output().await.expect("run");
    Out {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A cgroup folder of the unified hierarchy named like a systemd unit,
/// removed on drop.
struct Unit(std::path::PathBuf);

impl Unit {
    fn create(name: &str) -> Self {
        let base = if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        let dir = std::path::Path::new(base)
            .join(format!("tokd-test-{}.slice", std::process::id()))
            .join(name);
        std::fs::create_dir_all(&dir).expect("create a cgroup (as root)");
        Self(dir)
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[tokio::test]
#[ignore = "needs root: creates a cgroup named like a systemd unit, and a fake Flatpak sandbox (a mount namespace with its own root)"]
async fn units_and_flatpak_apps_are_told_apart() {
    crate::support::within(async {
        let mut world = World::prepare(Behaviour::wso2()).await;
        world
            .home
            .write_config(&world.config(&guarded("[\"flatpak:org.example.Good\"]")));
        world.start_tokd().await;
        let tokctl = std::fs::canonicalize(tokctl_bin()).expect("tokctl");
        let tokctl = tokctl.to_str().expect("a UTF-8 path");

        // tokctl outside a service of its own cannot be told from any
        // other program: the sentence says to give it a unit.
        let outside = world.tokctl(&["get", "guarded"]).await;
        assert_ne!(outside.status, 0, "{outside:?}");
        assert!(
            outside
                .stderr
                .contains("run it under a systemd unit and allow that unit"),
            "{outside:?}"
        );
        // Doing so: tokctl run by the unit (in its cgroup) is the unit.
        let allowed = world
            .tokctl(&["allow", "guarded", "unit:backup.service"])
            .await;
        assert_eq!(allowed.status, 0, "{allowed:?}");
        let unit = Unit::create("backup.service");
        let mut in_unit = tokio::process::Command::new("sh");
        in_unit
            .args([
                "-c",
                "echo $$ > \"$1/cgroup.procs\" && exec \"$2\" get guarded",
                "sh",
                unit.0.to_str().expect("path"),
                tokctl,
            ])
            .envs(world.home.env(&world.bus))
            .kill_on_drop(true);
        let got = run(in_unit).await;
        assert_eq!(got.status, 0, "{got:?}\n{}", world.log());
        assert_ne!(
            world.tokctl(&["get", "guarded"]).await.status,
            0,
            "still not outside it"
        );

        // A sandboxed app is its app id, whatever its program.
        let call = [
            "dbus-send",
            "--session",
            "--print-reply",
            "--dest=org.tokd.tokd1",
            "/org/tokd/tokd1",
            "org.tokd.tokd1.Manager.GetToken",
            "string:guarded",
            "uint32:60",
        ];
        let good = run(in_fake_flatpak(&world, "org.example.Good", &call)).await;
        assert_eq!(good.status, 0, "{good:?}\n{}", world.log());
        let evil = run(in_fake_flatpak(&world, "org.example.Evil", &call)).await;
        assert_ne!(evil.status, 0, "{evil:?}");
        assert!(
            evil.stderr.contains("Flatpak app org.example.Evil")
                && evil
                    .stderr
                    .contains("tokctl allow guarded flatpak:org.example.Evil"),
            "{evil:?}"
        );
        // ...and may not allow itself.
        let allow_itself = [
            "dbus-send",
            "--session",
            "--print-reply",
            "--dest=org.tokd.tokd1",
            "/org/tokd/tokd1",
            "org.tokd.tokd1.Manager.AllowCaller",
            "string:guarded",
            "string:flatpak:org.example.Evil",
        ];
        let refused = run(in_fake_flatpak(&world, "org.example.Evil", &allow_itself)).await;
        assert_ne!(refused.status, 0, "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("runs in a sandbox: it may get tokens"),
            "{refused:?}"
        );
        // Nor revoke, refresh, log in or read anything but a token.
        for method in ["Revoke", "Refresh", "Status", "BeginLogin"] {
            let member = format!("org.tokd.tokd1.Manager.{method}");
            let mut call = allow_itself[..5].to_vec();
            call.push(&member);
            call.push("string:guarded");
            let refused = run(in_fake_flatpak(&world, "org.example.Good", &call)).await;
            assert!(
                refused
                    .stderr
                    .contains("runs in a sandbox: it may get tokens"),
                "{method}: {refused:?}"
            );
        }
        assert_eq!(
            world.status("guarded").await["state"],
            "valid",
            "not revoked"
        );
        let still = run(in_fake_flatpak(&world, "org.example.Evil", &call)).await;
        assert_ne!(still.status, 0, "{still:?}");
        // The user, outside the sandbox, can.
        let allowed = world
            .tokctl(&["allow", "guarded", "flatpak:org.example.Evil"])
            .await;
        assert_eq!(allowed.status, 0, "{allowed:?}");
        let now = run(in_fake_flatpak(&world, "org.example.Evil", &call)).await;
        assert_eq!(now.status, 0, "{now:?}");
        let log = world.tokctl(&["log", "guarded"]).await;
        assert!(log.stdout.contains(" in backup.service (pid "), "{log:?}");
        assert!(
            log.stdout.contains(" Flatpak app org.example.Good (pid "),
            "{log:?}"
        );
    })
    .await;
}

/// The two helper processes of
/// `a_reused_pid_cannot_stand_in_for_the_process_that_connected`, run as
/// this test binary with `TOKD_IT_PID_REUSE` set; without it (any normal
/// run) it does nothing.
#[test]
#[ignore = "a helper process of a root-only test below; does nothing when run by itself"]
fn pid_reuse_helper() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    match var("TOKD_IT_PID_REUSE").as_str() {
        // A: connects to the private socket, hands the connection to a
        // child (its stdin) and exits.
        // The child is not waited for: this process exits at once, and
        // the child lives on with the connection (that is the point).
        #[allow(clippy::zombie_processes)]
        "connect" => {
            let stream =
                std::os::unix::net::UnixStream::connect(var("TOKD_IT_SOCKET")).expect("connect");
            std::process::Command::new(std::env::current_exe().expect("exe"))
                .args([
                    "--exact",
                    "callers::pid_reuse_helper",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env("TOKD_IT_PID_REUSE", "call")
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    stream,
                )))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("the child that calls");
        }
        // C: waits for the go, then asks for the token over the
        // connection its parent opened, and writes what it got.
        "call" => {
            use std::os::fd::AsFd as _;
            let go = std::path::PathBuf::from(var("TOKD_IT_GO"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !go.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let fd = rustix::io::dup(std::io::stdin().as_fd()).expect("dup stdin");
            let stream = std::os::unix::net::UnixStream::from(fd);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = runtime.block_on(async {
                let connection = zbus::connection::Builder::unix_stream(stream)
                    .p2p()
                    .build()
                    .await
                    .map_err(|error| error.to_string())?;
                let proxy = tokd_shared::ManagerProxy::new(&connection)
                    .await
                    .map_err(|error| error.to_string())?;
                proxy
                    .get_token("guarded", 60)
                    .await
                    .map(|(token, ..)| token)
                    .map_err(|error| error.to_string())
            });
            let text = match result {
                Ok(_) => "got the token".to_owned(),
                Err(error) => format!("refused: {error}"),
            };
            std::fs::write(var("TOKD_IT_RESULT"), text).expect("result");
        }
        _ => {}
    }
}

#[tokio::test]
#[ignore = "needs root: gives a new process the pid of one that connected and exited (/proc/sys/kernel/ns_last_pid)"]
async fn a_reused_pid_cannot_stand_in_for_the_process_that_connected() {
    crate::support::within(async {
        let sleep = std::fs::canonicalize(which("sleep")).expect("sleep");
        let mut world = World::prepare(Behaviour::wso2()).await;
        world
            .home
            .write_config(&world.config(&guarded(&format!("[\"exe:{}\"]", sleep.display()))));
        world.start_tokd().await;
        let env: std::collections::HashMap<String, String> =
            world.home.env(&world.bus).into_iter().collect();
        let socket = std::path::Path::new(&env["XDG_RUNTIME_DIR"]).join("tokd/bus");
        let dir = tempfile::tempdir().expect("dir");
        let (go, result) = (dir.path().join("go"), dir.path().join("result"));

        // A connects, hands the connection to C, exits and is reaped.
        let mut a = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "callers::pid_reuse_helper",
                "--ignored",
                "--test-threads=1",
            ])
            .env("TOKD_IT_PID_REUSE", "connect")
            .env("TOKD_IT_SOCKET", &socket)
            .env("TOKD_IT_GO", &go)
            .env("TOKD_IT_RESULT", &result)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("A");
        let a_pid = a.id();
        assert!(a.wait().expect("A ends").success());

        // B, an allowed program, takes A's pid.
        let mut b = None;
        for _ in 0..500 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (a_pid - 1).to_string())
                .expect("ns_last_pid (as root)");
            let mut child = std::process::Command::new(&sleep)
                .arg("120")
                .spawn()
                .expect("sleep");
            if child.id() == a_pid {
                b = Some(child);
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut b = b.expect("another process took A's pid");

        // C asks over A's connection: A is gone, and B is not A.
        std::fs::write(&go, "").expect("go");
        let answer = crate::support::eventually(std::time::Duration::from_secs(30), async || {
            result.exists()
        })
        .await;
        let _ = b.kill();
        let _ = b.wait();
        assert!(answer, "C wrote nothing\n{}", world.log());
        let text = std::fs::read_to_string(&result).expect("result");
        assert!(
            text.starts_with("refused") && text.contains("a process tokd cannot identify"),
            "{text}\n{}",
            world.log()
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs root: runs tokd in a pid namespace of its own (unshare --pid) under the host's /proc, and a caller in it (nsenter)"]
async fn a_tokd_in_a_pid_namespace_of_its_own_identifies_callers_as_proc_names_them() {
    crate::support::within(async {
        let caller = caller_path();
        let mut world = World::prepare(Behaviour::wso2()).await;
        world
            .home
            .write_config(&world.config(&guarded(&format!("[\"exe:{caller}\"]"))));
        // /proc stays the host's: tokd's pids and /proc's differ.
        world
            .restart_tokd_wrapped(&["unshare", "--pid", "--fork", "--kill-child", "--"])
            .await;
        let outer = world.tokd().pid();
        let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
            .expect("unshare's children");
        let tokd = children.split_whitespace().next().expect("tokd").to_owned();
        let env: Vec<(String, String)> = world.home.env(&world.bus);
        let in_tokds_namespace = |program: &str, args: &[&str]| {
            let mut command = tokio::process::Command::new("nsenter");
            command
                .args(["-t", &tokd, "--pid", "--", program])
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)));
            command
        };
        // The allowed program, from inside tokd's namespace, over the
        // private socket: its pid there is small, and names some other
        // process (a kernel thread) in the host's /proc.
        let allowed = run(in_tokds_namespace(&caller, &["--private", "guarded"])).await;
        assert_eq!(allowed.status, 0, "{allowed:?}\n{}", world.log());
        assert!(world.emulator.access_token_is_valid(allowed.stdout.trim()));
        let log = world.tokctl(&["log", "guarded"]).await;
        assert!(log.stdout.contains(&caller), "{log:?}");
        // Another program from there is refused, as from the host.
        let other = run(in_tokds_namespace(
            &crate::support::tokctl_bin().display().to_string(),
            &["get", "guarded"],
        ))
        .await;
        assert_ne!(other.status, 0, "{other:?}");
        assert!(other.stdout.is_empty(), "{other:?}");
    })
    .await;
}
