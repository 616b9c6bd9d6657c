//! One open connection of a bus: an RTU serial line or a TCP socket, through tokio-modbus's
//! clients. It takes the bus's turns one request at a time, gives each its timeout, and says why
//! a request failed in the terms the poller counts.
//!
//! On a line the turns are kept apart by the inter-frame gap (3.5 characters; 1.75 ms above
//! 19200 baud, as the serial-line specification fixes it), and every request starts on a quiet
//! line: whatever came in since the last answer (a late answer of a unit that timed out, noise)
//! is discarded before the request is written, so it cannot be taken for this request's answer.
//!
//! A TCP connection whose request timed out or got an answer to another transaction is spent: a
//! late answer would be read as the next request's. The caller reconnects it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context as ModbusClient, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use super::points::Encoded;
use super::stats::Reason;
use crate::config::{ModbusBusConfig, ModbusParity, ModbusTransport, Table};

/// The gap between frames on lines faster than 19200 baud.
const FAST_LINE_GAP: Duration = Duration::from_micros(1750);
/// Longest a TCP connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed.
#[derive(Debug)]
pub enum Failure {
    /// No answer within the bus's timeout.
    Timeout,
    /// The unit answered with a Modbus exception.
    Exception(ExceptionCode),
    /// An answer came that does not decode (bad CRC, garbled) or is not this request's.
    BadFrame(String),
    /// The port or socket failed: the bus must be opened again.
    Link(io::Error),
}

impl Failure {
    /// The counter it goes to.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Timeout => Reason::Timeout,
            Failure::Exception(_) => Reason::Exception,
            Failure::BadFrame(_) => Reason::BadFrame,
            Failure::Link(_) => Reason::Link,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer within the bus's timeout"),
            Failure::Exception(code) => write!(f, "the unit answered with exception {code:?}"),
            Failure::BadFrame(detail) => write!(f, "a bad answer: {detail}"),
            Failure::Link(e) => write!(f, "the link failed: {e}"),
        }
    }
}

/// What a read brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    /// Holding or input registers.
    Registers(Vec<u16>),
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
}

/// One request on the bus.
enum Request<'a> {
    /// Read `count` of `table` from `start`.
    Read(Table, u16, u16),
    /// Write at an address.
    Write(u16, &'a Encoded),
}

/// Sends `request` through tokio-modbus's client; read values, or `None` for a write.
async fn call(
    client: &mut ModbusClient,
    request: Request<'_>,
) -> tokio_modbus::Result<Option<Values>> {
    let registers =
        |r: tokio_modbus::Result<Vec<u16>>| r.map(|r| r.map(|v| Some(Values::Registers(v))));
    // A unit sends whole bytes of bits: those past `count` are padding.
    let bits = |r: tokio_modbus::Result<Vec<bool>>, count: u16| {
        r.map(|r| {
            r.map(|mut v| {
                v.truncate(usize::from(count));
                Some(Values::Bits(v))
            })
        })
    };
    let written = |r: tokio_modbus::Result<()>| r.map(|r| r.map(|()| None));
    match request {
        Request::Read(Table::Holding, start, count) => {
            registers(client.read_holding_registers(start, count).await)
        }
        Request::Read(Table::Input, start, count) => {
            registers(client.read_input_registers(start, count).await)
        }
        Request::Read(Table::Coil, start, count) => {
            bits(client.read_coils(start, count).await, count)
        }
        Request::Read(Table::Discrete, start, count) => {
            bits(client.read_discrete_inputs(start, count).await, count)
        }
        Request::Write(address, Encoded::Coil(on)) => {
            written(client.write_single_coil(address, *on).await)
        }
        Request::Write(address, Encoded::Registers(words)) => match words.as_slice() {
            [word] => written(client.write_single_register(address, *word).await),
            words => written(client.write_multiple_registers(address, words).await),
        },
    }
}

/// An open bus.
pub struct Link {
    client: ModbusClient,
    /// RTU: the inter-frame gap; TCP: none.
    gap: Option<Duration>,
    /// When the last turn ended, so the next starts a gap later.
    turn_ended: Instant,
    timeout: Duration,
    /// Bytes received on the line (RTU), to tell a garbled answer from none.
    received: Arc<AtomicU64>,
    /// Set when the connection cannot be used again.
    spent: bool,
    /// Why the port or socket failed, when it did.
    lost: Option<String>,
}

impl Link {
    /// Opens the bus's port or connection.
    pub async fn open(config: &ModbusBusConfig) -> io::Result<Link> {
        let received = Arc::new(AtomicU64::new(0));
        let (client, gap) = match config.transport {
            ModbusTransport::Rtu => {
                let path = config
                    .path
                    .as_ref()
                    .ok_or_else(|| io::Error::other("an rtu bus without a path"))?;
                let port = tokio_serial::new(path.to_string_lossy(), config.baud)
                    .data_bits(match config.data_bits {
                        7 => DataBits::Seven,
                        _ => DataBits::Eight,
                    })
                    .parity(match config.parity {
                        ModbusParity::None => Parity::None,
                        ModbusParity::Even => Parity::Even,
                        ModbusParity::Odd => Parity::Odd,
                    })
                    .stop_bits(match config.stop_bits {
                        2 => StopBits::Two,
                        _ => StopBits::One,
                    })
                    .flow_control(FlowControl::None)
                    .open_native_async()
                    .map_err(io::Error::from)?;
                let line = QuietLine {
                    port,
                    received: received.clone(),
                    drain_before_write: true,
                };
                let client = tokio_modbus::client::rtu::attach(line);
                (client, Some(frame_gap(config)))
            }
            ModbusTransport::Tcp => {
                let address = config.address.as_deref().unwrap_or_default();
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                        })??;
                // Requests are small and each waits for its answer.
                stream.set_nodelay(true)?;
                (tokio_modbus::client::tcp::attach(stream), None)
            }
        };
        Ok(Link {
            client,
            gap,
            turn_ended: Instant::now(),
            timeout: config.timeout.0,
            received,
            spent: false,
            lost: None,
        })
    }

    /// Whether the connection must be opened again before the next request.
    pub fn is_spent(&self) -> bool {
        self.spent
    }

    /// Why the port or socket failed, if it did (not only a spent TCP connection).
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Reads `count` registers or bits of `table` from `start` on `unit`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Values, Failure> {
        let values = self.turn(unit, Request::Read(table, start, count)).await?;
        let len = match &values {
            Some(Values::Registers(r)) => r.len(),
            Some(Values::Bits(b)) => b.len(),
            None => 0,
        };
        match values {
            Some(values) if len == usize::from(count) => Ok(values),
            _ => Err(Failure::BadFrame(format!(
                "asked for {count} {}, got {len}",
                if table.is_bits() { "bits" } else { "registers" }
            ))),
        }
    }

    /// Writes `value` at `address` on `unit` (holding registers or a coil).
    pub async fn write(&mut self, unit: u8, address: u16, value: &Encoded) -> Result<(), Failure> {
        self.turn(unit, Request::Write(address, value))
            .await
            .map(drop)
    }

    /// Takes one turn of the bus: waits out the gap, sends the request to `unit`, waits for its
    /// answer within the timeout, and says why it failed.
    async fn turn(&mut self, unit: u8, request: Request<'_>) -> Result<Option<Values>, Failure> {
        if let Some(gap) = self.gap {
            tokio::time::sleep_until(self.turn_ended + gap).await;
        }
        self.client.set_slave(Slave(unit));
        let received_before = self.received.load(Ordering::Relaxed);
        let answer = tokio::time::timeout(self.timeout, call(&mut self.client, request)).await;
        self.turn_ended = Instant::now();
        let failure = match answer {
            Ok(Ok(Ok(values))) => return Ok(values),
            Ok(Ok(Err(code))) => return Err(Failure::Exception(code)),
            Err(_) if self.received.load(Ordering::Relaxed) != received_before => {
                Failure::BadFrame("an answer came but did not decode (bad CRC or garbled)".into())
            }
            Err(_) => Failure::Timeout,
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Failure::BadFrame(e.to_string()),
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                Failure::BadFrame(e.to_string())
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => Failure::Link(e),
        };
        if let Failure::Link(e) = &failure {
            self.lost = Some(e.to_string());
        }
        if self.gap.is_none() || self.lost.is_some() {
            self.spent = true;
        }
        Err(failure)
    }

    /// Closes the connection (a TCP socket is shut down politely).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
    }
}

/// The inter-frame gap of an RTU line: 3.5 characters of (start + data + parity + stop) bits, or
/// 1.75 ms on lines faster than 19200 baud.
pub fn frame_gap(config: &ModbusBusConfig) -> Duration {
    if config.baud > 19_200 {
        return FAST_LINE_GAP;
    }
    let parity = u32::from(config.parity != ModbusParity::None);
    let bits = 1 + u32::from(config.data_bits) + parity + u32::from(config.stop_bits);
    Duration::from_secs_f64(3.5 * f64::from(bits) / f64::from(config.baud.max(1)))
}

/// A serial port that counts what it receives and discards what came in between an answer and
/// the next request.
struct QuietLine {
    port: SerialStream,
    received: Arc<AtomicU64>,
    /// Set by a read: the next write starts a new turn.
    drain_before_write: bool,
}

impl AsyncRead for QuietLine {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.port).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before) as u64;
        self.received.fetch_add(got, Ordering::Relaxed);
        self.drain_before_write = true;
        polled
    }
}

impl AsyncWrite for QuietLine {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if std::mem::take(&mut self.drain_before_write) {
            // Reads until nothing is waiting; a read error will show on the answer's read.
            let mut scratch = [0u8; 256];
            loop {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.port).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                    _ => break,
                }
            }
        }
        Pin::new(&mut self.port).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.port).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.port).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn line(baud: u32, parity: ModbusParity, stop_bits: u8) -> ModbusBusConfig {
        ModbusBusConfig {
            name: "line".into(),
            transport: ModbusTransport::Rtu,
            path: Some("/dev/null".into()),
            baud,
            parity,
            data_bits: 8,
            stop_bits,
            address: None,
            timeout: HumanDuration(Duration::from_millis(100)),
            devices: Vec::new(),
        }
    }

    /// A socat joining two pseudo-terminals, `dir/hub` and `dir/dev`: the line. Killed on drop.
    struct Line(std::process::Child);

    impl Line {
        async fn plug(dir: &std::path::Path) -> Line {
            let end = |name: &str| format!("pty,raw,echo=0,link={}", dir.join(name).display());
            let child = std::process::Command::new("socat")
                .args([end("hub"), end("dev")])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("socat is installed");
            let line = Line(child);
            for _ in 0..1000 {
                if dir.join("hub").exists() && dir.join("dev").exists() {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("socat made no pseudo-terminals");
        }
    }

    impl Drop for Line {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// CRC-16/MODBUS, written out here so the test does not trust the code under test.
    fn crc16(bytes: &[u8]) -> u16 {
        let mut crc = 0xFFFF_u16;
        for &b in bytes {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    /// A unit's answer to "read one holding register": `value`.
    fn answer(unit: u8, value: u16) -> Vec<u8> {
        let [hi, lo] = value.to_be_bytes();
        let mut frame = vec![unit, 3, 2, hi, lo];
        frame.extend(crc16(&frame).to_le_bytes());
        frame
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_garbled_answer_is_a_bad_frame_and_a_late_one_is_not_taken_for_the_next() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let _line = Line::plug(dir.path()).await;
        let mut config = line(19_200, ModbusParity::None, 1);
        config.path = Some(dir.path().join("hub"));
        config.timeout = HumanDuration(Duration::from_millis(300));
        let mut link = Link::open(&config).await.expect("open the hub's end");
        let mut unit = tokio_serial::new(dir.path().join("dev").to_string_lossy(), 19_200)
            .open_native_async()
            .expect("open the units' end");
        let mut request = [0u8; 8];

        // A good answer.
        let (read, ()) = tokio::join!(link.read(1, Table::Holding, 0, 1), async {
            unit.read_exact(&mut request).await.expect("the request");
            unit.write_all(&answer(1, 42)).await.expect("answer");
        });
        assert_eq!(read.expect("read"), Values::Registers(vec![42]));
        assert_eq!(
            request[..6],
            [1, 3, 0, 0, 0, 1],
            "unit 1 reads holding 0, one register"
        );
        assert_eq!(crc16(&request[..6]).to_le_bytes(), request[6..]);

        // Its CRC spoiled: a bad frame, told apart from silence.
        let (read, ()) = tokio::join!(link.read(1, Table::Holding, 0, 1), async {
            unit.read_exact(&mut request).await.expect("the request");
            let mut bad = answer(1, 42);
            bad[5] ^= 0xFF;
            unit.write_all(&bad).await.expect("answer");
        });
        assert!(matches!(read, Err(Failure::BadFrame(_))), "{read:?}");
        assert!(!link.is_spent(), "a line stays open");

        // Unit 2 answers too late...
        let (read, ()) = tokio::join!(link.read(2, Table::Holding, 0, 1), async {
            unit.read_exact(&mut request).await.expect("the request");
        });
        assert!(matches!(read, Err(Failure::Timeout)), "{read:?}");
        unit.write_all(&answer(2, 99)).await.expect("late answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...and its answer is not taken for unit 3's.
        let (read, ()) = tokio::join!(link.read(3, Table::Holding, 0, 1), async {
            unit.read_exact(&mut request).await.expect("the request");
            unit.write_all(&answer(3, 7)).await.expect("answer");
        });
        assert_eq!(read.expect("read"), Values::Registers(vec![7]));
    }

    #[test]
    fn the_gap_is_three_and_a_half_characters() {
        // 9600 8N1: 10 bits a character, 3.5 characters = 3.646 ms.
        let gap = frame_gap(&line(9600, ModbusParity::None, 1));
        assert_eq!(gap.as_micros(), 3645);
        // 9600 8E1: 11 bits.
        let gap = frame_gap(&line(9600, ModbusParity::Even, 1));
        assert_eq!(gap.as_micros(), 4010);
        // Above 19200 the specification fixes 1.75 ms.
        assert_eq!(
            frame_gap(&line(115_200, ModbusParity::None, 2)),
            FAST_LINE_GAP
        );
    }
}
