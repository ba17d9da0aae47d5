//! The `temper serve` test harness shared by the serve test binaries (each uses it with
//! `mod serve_common;`): the binary started on loopback (port 0) with the committed tiny arithmetic
//! model, a raw HTTP/1.1 client over std's TcpStream (also one that sends and holds the connection,
//! to hang up later), `/metrics` read back, SIGTERM, and the OpenAI error-shape check. Every wait
//! is bounded and fails with a message saying what did not come.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(120);

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-arith-sft")
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr: mpsc::Receiver<String>,
    /// Lines printed before the address (the model thread may say things first).
    pub early: std::cell::RefCell<Vec<String>>,
}

impl Server {
    pub fn start(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::start_model(&model_dir(), extra, envs)
    }

    pub fn start_model(model: &std::path::Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_temper"));
        cmd.arg("serve")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting temper serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut early = vec![];
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        break a.trim().to_string();
                    }
                    early.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("temper serve did not print its address within {WAIT:?}");
                }
            }
        };
        assert!(addr.starts_with("127.0.0.1:"), "not loopback: {addr}");
        let server = Server {
            child,
            addr,
            stderr: rx,
            early: std::cell::RefCell::new(early),
        };
        // Ready when /health says 200 (503 while loading).
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, _) = server.get("/health");
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "/health while loading");
            assert!(
                Instant::now() < deadline,
                "/health not ready within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: Option<&str>,
    ) -> (u16, String) {
        request_to(&self.addr, method, path, body, auth)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, Some(&body.to_string()), None);
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, v)
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = self.request("POST", path, Some(body), None);
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, v)
    }

    /// SIGTERM, then the exit status within a bound.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "temper serve did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.stderr;
    }
}

/// One request over a fresh connection (`Connection: close`): status and body.
pub fn request_to(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the server");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        addr
    );
    if let Some(k) = auth {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    if method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    parse_response(&raw)
}

/// Status and body (de-chunked) of a raw HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, out)
}

pub fn assert_error(status: u16, v: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {v}");
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e["type"].is_string(), "{what}: {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{what}: {v}"
    );
}

/// A copy of the tiny model with a chat template (each message's content on its own line) and,
/// when given, this `generation_config.json`.
pub fn chat_model_copy(generation_config: Option<&Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).expect("copying the model");
    }
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir().join("tokenizer_config.json")).expect("reading"),
    )
    .expect("tokenizer_config.json");
    cfg["chat_template"] =
        Value::String("{% for m in messages %}{{ m['content'] }}\n{% endfor %}".into());
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).expect("writing");
    if let Some(g) = generation_config {
        std::fs::write(dir.path().join("generation_config.json"), g.to_string()).expect("writing");
    }
    dir
}

impl Server {
    /// The stderr lines printed since start-up (or the last call), waiting up to `wait` for
    /// one containing `until`.
    pub fn stderr_until(&self, until: &str, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut lines: Vec<String> = self.early.take();
        if lines.iter().any(|l| l.contains(until)) {
            return lines;
        }
        while let Ok(l) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let done = l.contains(until);
            lines.push(l);
            if done {
                break;
            }
        }
        lines
    }

    /// `GET /metrics` as (name with labels, value) pairs.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {text}");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, v) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("metric line {l:?}"));
                let v: f64 = v.parse().unwrap_or_else(|_| panic!("metric value {l:?}"));
                (k.to_string(), v)
            })
            .collect()
    }

    /// One metric's value (0 when absent).
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(0.0, |(_, v)| v)
    }
}

/// Sends `body` to `path` on `addr` and keeps the connection open (the caller hangs up by dropping
/// it); with `read_first`, waits for the answer's first bytes (a streamed answer under way).
pub fn send_and_hold(addr: &str, path: &str, body: &Value, read_first: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("sending");
    if read_first {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).expect("the answer's first bytes");
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    s
}

/// Waits until `what` holds, failing after `within` with `why`.
pub fn wait_until(within: Duration, why: &str, what: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !what() {
        assert!(Instant::now() < deadline, "{why} within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
