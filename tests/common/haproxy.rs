//! HAProxy (Debian's haproxy package) as the HTTP load balancer in front of
//! several gateway nodes' APIs, stopped when dropped.

use std::process::{Child, Command, Stdio};

use super::{wait_until_bound, write, Gateway};

pub struct HaProxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HaProxy {
    /// HAProxy on 127.0.0.1:`port` balancing round robin over `nodes`
    /// (name, gateway), each probed on its admin port's `/readyz` twice a
    /// second: one failure takes a node out, one success brings it back.
    pub fn start(port: u16, nodes: &[(&str, &Gateway)]) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 40s\n  timeout server 40s\n\
             frontend api\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
             backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n"
        );
        for (name, gw) in nodes {
            config.push_str(&format!(
                "  server {name} {} check port {} inter 500ms fall 1 rise 1\n",
                gw.http,
                gw.admin.port()
            ));
        }
        let path = write(dir.path(), "haproxy.cfg", &config);
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (the test command installs it)");
        wait_until_bound(port, true);
        HaProxy { child, _dir: dir }
    }
}
