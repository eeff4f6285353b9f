//! A blocking MLLP client: what a patient monitor does on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// Start block, end block, carriage return.
pub const SB: u8 = 0x0b;
/// End block.
pub const EB: u8 = 0x1c;
/// Carriage return.
pub const CR: u8 = 0x0d;

/// One device connection.
#[derive(Debug)]
pub struct MllpClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl MllpClient {
    /// Connects with a 10 s read timeout.
    ///
    /// # Errors
    /// Connection errors.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<MllpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(MllpClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes raw bytes (for malformed-framing tests).
    ///
    /// # Errors
    /// I/O errors.
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Frames and sends one message (segments separated by `\r`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn send(&mut self, message: &str) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(message.len() + 3);
        frame.push(SB);
        frame.extend_from_slice(message.as_bytes());
        frame.extend_from_slice(&[EB, CR]);
        self.send_raw(&frame)
    }

    /// Reads one framed reply.
    ///
    /// # Errors
    /// Timeout, connection closed, or a reply that is not a frame.
    pub fn read_reply(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [EB, CR]) {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let start = frame
                    .iter()
                    .position(|b| *b == SB)
                    .context("reply without start block")?;
                return Ok(String::from_utf8_lossy(&frame[start + 1..end]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed by the gateway");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a message and returns the reply.
    ///
    /// # Errors
    /// As [`MllpClient::send`] and [`MllpClient::read_reply`].
    pub fn exchange(&mut self, message: &str) -> anyhow::Result<String> {
        self.send(message)?;
        self.read_reply()
    }

    /// True once the peer has closed the connection (reads EOF or a reset within `wait`).
    #[must_use]
    pub fn is_closed_within(&mut self, wait: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(wait));
        let mut b = [0u8; 512];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

/// MSA-1 of an ACK (`AA`, `AE`, `AR`, `CA`, ...), or empty.
#[must_use]
pub fn ack_code(reply: &str) -> String {
    segment_field(reply, "MSA", 1)
}

/// Field `n` of the first segment named `name` (not for MSH).
#[must_use]
pub fn segment_field(reply: &str, name: &str, n: usize) -> String {
    reply
        .split(['\r', '\n'])
        .find(|s| s.starts_with(name))
        .and_then(|s| s.split('|').nth(n))
        .unwrap_or_default()
        .to_owned()
}

/// A monitor that sends `count` messages one after another, as a real device does:
/// each message is retransmitted (after reconnecting if needed) until it gets `AA`/`CA`,
/// so a crash or restart of the gateway costs time, never data. Returns the control
/// ids acknowledged, in order.
///
/// `make(seq)` returns `(control_id, message)`; `give_up` bounds the whole run.
///
/// # Errors
/// When a message is answered with anything but a positive ACK or AR (which the device
/// retries), or the run exceeds `give_up`.
pub fn run_device(
    addr: SocketAddr,
    count: u64,
    give_up: Duration,
    make: impl Fn(u64) -> (String, String),
) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + give_up;
    let mut acked = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut client: Option<MllpClient> = None;
    let mut seq = 0;
    while seq < count {
        if std::time::Instant::now() > deadline {
            bail!(
                "device gave up after {give_up:?} with {} of {count} acknowledged",
                acked.len()
            );
        }
        let (control_id, message) = make(seq);
        let c = match client.as_mut() {
            Some(c) => c,
            None => match MllpClient::connect(addr) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        match c.exchange(&message) {
            Ok(reply) => match ack_code(&reply).as_str() {
                "AA" | "CA" => {
                    if segment_field(&reply, "MSA", 2) != control_id {
                        bail!(
                            "ACK for {control_id} echoes {:?}",
                            segment_field(&reply, "MSA", 2)
                        );
                    }
                    acked.push(control_id);
                    seq += 1;
                }
                "AR" | "CR" => std::thread::sleep(Duration::from_millis(20)),
                other => bail!(
                    "{control_id} answered {other:?}: {}",
                    reply.replace('\r', "\n")
                ),
            },
            // The gateway went away mid-exchange: reconnect and retransmit.
            Err(_) => client = None,
        }
    }
    Ok(acked)
}
