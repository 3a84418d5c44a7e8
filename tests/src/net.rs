//! Network partitions between members, in user space: a TCP proxy in front of each member's peer
//! port.
//!
//! Each member listens on its own loopback IP (127.0.0.2, 127.0.0.3, ...) with
//! `--listen-peer-addr`, and its outgoing peer connections leave from that IP; the address it
//! advertises (`--peer-addr`) is its proxy on 127.0.0.1. So a proxy knows which member every
//! connection comes from, and [`PeerNet::block`] can cut one direction of one link: the
//! connections already open stop carrying bytes (a black hole, not a reset) and new ones are
//! accepted but never forwarded. When the link heals, those connections are closed and new ones
//! flow again. Client ports are not proxied.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Links = HashSet<(usize, usize)>;

pub struct PeerNet {
    /// Cut links as (from, to) member indexes.
    blocked: watch::Sender<Links>,
    /// Which member a connection's source IP belongs to.
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    proxies: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for PeerNet {
    fn default() -> Self {
        PeerNet {
            blocked: watch::channel(Links::new()).0,
            sources: Arc::default(),
            proxies: Mutex::default(),
        }
    }
}

impl PeerNet {
    /// The loopback IP member `i` listens on and connects from.
    pub fn ip_of(i: usize) -> IpAddr {
        assert!(i < 250, "too many members for 127.0.0.x");
        IpAddr::from([127, 0, 0, i as u8 + 2])
    }

    /// Starts the proxy for member `i`, whose peer port listens on `target`; returns the address
    /// to advertise (the proxy's). Must be called inside a tokio runtime.
    pub fn add_member(&self, i: usize, target: SocketAddr) -> String {
        self.sources.lock().unwrap().insert(Self::ip_of(i), i);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr").to_string();
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let (blocked, sources) = (self.blocked.clone(), self.sources.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, from)) = listener.accept().await {
                let source = sources.lock().unwrap().get(&from.ip()).copied();
                tokio::spawn(forward(
                    inbound,
                    source.map(|s| (s, i)),
                    target,
                    blocked.subscribe(),
                ));
            }
        });
        self.proxies.lock().unwrap().push(task);
        addr
    }

    /// Cuts the link from member `from` to member `to` (one direction).
    pub fn block(&self, from: usize, to: usize) {
        self.blocked.send_modify(|b| {
            b.insert((from, to));
        });
    }

    /// Cuts member `i` off from every other member of `0..n`, both ways.
    pub fn isolate(&self, i: usize, n: usize) {
        self.blocked.send_modify(|b| {
            for j in (0..n).filter(|j| *j != i) {
                b.insert((i, j));
                b.insert((j, i));
            }
        });
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.blocked.send_modify(|b| b.clear());
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        for t in self.proxies.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Carries one connection on `link` (None: from an unknown source, never cut) while the link
/// works.
async fn forward(
    mut inbound: TcpStream,
    link: Option<(usize, usize)>,
    target: SocketAddr,
    mut blocked: watch::Receiver<Links>,
) {
    let cut = move |b: &Links| link.is_some_and(|l| b.contains(&l));
    if cut(&blocked.borrow()) {
        // Accepted but never forwarded; closed once the link heals.
        let _ = blocked.wait_for(|b| !cut(b)).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let severed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = blocked.wait_for(|b| cut(b)) => true,
    };
    if severed {
        // Nothing flows any more (the copy is no longer polled); closed once it heals.
        let _ = blocked.wait_for(|b| !cut(b)).await;
    }
}
