//! The pure-proxy floor: nginx `proxy_pass` in front of the same mock, measured in the same run.
//!
//! A gateway that governs nothing cannot do less work than nginx forwarding a request over a
//! kept-alive upstream connection, so nginx's CPU per request is the yardstick the passthrough
//! targets are expressed in (issue 10: tollgate's CPU per request at most 3x nginx's). nginx is
//! optional: when no `nginx` binary is found the scenario is measured without it and the report
//! says so (`scripts/bench` installs it with apt).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::gateway::read_cpu_time;

/// Where nginx is looked for when it is not on `PATH` (Debian installs it in `/usr/sbin`).
const CANDIDATES: &[&str] = &["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"];

/// A running nginx (master and workers) proxying to the mock.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The nginx binary, if one is installed.
pub fn locate() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("NGINX_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The configuration: as many workers as CPUs (nginx's own recommendation), no access log,
/// HTTP/1.1 keep-alive to the upstream, responses streamed (`proxy_buffering off`), so it does
/// what tollgate's passthrough does minus the governance.
fn config(listen: SocketAddr, upstream: SocketAddr, prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        r#"worker_processes auto;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen {listen};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts nginx in front of `upstream`; `Ok(None)` when nginx is not installed.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Option<Self>> {
        let Some(bin) = locate() else {
            return Ok(None);
        };
        let dir = tempfile::tempdir().context("cannot create nginx's temp dir")?;
        // A free port: bind, read, release (nginx binds it a moment later).
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for nginx")?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(listen, upstream, dir.path()))
            .context("cannot write nginx.conf")?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let nginx = Self {
            child,
            addr: listen,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"))
                    .unwrap_or_default();
                anyhow::bail!("nginx did not start listening on {listen} within 10 s: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(nginx))
    }

    /// CPU time (user + system) of the master and its workers so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let mut total = read_cpu_time(master)?;
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            total += read_cpu_time(pid).unwrap_or_default();
        }
        Some(total)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; the workers follow their master.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_proxies_to_the_upstream_with_keepalive() {
        let conf = config(
            "127.0.0.1:9000".parse().unwrap(),
            "127.0.0.1:9001".parse().unwrap(),
            Path::new("/tmp/x"),
        );
        assert!(conf.contains("listen 127.0.0.1:9000;"));
        assert!(conf.contains("server 127.0.0.1:9001;"));
        assert!(conf.contains("keepalive 256;"));
        assert!(conf.contains("proxy_set_header Connection \"\";"));
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
    }
}
