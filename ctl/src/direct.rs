//! `tokctl get` over tokd's private socket in one round trip, before any
//! async runtime is built: the handshake and the call go in one write and
//! the answer is read with blocking I/O (`tokd_shared::direct`). When the
//! socket is missing, another user's, or does not finish the handshake,
//! tokctl goes on as for every other command (zbus; the session bus).

use crate::failure::{Failure, exit};
use crate::{Command, Deadline, SOCKET_HANDSHAKE, output, say};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;
use tokd_shared::direct::Unanswered;

/// What trying the private socket first came to.
#[derive(Debug)]
pub(crate) enum Tried {
    /// tokd answered (or the command could not be asked): the result.
    Done(Result<String, Failure>),
    /// Not asked here; the session bus is to be used when `skip_socket`
    /// (the socket is another user's, or it did not finish the
    /// handshake), else the usual way.
    Not { skip_socket: bool },
}

/// `tokctl get` straight over the private socket, if `command` is one.
pub(crate) fn get(command: &Command, deadline: &Deadline) -> Tried {
    let Command::Get {
        name,
        min_valid,
        format,
        user,
    } = command
    else {
        return Tried::Not { skip_socket: false };
    };
    let sasl = match output::sasl_user(*format, user.as_deref()) {
        Ok(sasl) => sasl,
        Err(message) => return Tried::Done(Err(Failure::new(exit::USAGE, message))),
    };
    let Some(path) = tokd_shared::private_socket_path() else {
        return Tried::Not { skip_socket: false };
    };
    // A missing or stale socket (tokd killed) fails here at once; a full
    // queue (a stopped tokd's, a squatter's) once the handshake's time is up.
    let deadline_at = deadline.at.into_std();
    let handshake_by = (Instant::now() + SOCKET_HANDSHAKE).min(deadline_at);
    // Either way the zbus path would find the same socket: it is skipped.
    let Ok(mut stream) = connect(&path, handshake_by) else {
        return Tried::Not { skip_socket: true };
    };
    if !served_by_this_user(&stream, &path) {
        return Tried::Not { skip_socket: true };
    }
    let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
    let uid = rustix::process::getuid().as_raw();
    match tokd_shared::direct::get_token(&mut stream, uid, name, secs, handshake_by, deadline_at) {
        Ok(Ok((token, expires_at, token_type, warning))) => Tried::Done(Ok(output::token(
            &token,
            expires_at,
            &token_type,
            &warning,
            *format,
            sasl,
        ))),
        Ok(Err(error)) => Tried::Done(Err(error.into())),
        Err(Unanswered::Deadline) => Tried::Done(Err(deadline.passed())),
        Err(Unanswered::Handshake(_)) if Instant::now() >= deadline_at => {
            Tried::Done(Err(deadline.passed()))
        }
        Err(Unanswered::Handshake(_)) => Tried::Not { skip_socket: true },
    }
}

/// Connects to the socket at `path`, waiting at most until `by` for a
/// place in its listener's queue (a full queue would keep `connect`
/// waiting for ever; a timeout is `WouldBlock`).
pub(crate) fn connect(path: &Path, by: Instant) -> std::io::Result<UnixStream> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let within = by
        .saturating_duration_since(Instant::now())
        .max(std::time::Duration::from_millis(1));
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // The send timeout bounds the wait in connect too.
    set_socket_timeout(&socket, Timeout::Send, Some(within))?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(path)?)?;
    set_socket_timeout(&socket, Timeout::Send, None)?;
    Ok(UnixStream::from(socket))
}

/// Whether the process at the other end of `stream` runs as this user:
/// nothing is sent to a socket another user put in a runtime folder they
/// could write to.
pub(crate) fn served_by_this_user(stream: &UnixStream, path: &Path) -> bool {
    let own = rustix::process::getuid();
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(credentials) if credentials.uid == own => true,
        Ok(credentials) => {
            say::warning(&format!(
                "{} is served by uid {}, not by you; not using it (check that $XDG_RUNTIME_DIR is yours and mode 700)",
                path.display(),
                credentials.uid.as_raw()
            ));
            false
        }
        Err(_) => false,
    }
}
