//! The store survives a writer killed at random moments: a reader finds the
//! old record or the new one, never a torn file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use tokd::secret::{AccessToken, RefreshToken};
use tokd::storage::{Loaded, Record, StateFolder};

/// Set in a child process: the folder its store writes in.
const WRITER_ENV: &str = "TOKD_IT_STORE_WRITER_DIR";
const ROUNDS: usize = 30;

/// This test binary run again as a child that executes only `test` (which
/// then plays the writer, seeing `WRITER_ENV`).
fn child(test: &str, dir: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, dir);
    command
}

/// Big tokens make each write take long enough for kills to land inside it.
fn record(generation: u64) -> Record {
    let letter = if generation.is_multiple_of(2) {
        'a'
    } else {
        'b'
    };
    Record {
        access_token: Some(AccessToken::new(letter.to_string().repeat(256 * 1024))),
        refresh_token: Some(RefreshToken::new(format!("refresh-{letter}"))),
        scopes: vec![letter.to_string()],
        ..Record::default()
    }
}

#[test]
#[allow(clippy::print_stdout)] // stdout is how the child talks to its parent
fn a_writer_killed_at_random_moments_never_leaves_a_torn_file() {
    if let Ok(dir) = std::env::var(WRITER_ENV) {
        // The child: save alternating records until killed.
        let store = StateFolder::open(&dir).expect("open");
        println!("TOKD-WRITER-READY");
        for generation in 0u64.. {
            store.save("victim", &record(generation)).expect("save");
        }
        return;
    }
    let folder = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(folder.path()).expect("open");
    store.save("victim", &record(0)).expect("first save");
    let (a, b) = (record(0), record(1));

    for round in 0..ROUNDS {
        let mut writer = child(
            "store::a_writer_killed_at_random_moments_never_leaves_a_torn_file",
            folder.path(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
        let stdout = writer.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Wait (with no timing assumption) until the writer is writing.
        loop {
            match lines.next() {
                Some(Ok(line)) if line.ends_with("TOKD-WRITER-READY") => break,
                Some(Ok(_)) => continue,
                other => panic!("the writer died before it was ready: {other:?}"),
            }
        }
        // A pseudo-random moment inside the write loop.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        std::thread::sleep(Duration::from_micros(
            u64::from(nanos % 20_000) + round as u64 * 37,
        ));
        writer.kill().expect("SIGKILL");
        writer.wait().expect("reap");

        match store.load("victim").expect("load") {
            Loaded::Found(found) => assert!(
                found == a || found == b,
                "round {round}: a record that is neither the old nor the new one"
            ),
            other => panic!("round {round}: the record was lost or torn: {other:?}"),
        }
    }
    // Leftover temporary files of killed writers are not records.
    let records: Vec<_> = std::fs::read_dir(folder.path())
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    assert_eq!(records, ["victim.json"]);
}

/// In a child (`WRITER_ENV` set): one save of a 256 KiB record, saying on
/// stdout whether it worked. Returns whether this process is that child.
#[allow(clippy::print_stdout)] // stdout is how the child talks to its parent
fn write_once_if_child() -> bool {
    let Ok(dir) = std::env::var(WRITER_ENV) else {
        return false;
    };
    let outcome = StateFolder::open(&dir)
        .expect("open")
        .save("victim", &record(1));
    println!(
        "TOKD-WRITER-RESULT {}",
        if outcome.is_ok() { "ok" } else { "failed" }
    );
    true
}

/// Runs `test` as a child that makes one save of a 256 KiB record under a
/// file-size limit far below it, so the kernel stops the writer in the
/// middle of writing the file: with `ignore_signal` the write fails with
/// EFBIG, otherwise SIGXFSZ kills the process. A store that wrote in place
/// would leave a torn file both ways.
fn save_under_a_file_size_limit(test: &str, ignore_signal: bool) -> std::process::Output {
    let folder = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(folder.path()).expect("open");
    let old = record(0);
    store.save("victim", &old).expect("first save");
    let writer = child(test, folder.path());
    let trap = if ignore_signal { "trap '' XFSZ; " } else { "" };
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{trap}ulimit -f 64; exec \"$0\" \"$@\""))
        .arg(writer.get_program())
        .args(writer.get_args())
        .envs(
            writer
                .get_envs()
                .filter_map(|(key, value)| Some((key, value?))),
        )
        .stderr(Stdio::null())
        .output()
        .expect("run the writer");
    match store.load("victim").expect("load") {
        Loaded::Found(found) => assert!(found == old, "the old record was damaged"),
        other => panic!("the record was lost or torn: {other:?}"),
    }
    output
}

#[test]
fn a_write_cut_off_by_the_kernel_fails_cleanly_and_keeps_the_old_record() {
    if write_once_if_child() {
        return;
    }
    let output = save_under_a_file_size_limit(
        "store::a_write_cut_off_by_the_kernel_fails_cleanly_and_keeps_the_old_record",
        true,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("TOKD-WRITER-RESULT failed"),
        "the save reports the failure: {stdout}"
    );
}

#[test]
fn a_writer_killed_inside_the_write_keeps_the_old_record() {
    use std::os::unix::process::ExitStatusExt;
    if write_once_if_child() {
        return;
    }
    let output = save_under_a_file_size_limit(
        "store::a_writer_killed_inside_the_write_keeps_the_old_record",
        false,
    );
    // SIGXFSZ is 25 on Linux: the kernel killed the writer mid-write.
    assert_eq!(output.status.signal(), Some(25), "{:?}", output.status);
}
