//! Real brokers for the cluster tests: `redis-server` and `nats-server`
//! started on a free loopback port, killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use super::PATIENCE;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

impl Kind {
    /// The value of `cluster.backend`.
    pub fn backend(self) -> wsrelay::config::ClusterBackend {
        match self {
            Self::Redis => wsrelay::config::ClusterBackend::Redis,
            Self::Nats => wsrelay::config::ClusterBackend::Nats,
        }
    }

    /// The backend's name in YAML (`cluster.backend`) and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::Redis => "redis-server",
            Self::Nats => "nats-server",
        }
    }
}

/// A broker process on 127.0.0.1.
pub struct Broker {
    pub kind: Kind,
    pub port: u16,
    /// nats-server's monitoring port (its HTTP endpoint, for `/subsz`).
    pub monitor_port: u16,
    /// A nats-server configuration file, when one was given.
    config: Option<super::TempDir>,
    /// With JetStream on: its store, emptied at each restart (a restart
    /// loses the broker's data, as Redis started without persistence does).
    store: Option<super::TempDir>,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and returns once it accepts clients.
    pub fn start(kind: Kind) -> Self {
        Self::start_with(kind, None)
    }

    /// Starts nats-server with `config` (its configuration file format).
    pub fn start_nats_with(config: &str) -> Self {
        let dir = super::TempDir::new("nats-config");
        dir.file("nats.conf", config);
        Self::start_with(Kind::Nats, Some(dir))
    }

    /// Starts nats-server with JetStream on (`-js`), storing in a fresh
    /// directory.
    pub fn start_jetstream() -> Self {
        Self::start_full(Kind::Nats, None, Some(super::TempDir::new("jetstream")))
    }

    /// The broker shared history runs on for `kind`: Redis, or NATS with
    /// JetStream.
    pub fn start_with_history(kind: Kind) -> Self {
        match kind {
            Kind::Redis => Self::start(kind),
            Kind::Nats => Self::start_jetstream(),
        }
    }

    fn start_with(kind: Kind, config: Option<super::TempDir>) -> Self {
        Self::start_full(kind, config, None)
    }

    fn start_full(
        kind: Kind,
        config: Option<super::TempDir>,
        store: Option<super::TempDir>,
    ) -> Self {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port()
        };
        let mut broker = Self {
            kind,
            port: free_port(),
            monitor_port: free_port(),
            config,
            store,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the broker at once (SIGKILL: no goodbye to its clients beyond
    /// the kernel closing their sockets).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay up, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("broker running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the broker again on the same port, without its data, and
    /// waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let (mut command, ready) = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--protected-mode", "no"]);
                (c, "Ready to accept connections")
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                if let Some(dir) = &self.config {
                    c.arg("-c").arg(dir.0.join("nats.conf"));
                }
                if let Some(store) = &self.store {
                    let _ = std::fs::remove_dir_all(&store.0);
                    std::fs::create_dir_all(&store.0).expect("make the JetStream store");
                    c.arg("-js").arg("-sd").arg(&store.0);
                }
                c.args(["-a", "127.0.0.1", "-p", &port]);
                c.args(["-m", &self.monitor_port.to_string()]);
                (c, "Server is ready")
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. The cluster tests need the Debian packages \
                     redis-server and nats-server: run scripts/test.sh, which installs them",
                    self.kind.program()
                )
            });
        // Redis logs to stdout, NATS to stderr: watch both for the ready
        // line, and keep draining them so the broker never blocks on a pipe.
        let (tx, lines) = std::sync::mpsc::channel();
        let out: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(ready) => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "{} on port {port} did not become ready:\n{}",
                    self.kind.program(),
                    seen.join("\n")
                ),
            }
        }
        self.child = Some(child);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
