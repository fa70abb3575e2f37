//! Small traffic checks between namespaces.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::Netns;

/// A one-line TCP exchange from a socket in `client` to a server on
/// `server_ip` in `server`; returns the client address the server saw
/// (so callers can tell whether it was translated). Panics on failure.
pub fn tcp_exchange(server: &Netns, server_ip: Ipv4Addr, client: &Netns) -> SocketAddr {
    let listener = server
        .run(|| TcpListener::bind((server_ip, 0)))
        .expect("enter")
        .expect("listen");
    let target = listener.local_addr().expect("address");
    let served = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(b"pong\n").expect("write");
        peer
    });
    let line = client
        .run(|| -> std::io::Result<String> {
            let conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            BufReader::new(conn).read_line(&mut line)?;
            Ok(line)
        })
        .expect("enter")
        .unwrap_or_else(|e| panic!("TCP to {target}: {e}"));
    assert_eq!(line, "pong\n");
    served.join().expect("server")
}
