//! A private `redis-server` (Debian's binary, from [`super::peers::redis_server`]) on a port of
//! its own, which a test stops and starts again (the shared peer of `tests/peers/redis.sh` is
//! never disturbed). No persistence, 127.0.0.1 only. Std only.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private Redis: stopped when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    bin: PathBuf,
    port: u16,
    /// `--tls-…` options: the port then speaks TLS only.
    tls: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a free port.
    pub fn start(bin: PathBuf) -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = PrivateRedis { bin, port, tls: Vec::new(), child: None };
        redis.up();
        redis
    }

    /// Starts one that speaks TLS only (no client certificates asked), with this certificate
    /// chain and key (PEM files).
    pub fn start_tls(bin: PathBuf, cert: &std::path::Path, key: &std::path::Path) -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
        let tls = vec![
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(cert),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut redis = PrivateRedis { bin, port, tls, child: None };
        redis.up();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers `PING` (with TLS: whether it accepts connections).
    pub fn pong(&self) -> bool {
        if !self.tls.is_empty() {
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Starts it again (same port), and waits until it answers.
    pub fn up(&mut self) {
        let port = self.port.to_string();
        let ports =
            if self.tls.is_empty() { ["--port", &port, "--port", &port] } else { ["--port", "0", "--tls-port", &port] };
        let child = Command::new(&self.bin)
            .args(ports)
            .args(&self.tls)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if self.pong() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the private redis-server did not start on port {}", self.port);
    }

    /// Stops it (`SIGSTOP`): connections stay open, nothing is answered (a Redis that hangs).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen one go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills it (as a crash would).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}
