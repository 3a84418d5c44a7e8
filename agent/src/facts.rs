//! What an agent learns about its machine at start: hostname, addresses, OS, kernel,
//! architecture, CPUs, memory.

use std::ffi::CStr;

use eden_proto::model::objects::{now_ms, Facts};

fn uname() -> (String, String) {
    // SAFETY: uname fills a zeroed struct of fixed-size NUL-terminated arrays.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (String::new(), String::new());
        }
        let s = |a: &[libc::c_char]| CStr::from_ptr(a.as_ptr()).to_string_lossy().into_owned();
        (s(&u.nodename), s(&u.release))
    }
}

/// Non-loopback IPv4 and IPv6 addresses of the machine's interfaces.
fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs gives a linked list we only read and then free once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                let ip: Option<std::net::IpAddr> = match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        Some(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
                    }
                    _ => None,
                };
                if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                    out.push(ip.to_string());
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The machine's hostname.
pub fn hostname() -> String {
    uname().0
}

/// Gathers the facts once; `started_at` is when the agent started.
pub fn gather(started_at: u64) -> Facts {
    let (hostname, kernel) = uname();
    Facts {
        hostname,
        addresses: addresses(),
        os: os_name(),
        kernel,
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: memory_bytes(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        seen_at: now_ms(),
        stopped_at: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gathers_this_machine() {
        let f = super::gather(1);
        assert!(!f.hostname.is_empty());
        assert!(!f.kernel.is_empty());
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
    }
}
