//! Who is at the other end of a loopback TCP connection. Loopback TCP has
//! no `SO_PEERCRED`; the kernel's socket diagnostics (`sock_diag`, what
//! `ss` uses) name the uid owning a socket. The browser's socket is the one
//! whose local address is the connection's peer and whose remote address
//! is the listener's: one exact query by those four values, a hash lookup
//! in the kernel whatever the size of the system's socket table (reading
//! `/proc/net/tcp` instead took 38 ms with 18,000 sockets, per connection).
//!
//! Blocking (a netlink socket's send and receive): callers run it off the
//! runtime's thread.

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use std::io::{Error, ErrorKind};
use std::net::SocketAddr;

/// The uid owning the socket at `peer` that is connected to `local`, or
/// `None` when the kernel has none (gone already, or in another network
/// namespace).
pub fn uid_of_peer(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(
        request_header(),
        SockDiagMessage::InetRequest(InetRequest {
            family: match peer {
                SocketAddr::V4(_) => AF_INET,
                SocketAddr::V6(_) => AF_INET6,
            },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: peer.port(),
                destination_port: local.port(),
                source_address: peer.ip(),
                destination_address: local.ip(),
                interface_id: 0,
                // INET_DIAG_NOCOOKIE: any socket with these addresses.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    packet.finalize();
    let mut request = vec![0; packet.buffer_len()];
    packet.serialize(&mut request);
    socket.send(&request, 0)?;
    // One answer: the socket's description, or an error (ENOENT: none).
    let mut answer = vec![0; 8192];
    let size = socket.recv(&mut &mut answer[..], 0)?;
    let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&answer[..size])
        .map_err(|error| Error::new(ErrorKind::InvalidData, error.to_string()))?;
    match message.payload {
        // The very connection: established, from `peer` to `local` (the
        // kernel's lookup falls back to a listening socket on the peer's
        // address when the connection has gone).
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response))
            if response.header.state == TCP_ESTABLISHED
                && response.header.socket_id.source_address == peer.ip()
                && response.header.socket_id.source_port == peer.port()
                && response.header.socket_id.destination_address == local.ip()
                && response.header.socket_id.destination_port == local.port() =>
        {
            Ok(Some(response.header.uid))
        }
        NetlinkPayload::Error(error) => match error.code {
            Some(code) if -code.get() == ENOENT => Ok(None),
            _ => Err(error.to_io()),
        },
        _ => Ok(None),
    }
}

fn request_header() -> NetlinkHeader {
    let mut header = NetlinkHeader::default();
    // An exact lookup, not a dump.
    header.flags = NLM_F_REQUEST;
    header
}

/// What the kernel answers when no socket has those addresses.
const ENOENT: i32 = 2;
/// `TCP_ESTABLISHED` in the kernel's TCP states.
const TCP_ESTABLISHED: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_processs_own_connection_is_found_by_its_addresses() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(host) else {
                continue; // no IPv6 here
            };
            let local = listener.local_addr().expect("addr");
            let client = std::net::TcpStream::connect(local).expect("connect");
            let (_accepted, peer) = listener.accept().expect("accept");
            let uid = uid_of_peer(local, peer).expect("asked");
            assert_eq!(uid, Some(crate::os::current_uid().expect("uid")), "{host}");
            drop(client);
            // Addresses no socket has: none.
            let nobody: SocketAddr = SocketAddr::new(local.ip(), 1);
            assert_eq!(uid_of_peer(local, nobody).expect("asked"), None, "{host}");
        }
    }
}
