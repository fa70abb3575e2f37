//! `berth-testbed probe`: a client that tests run inside a pod's network
//! namespace and a node's cgroup (where the node's socket load balancer
//! acts), printing one line per attempt.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use clap::Subcommand;
use nix::sys::socket::{setsockopt, sockopt};

/// What to probe.
#[derive(Debug, Subcommand)]
pub(crate) enum Probe {
    /// N TCP connections; prints the first line each server sends and the
    /// peer address the socket reports (getpeername), or `error <what>`.
    Tcp {
        /// Where to connect.
        #[arg(long)]
        target: SocketAddr,
        /// How many connections.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// N UDP datagrams from one unconnected socket; prints each reply and
    /// the address it came from, or `error <what>`.
    Udp {
        /// Where to send.
        #[arg(long)]
        target: SocketAddr,
        /// How many datagrams.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// One connected UDP socket: sends a datagram, prints `connected
    /// <reply>`, then waits (up to 60 s) for more and prints `error
    /// <what>` when its socket fails (closed by the load balancer when the
    /// backend goes away).
    UdpHold {
        /// Where to connect.
        #[arg(long)]
        target: SocketAddr,
    },
    /// Request/response round trips of one byte; prints `p50 p99` in
    /// microseconds.
    Rr {
        /// The echo server.
        #[arg(long)]
        target: SocketAddr,
        /// Round trips measured (after 10% as many to warm up).
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// A new connection per round trip (connect, exchange, close)
        /// instead of one connection for all.
        #[arg(long)]
        new_connections: bool,
    },
    /// One TCP connection held open for a while: prints `connected
    /// <greeting>`, then exchanges a line every 50 ms and prints `held
    /// <exchanges>`, or `error <what>` when the connection breaks.
    Hold {
        /// Where to connect.
        #[arg(long)]
        target: SocketAddr,
        /// For how long.
        #[arg(long)]
        seconds: u64,
    },
}

/// Round-trip times (µs) of one-byte exchanges with an echo server.
///
/// With `new_connections`, each connection is closed with a reset (linger
/// 0), as connection-rate benchmarks do: a normal close would leave it in
/// TIME_WAIT for a minute, and thousands of those towards one server make
/// every later `connect()` search longer for a free port, slowing whatever
/// path is measured last.
fn round_trips(
    target: SocketAddr,
    count: usize,
    new_connections: bool,
) -> std::io::Result<Vec<f64>> {
    use std::io::Read;
    let connect = || -> std::io::Result<TcpStream> {
        let conn = TcpStream::connect(target)?;
        conn.set_nodelay(true)?;
        if new_connections {
            let reset = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(&conn, sockopt::Linger, &reset)?;
        }
        Ok(conn)
    };
    let warmup = (count / 10).max(1);
    let mut samples = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    let mut persistent = if new_connections {
        None
    } else {
        Some(connect()?)
    };
    for i in 0..warmup + count {
        let start = Instant::now();
        let mut fresh;
        let conn = match persistent.as_mut() {
            Some(conn) => conn,
            None => {
                fresh = connect()?;
                &mut fresh
            }
        };
        conn.write_all(&[1])?;
        conn.read_exact(&mut byte)?;
        if i >= warmup {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}

pub(crate) fn run(probe: Probe) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut out = std::io::stdout().lock();
    match probe {
        Probe::Tcp { target, count } => {
            for _ in 0..count {
                let line = TcpStream::connect_timeout(&target, timeout)
                    .and_then(|conn| {
                        conn.set_read_timeout(Some(timeout))?;
                        let peer = conn.peer_addr()?;
                        let mut line = String::new();
                        BufReader::new(conn).read_line(&mut line)?;
                        Ok(format!("{} {peer}", line.trim_end()))
                    })
                    .unwrap_or_else(|e| format!("error {}", e.kind()));
                writeln!(out, "{line}")?;
            }
        }
        Probe::Udp { target, count } => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 512];
            for i in 0..count {
                let line = socket
                    .send_to(format!("ping {i}").as_bytes(), target)
                    .and_then(|_| socket.recv_from(&mut buf))
                    .map(|(n, from)| {
                        format!("{} {from}", String::from_utf8_lossy(&buf[..n]).trim_end())
                    })
                    .unwrap_or_else(|e| format!("error {}", e.kind()));
                writeln!(out, "{line}")?;
            }
        }
        Probe::Rr {
            target,
            count,
            new_connections,
        } => {
            let mut samples = round_trips(target, count, new_connections)?;
            samples.sort_by(f64::total_cmp);
            let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
            writeln!(out, "{:.1} {:.1}", at(0.5), at(0.99))?;
        }
        Probe::UdpHold { target } => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(target)?;
            socket.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 512];
            socket.send(b"ping")?;
            let n = socket.recv(&mut buf)?;
            writeln!(
                out,
                "connected {}",
                String::from_utf8_lossy(&buf[..n]).trim_end()
            )?;
            out.flush()?;
            socket.set_read_timeout(Some(Duration::from_secs(60)))?;
            let line = match socket.recv(&mut buf) {
                Ok(n) => format!("data {}", String::from_utf8_lossy(&buf[..n]).trim_end()),
                Err(e) => format!("error {:?}", e.kind()),
            };
            writeln!(out, "{line}")?;
        }
        Probe::Hold { target, seconds } => {
            let outcome = (|| -> std::io::Result<String> {
                let conn = TcpStream::connect_timeout(&target, timeout)?;
                conn.set_read_timeout(Some(timeout))?;
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut writer = conn;
                let mut line = String::new();
                reader.read_line(&mut line)?;
                writeln!(out, "connected {}", line.trim_end())?;
                out.flush()?;
                let end = Instant::now() + Duration::from_secs(seconds);
                let mut exchanges = 0u64;
                while Instant::now() < end {
                    writer.write_all(b"tick\n")?;
                    line.clear();
                    reader.read_line(&mut line)?;
                    if line != "tick\n" {
                        return Err(std::io::Error::other(format!("echo {line:?}")));
                    }
                    exchanges += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(format!("held {exchanges}"))
            })();
            let line = outcome.unwrap_or_else(|e| format!("error {e}"));
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
