//! Test "hosts": network namespaces, each with an address of its own on a bridge in the root
//! namespace (one veth pair per host), so processes in them share no loopback and no ports,
//! and reach the root namespace's services (PostgreSQL, the object store) only over the
//! bridge. A host's link can be cut and restored (`ip link set ... down`). Needs root; every
//! name carries this process's id, and everything is deleted on drop.

use std::process::Command;

/// The bridge and its hosts.
pub struct Net {
    bridge: String,
    /// The first three octets of the subnet (`10.x.y`).
    subnet: String,
    pub hosts: Vec<Host>,
}

/// One namespace.
pub struct Host {
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The root side of its veth pair (cut to isolate the host).
    veth: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2) runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Net {
    /// A bridge (the gateway address `.1`) and `hosts` namespaces on it (`.11`, `.12`, ...).
    pub fn create(hosts: usize) -> Self {
        let pid = std::process::id();
        let subnet = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250);
        let bridge = format!("exbr{}", pid % 1_000_000);
        let _ = Command::new("ip").args(["link", "del", &bridge]).output(); // a leftover of a crashed run
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut net = Self { bridge, subnet, hosts: Vec::new() };
        for i in 0..hosts {
            let ns = format!("exd{pid}-{i}");
            let veth = format!("exv{}x{i}", pid % 1_000_000);
            let addr = format!("{}.{}", net.subnet, 11 + i);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            net.hosts.push(Host { ns, ip: addr, veth });
        }
        net
    }

    /// The root namespace's address on the bridge (where the hosts reach its services).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Cuts host `i` off the network (its packets go nowhere; connections hang).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].veth, "down"]);
    }

    /// Restores host `i`'s link.
    pub fn restore(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].veth, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}
