//! Who is at the other end of a loopback TCP connection. The kernel's
//! socket tables (`/proc/net/tcp`, `/proc/net/tcp6`) name the uid that owns
//! each socket; the browser's socket is the one whose local address is the
//! connection's peer and whose remote address is the listener's.
//!
//! Loopback TCP has no `SO_PEERCRED`, and `sock_diag` needs a netlink
//! socket (which the systemd unit does not allow); the tables need only a
//! read of a file in tokd's own network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` that is connected to `local`, or
/// `None` when the tables do not show one (gone already, or another
/// network namespace).
pub fn uid_of_peer(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let table = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table)?;
    Ok(find_uid(&text, peer, local))
}

/// In a socket table, the uid of the socket whose local address is
/// `socket_local` and remote address `socket_remote`.
pub fn find_uid(table: &str, socket_local: SocketAddr, socket_remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (parse_address(local)? == socket_local && parse_address(remote)? == socket_remote)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (127.0.0.1:8080) or its 32-digit IPv6 form. The kernel
/// prints each 32-bit word of the address as a number in host order.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (index, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(address.get(index * 8..index * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As printed on a little-endian machine (the words' byte order is the
    /// host's, so the sample is built with `to_ne_bytes` in mind).
    fn hex4(ip: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn hex6(ip: Ipv6Addr) -> String {
        ip.octets()
            .chunks(4)
            .map(|word| {
                format!(
                    "{:08X}",
                    u32::from_ne_bytes(word.try_into().expect("4 bytes"))
                )
            })
            .collect()
    }

    #[test]
    fn the_browsers_socket_names_its_owner() {
        let listener: SocketAddr = "127.0.0.1:8765".parse().expect("addr");
        let browser: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        let other: SocketAddr = "127.0.0.1:40124".parse().expect("addr");
        let row = |sl: u32, local: SocketAddr, remote: SocketAddr, uid: u32| {
            let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
                panic!("v4 only here");
            };
            format!(
                "   {sl}: {}:{:04X} {}:{:04X} 01 00000000:00000000 00:00000000 00000000  {uid}        0 1234 1 0000000000000000 20 4 30 10 -1",
                hex4(*local.ip()),
                local.port(),
                hex4(*remote.ip()),
                remote.port()
            )
        };
        let table = [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_owned(),
            // tokd's own end of the same connection: not the browser's.
            row(0, listener, browser, 1000),
            row(1, browser, listener, 1001),
            row(2, other, listener, 65534),
        ]
        .join("\n");
        assert_eq!(find_uid(&table, browser, listener), Some(1001));
        assert_eq!(find_uid(&table, other, listener), Some(65534));
        assert_eq!(find_uid(&table, listener, other), None);
    }

    #[test]
    fn ipv6_addresses_are_read_word_by_word() {
        let text = format!("{}:1F90", hex6(Ipv6Addr::LOCALHOST));
        assert_eq!(
            parse_address(&text),
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080))
        );
        assert_eq!(
            parse_address(&format!("{}:0050", hex4(Ipv4Addr::LOCALHOST))),
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(parse_address("zz:1F90"), None);
        assert_eq!(parse_address("0100007F"), None);
    }

    #[test]
    fn this_processs_own_connection_is_found_in_the_kernels_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_accepted, peer) = listener.accept().expect("accept");
        let uid = uid_of_peer(listener.local_addr().expect("addr"), peer).expect("read");
        assert_eq!(uid, Some(crate::os::current_uid().expect("uid")));
        drop(client);
    }
}
