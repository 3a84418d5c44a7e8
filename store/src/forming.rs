//! Forming a new cluster: `eden server --bootstrap-expect N --join LIST` on N machines with the
//! same LIST (their client addresses). Until it has data, each server answers the forming call on
//! its client port ([`Forming`] is that call's state) and runs [`Forming::run`], which ends in one
//! of two outcomes: bootstrap a cluster of exactly these members (every member of it calls
//! openraft's `initialize` with the same membership, which openraft allows), or join a cluster
//! that already runs.
//!
//! Exactly one cluster forms. openraft's `initialize` on two servers with different memberships
//! makes two clusters that share a log index 0, so the members are fixed by promises before
//! anyone initializes:
//!
//! - The server with the lowest member id among those it sees (itself and the servers of LIST
//!   that are forming, once there are N) is the coordinator: it promises to itself, then asks the
//!   N - 1 others it chose for a promise to form exactly that set.
//! - A server promises to one coordinator run (its random instance id) at a time, and writes the
//!   promise to its data dir (synced) before it says yes, so a restart keeps it.
//! - With every promise, the coordinator writes the commit, tells the others (who also learn it
//!   from its answers if the message is lost), and all of them bootstrap. Without every promise it
//!   releases those it got and tries again later.
//! - A promise holds until its coordinator commits or releases it, or answers as a new run (it
//!   restarted before committing). A coordinator that cannot be reached keeps the promise: it may
//!   have committed. Waiting there is the price of never forming two clusters.
//!
//! Two sets of N servers out of LIST always share a server when N is more than half of LIST
//! (checked when the server starts), and that server promises only one of them: so two
//! coordinators can never both hold every promise. Servers that see a running cluster (a member
//! answers the forming call too) join it instead, as learners.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::client::{channel_to, Tls};
use eden_proto::forming::forming_client::FormingClient;
use eden_proto::forming::{
    CommitRequest, CommitResponse, DiscoverRequest, DiscoverResponse, PromiseRequest,
    PromiseResponse, ReleaseRequest, ReleaseResponse, Server,
};
use serde::{Deserialize, Serialize};

use crate::membership::member_id;

/// The file in the data dir that holds a promise and the commit (JSON).
pub const FORMING_FILE: &str = "forming.json";
/// How long one question to one server may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two rounds of discovery.
const ROUND: Duration = Duration::from_millis(300);

/// How forming ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bootstrap a new cluster of these members (NAME, peer address): the committed set, the same
    /// on each of them, which each initializes.
    Bootstrap(Vec<(String, String)>),
    /// The cluster runs already, with this server among its members (it was committed, then
    /// started late): start as that member of cluster `cluster_id`, without initializing (the
    /// leader replicates the membership to it).
    Member { cluster_id: u64 },
    /// A cluster that does not include this server runs already: join it through these client
    /// endpoints of its members (from LIST).
    Join(Vec<String>),
}

/// How a forming server reaches the others (gRPC in a server, memory in the simulation below).
#[tonic::async_trait]
pub trait Peers: Send + Sync {
    /// The answer of the server at `endpoint`, if it answers.
    async fn discover(&self, endpoint: &str) -> Option<DiscoverResponse>;
    async fn promise(&self, endpoint: &str, req: PromiseRequest)
        -> Result<PromiseResponse, String>;
    /// Best effort: a lost commit is learnt from the coordinator's answers.
    async fn commit(&self, endpoint: &str, req: CommitRequest);
    /// Best effort: a lost release leaves a promise the coordinator's next run voids.
    async fn release(&self, endpoint: &str, req: ReleaseRequest);
}

/// The forming call over gRPC, with the member's TLS when it has certificates.
pub struct GrpcPeers(pub Option<Tls>);

impl GrpcPeers {
    async fn client(&self, addr: &str) -> Result<FormingClient<tonic::transport::Channel>, String> {
        channel_to(addr, self.0.as_ref())
            .await
            .map(FormingClient::new)
    }
}

#[tonic::async_trait]
impl Peers for GrpcPeers {
    async fn discover(&self, endpoint: &str) -> Option<DiscoverResponse> {
        let mut c = self.client(endpoint).await.ok()?;
        tokio::time::timeout(ASK_TIMEOUT, c.discover(DiscoverRequest {}))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }

    async fn promise(
        &self,
        endpoint: &str,
        req: PromiseRequest,
    ) -> Result<PromiseResponse, String> {
        let mut c = self.client(endpoint).await?;
        tokio::time::timeout(ASK_TIMEOUT, c.promise(req))
            .await
            .map_err(|_| format!("{endpoint}: no answer"))?
            .map(|r| r.into_inner())
            .map_err(|e| format!("{endpoint}: {}", e.message()))
    }

    async fn commit(&self, endpoint: &str, req: CommitRequest) {
        if let Ok(mut c) = self.client(endpoint).await {
            let _ = tokio::time::timeout(ASK_TIMEOUT, c.commit(req)).await;
        }
    }

    async fn release(&self, endpoint: &str, req: ReleaseRequest) {
        if let Ok(mut c) = self.client(endpoint).await {
            let _ = tokio::time::timeout(ASK_TIMEOUT, c.release(req)).await;
        }
    }
}

/// What a server promised, kept in [`FORMING_FILE`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Promised {
    /// The coordinator's instance (this server's own while it coordinates).
    instance: String,
    /// The coordinator's name and peer address, to notice it restarted.
    coordinator: (String, String),
    /// The members (name, peer address, client address).
    members: Vec<(String, String, String)>,
    /// The coordinator had every promise: bootstrap these members.
    committed: bool,
    /// When this run last said yes to it (not kept: after a restart, every answer is newer).
    #[serde(skip)]
    granted_at: Option<tokio::time::Instant>,
}

/// A server's side of forming: who it is, what it promised.
pub struct Forming {
    me: Server,
    instance: String,
    expect: u32,
    path: PathBuf,
    promised: Mutex<Option<Promised>>,
    /// Woken when a commit arrives.
    committed: tokio::sync::Notify,
}

fn tuple(s: &Server) -> (String, String, String) {
    (s.name.clone(), s.peer_addr.clone(), s.client_addr.clone())
}

fn server((name, peer_addr, client_addr): &(String, String, String)) -> Server {
    Server {
        name: name.clone(),
        peer_addr: peer_addr.clone(),
        client_addr: client_addr.clone(),
    }
}

fn same_server(a: &Server, b: &Server) -> bool {
    a.name == b.name && a.peer_addr == b.peer_addr
}

impl Forming {
    /// A forming server: `me` as it advertises itself, expecting `expect` servers; a promise it
    /// made before a restart is read back from `data_dir`.
    pub fn new(me: Server, expect: u32, data_dir: &Path) -> anyhow::Result<Arc<Forming>> {
        let path = data_dir.join(FORMING_FILE);
        let mut promised: Option<Promised> = match std::fs::read(&path) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (remove it to start forming afresh)",
                    path.display()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        // Coordinating as an earlier run, uncommitted: nobody can commit that run any more.
        if promised.as_ref().is_some_and(|p| {
            !p.committed && p.coordinator == (me.name.clone(), me.peer_addr.clone())
        }) {
            promised = None;
        }
        let instance = format!("{:016x}", rand::random::<u64>());
        Ok(Arc::new(Forming {
            me,
            instance,
            expect,
            path,
            promised: Mutex::new(promised),
            committed: tokio::sync::Notify::new(),
        }))
    }

    /// Writes the promise (or its absence) to the data dir, synced, before anyone hears of it.
    fn save(&self, p: &Option<Promised>) -> std::io::Result<()> {
        use std::io::Write;
        match p {
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(p) => {
                let tmp = self.path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&serde_json::to_vec(p).expect("plain data"))?;
                f.sync_all()?;
                std::fs::rename(&tmp, &self.path)?;
                if let Some(dir) = self.path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            }
        }
    }

    fn members_of(p: &Promised) -> Vec<(String, String)> {
        p.members
            .iter()
            .map(|(n, a, _)| (n.clone(), a.clone()))
            .collect()
    }

    /// The answer to Discover.
    pub fn discover(&self) -> DiscoverResponse {
        let p = self.promised.lock().unwrap();
        DiscoverResponse {
            server: Some(self.me.clone()),
            instance: self.instance.clone(),
            expect: self.expect,
            promised_to: p.as_ref().map(|p| p.instance.clone()).unwrap_or_default(),
            members: p
                .as_ref()
                .filter(|p| p.committed)
                .map(|p| p.members.iter().map(server).collect())
                .unwrap_or_default(),
            running: false,
            cluster_id: 0,
        }
    }

    /// The answer to Promise: yes only to one coordinator run at a time, and only for a set of
    /// `expect` servers that includes this one.
    pub fn promise(&self, req: PromiseRequest) -> PromiseResponse {
        let no = |reason: String| PromiseResponse {
            granted: false,
            reason,
        };
        let Some(coordinator) = req.coordinator else {
            return no("no coordinator named".into());
        };
        if req.expect != self.expect {
            return no(format!(
                "{} expects {} servers, {} expects {}",
                self.me.name, self.expect, coordinator.name, req.expect
            ));
        }
        if req.members.len() != self.expect as usize
            || !req.members.iter().any(|m| same_server(m, &self.me))
        {
            return no(format!(
                "{} is not one of the {} servers asked for",
                self.me.name, self.expect
            ));
        }
        let mut guard = self.promised.lock().unwrap();
        let p = &mut *guard;
        let want = Promised {
            instance: req.instance.clone(),
            coordinator: (coordinator.name.clone(), coordinator.peer_addr.clone()),
            members: req.members.iter().map(tuple).collect(),
            committed: false,
            granted_at: Some(tokio::time::Instant::now()),
        };
        match p {
            Some(held) if held.instance != req.instance => {
                return no(format!(
                    "{} promised {} first",
                    self.me.name, held.coordinator.0
                ))
            }
            Some(held) if held.members != want.members => {
                return no(format!("{} promised other members", self.me.name))
            }
            Some(held) => held.granted_at = want.granted_at,
            None => {
                let next = Some(want);
                if let Err(e) = self.save(&next) {
                    return no(format!("{}: {e}", self.path.display()));
                }
                tracing::info!(coordinator = %coordinator.name, members = ?Self::members_of(next.as_ref().unwrap()), "promised to form a cluster");
                *p = next;
            }
        }
        PromiseResponse {
            granted: true,
            reason: String::new(),
        }
    }

    /// The answer to Commit: the promise it fulfils becomes this server's decision.
    pub fn commit(&self, req: CommitRequest) -> CommitResponse {
        let mut p = self.promised.lock().unwrap();
        if let Some(held) = &*p {
            let members: Vec<_> = req.members.iter().map(tuple).collect();
            if held.instance == req.instance && held.members == members && !held.committed {
                let next = Some(Promised {
                    committed: true,
                    ..held.clone()
                });
                match self.save(&next) {
                    Ok(()) => {
                        *p = next;
                        self.committed.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not record the commit"),
                }
            }
        }
        CommitResponse {}
    }

    /// The answer to Release: a promise to that run is void.
    pub fn release(&self, req: ReleaseRequest) -> ReleaseResponse {
        let mut p = self.promised.lock().unwrap();
        if p.as_ref()
            .is_some_and(|h| h.instance == req.instance && !h.committed)
        {
            match self.save(&None) {
                Ok(()) => *p = None,
                Err(e) => tracing::warn!(error = %e, "could not release a promise"),
            }
        }
        ReleaseResponse {}
    }

    fn committed_members(&self) -> Option<Vec<(String, String)>> {
        self.promised
            .lock()
            .unwrap()
            .as_ref()
            .filter(|p| p.committed)
            .map(Self::members_of)
    }

    /// Discovers the servers of `endpoints` until the cluster forms or turns out to run already.
    pub async fn run(self: &Arc<Self>, endpoints: &[String], peers: &dyn Peers) -> Outcome {
        let mut said = String::new();
        loop {
            if let Some(m) = self.committed_members() {
                return Outcome::Bootstrap(m);
            }
            let asked_at = tokio::time::Instant::now();
            let answers = futures::future::join_all(
                endpoints
                    .iter()
                    .map(|ep| async move { Some((ep.clone(), peers.discover(ep).await?)) }),
            )
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
            match self.round(&answers, asked_at, peers).await {
                Ok(outcome) => return outcome,
                Err(why) => {
                    if why != said {
                        tracing::info!("forming: {why}");
                        said = why;
                    }
                }
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 200);
            tokio::select! {
                _ = tokio::time::sleep(ROUND + jitter) => {}
                _ = self.committed.notified() => {}
            }
        }
    }

    /// One round: what the answers say to do, or why this server waits.
    async fn round(
        self: &Arc<Self>,
        answers: &[(String, DiscoverResponse)],
        asked_at: tokio::time::Instant,
        peers: &dyn Peers,
    ) -> Result<Outcome, String> {
        let others: Vec<&DiscoverResponse> = answers
            .iter()
            .map(|(_, a)| a)
            .filter(|a| a.instance != self.instance && a.server.is_some())
            .collect();
        // A cluster runs or has been committed: be one of its members, or join it.
        for a in &others {
            if a.running || !a.members.is_empty() {
                if a.members.iter().any(|m| same_server(m, &self.me)) {
                    if a.running {
                        return Ok(Outcome::Member {
                            cluster_id: a.cluster_id,
                        });
                    }
                    return Ok(Outcome::Bootstrap(
                        a.members
                            .iter()
                            .map(|m| (m.name.clone(), m.peer_addr.clone()))
                            .collect(),
                    ));
                }
                if a.running {
                    return Ok(Outcome::Join(
                        answers
                            .iter()
                            .filter(|(_, a)| a.running)
                            .map(|(ep, _)| ep.clone())
                            .collect(),
                    ));
                }
                return Err(format!(
                    "{} bootstraps a cluster without this server; waiting for it to run",
                    a.server.as_ref().unwrap().name
                ));
            }
        }
        // Promised to another run: wait for its commit, or its release.
        let held = self.promised.lock().unwrap().clone();
        if let Some(h) = held.filter(|h| h.instance != self.instance) {
            let restarted = others.iter().any(|a| {
                let s = a.server.as_ref().unwrap();
                (s.name.clone(), s.peer_addr.clone()) == h.coordinator && a.instance != h.instance
            });
            if restarted {
                self.release(ReleaseRequest {
                    instance: h.instance.clone(),
                });
                return Err(format!(
                    "{} restarted before it committed; its promise is void",
                    h.coordinator.0
                ));
            }
            // The coordinator, asked after this server last said yes, neither coordinates nor
            // committed: the attempt that had the yes failed (its release was lost), and a new
            // attempt asks again. Without this, a coordinator that is no longer the lowest would
            // leave the promise held for ever.
            let idle = others.iter().any(|a| {
                a.instance == h.instance
                    && !a.running
                    && a.members.is_empty()
                    && a.promised_to != h.instance
            });
            if idle && h.granted_at.is_none_or(|g| g < asked_at) {
                self.release(ReleaseRequest {
                    instance: h.instance.clone(),
                });
                return Err(format!(
                    "{} stopped coordinating without a commit; its promise is void",
                    h.coordinator.0
                ));
            }
            return Err(format!(
                "promised to {}; waiting for its commit",
                h.coordinator.0
            ));
        }
        // Who is forming, by member id.
        let mut forming: BTreeMap<u64, Server> = BTreeMap::new();
        forming.insert(member_id(&self.me.name), self.me.clone());
        for a in &others {
            let s = a.server.clone().unwrap();
            if a.expect != self.expect {
                return Err(format!(
                    "{} expects {} servers, this one {}: give every server the same \
                     --bootstrap-expect",
                    s.name, a.expect, self.expect
                ));
            }
            let id = member_id(&s.name);
            if let Some(prev) = forming.get(&id) {
                if !same_server(prev, &s) {
                    return Err(format!(
                        "two servers are named {} ({} and {}): every server needs its own --name",
                        s.name, prev.peer_addr, s.peer_addr
                    ));
                }
            }
            forming.insert(id, s);
        }
        if forming.len() < self.expect as usize {
            return Err(format!(
                "{} of {} servers found",
                forming.len(),
                self.expect
            ));
        }
        let lowest = forming.keys().next().copied();
        if lowest != Some(member_id(&self.me.name)) {
            return Err(format!(
                "{} servers found; {} coordinates",
                forming.len(),
                forming.values().next().unwrap().name
            ));
        }
        let members: Vec<Server> = forming.into_values().take(self.expect as usize).collect();
        self.coordinate(members, peers).await
    }

    /// Asks every other member for its promise; with all of them, commits.
    async fn coordinate(
        self: &Arc<Self>,
        members: Vec<Server>,
        peers: &dyn Peers,
    ) -> Result<Outcome, String> {
        let req = PromiseRequest {
            coordinator: Some(self.me.clone()),
            instance: self.instance.clone(),
            expect: self.expect,
            members: members.clone(),
        };
        let own = self.promise(req.clone());
        if !own.granted {
            return Err(own.reason);
        }
        let others: Vec<&Server> = members
            .iter()
            .filter(|m| !same_server(m, &self.me))
            .collect();
        let answers = futures::future::join_all(
            others
                .iter()
                .map(|m| peers.promise(&m.client_addr, req.clone())),
        )
        .await;
        let refused: Vec<String> = answers
            .iter()
            .filter_map(|a| match a {
                Ok(r) if r.granted => None,
                Ok(r) => Some(r.reason.clone()),
                Err(e) => Some(e.clone()),
            })
            .collect();
        if !refused.is_empty() {
            let release = ReleaseRequest {
                instance: self.instance.clone(),
            };
            futures::future::join_all(
                others
                    .iter()
                    .map(|m| peers.release(&m.client_addr, release.clone())),
            )
            .await;
            self.release(release);
            // Another coordinator may be asking the same servers: step aside for a while.
            let pause = Duration::from_millis(200 + rand::random::<u64>() % 800);
            tokio::time::sleep(pause).await;
            return Err(format!("not every promise: {}", refused.join("; ")));
        }
        let commit = CommitRequest {
            instance: self.instance.clone(),
            members: members.clone(),
        };
        self.commit(commit.clone());
        let Some(decided) = self.committed_members() else {
            return Err("could not record the commit".into());
        };
        tracing::info!(members = ?decided, "every server promised: forming the cluster");
        // Best effort: a member that misses it learns the commit from this server's answers.
        futures::future::join_all(
            others
                .iter()
                .map(|m| peers.commit(&m.client_addr, commit.clone())),
        )
        .await;
        Ok(Outcome::Bootstrap(decided))
    }
}

/// Checks that two clusters cannot form from `endpoints` (this server's own address among them
/// or not): `expect` must be more than half of the servers they name.
pub fn check_expect(
    expect: u32,
    endpoints: &[String],
    own_client_addr: &str,
) -> Result<(), String> {
    let bare = |e: &str| {
        e.trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string()
    };
    let mut servers: Vec<String> = endpoints.iter().map(|e| bare(e)).collect();
    servers.push(bare(own_client_addr));
    servers.sort();
    servers.dedup();
    let n = servers.len() as u32;
    if expect == 0 {
        return Err("--bootstrap-expect must be at least 1".into());
    }
    if expect > n {
        return Err(format!(
            "--bootstrap-expect {expect} but --join names {n} server(s), this one included"
        ));
    }
    if expect * 2 <= n {
        return Err(format!(
            "--bootstrap-expect {expect} with {n} servers in --join (this one included) could \
             form two clusters: give at least {}",
            n / 2 + 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Server {
        Server {
            name: name.into(),
            peer_addr: format!("{name}:2380"),
            client_addr: format!("{name}:2379"),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("eden-forming-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ask(coord: &Forming, members: &[Server]) -> PromiseRequest {
        PromiseRequest {
            coordinator: Some(coord.me.clone()),
            instance: coord.instance.clone(),
            expect: coord.expect,
            members: members.to_vec(),
        }
    }

    #[test]
    fn one_promise_at_a_time_and_it_survives_a_restart() {
        let d = dir("promise");
        let (a, b, c) = (s("a"), s("b"), s("c"));
        let fa = Forming::new(a.clone(), 2, &dir("pa")).unwrap();
        let fc = Forming::new(c.clone(), 2, &dir("pc")).unwrap();
        let fb = Forming::new(b.clone(), 2, &d).unwrap();
        assert!(fb.promise(ask(&fa, &[a.clone(), b.clone()])).granted);
        // Asked again by the same run: still yes; by another coordinator: no.
        assert!(fb.promise(ask(&fa, &[a.clone(), b.clone()])).granted);
        let r = fb.promise(ask(&fc, &[b.clone(), c.clone()]));
        assert!(!r.granted && r.reason.contains("promised a first"), "{r:?}");
        // Restarted: the promise is read back and still refuses c.
        drop(fb);
        let fb = Forming::new(b.clone(), 2, &d).unwrap();
        assert!(!fb.promise(ask(&fc, &[b.clone(), c.clone()])).granted);
        assert_eq!(fb.discover().promised_to, fa.instance);
        // Released by a: c may have it.
        fb.release(ReleaseRequest {
            instance: fa.instance.clone(),
        });
        assert!(fb.promise(ask(&fc, &[b.clone(), c.clone()])).granted);
        // Committed: the members are decided, also after a restart, and nobody else gets it.
        fb.commit(CommitRequest {
            instance: fc.instance.clone(),
            members: vec![b.clone(), c.clone()],
        });
        drop(fb);
        let fb = Forming::new(b.clone(), 2, &d).unwrap();
        assert_eq!(
            fb.committed_members(),
            Some(vec![
                ("b".to_string(), "b:2380".to_string()),
                ("c".to_string(), "c:2380".to_string())
            ])
        );
        assert!(!fb.promise(ask(&fa, &[a.clone(), b.clone()])).granted);
        fb.release(ReleaseRequest {
            instance: fc.instance.clone(),
        });
        assert!(
            fb.committed_members().is_some(),
            "a commit is never released"
        );
    }

    #[test]
    fn refuses_sets_it_is_not_in_or_of_another_size() {
        let (a, b, c) = (s("a"), s("b"), s("c"));
        let fa = Forming::new(a.clone(), 2, &dir("ra")).unwrap();
        let fb = Forming::new(b.clone(), 2, &dir("rb")).unwrap();
        assert!(!fb.promise(ask(&fa, &[a.clone(), c.clone()])).granted);
        assert!(
            !fb.promise(ask(&fa, &[a.clone(), b.clone(), c.clone()]))
                .granted
        );
        let f3 = Forming::new(a.clone(), 3, &dir("r3")).unwrap();
        assert!(!fb.promise(ask(&f3, &[a.clone(), b.clone()])).granted);
    }

    #[test]
    fn an_uncommitted_coordination_of_an_earlier_run_is_dropped() {
        let d = dir("own");
        let (a, b) = (s("a"), s("b"));
        let fa = Forming::new(a.clone(), 2, &d).unwrap();
        assert!(fa.promise(ask(&fa, &[a.clone(), b.clone()])).granted);
        drop(fa);
        let fa = Forming::new(a.clone(), 2, &d).unwrap();
        assert_eq!(fa.discover().promised_to, "");
    }

    /// One endpoint of the simulated world.
    enum Sim {
        Down,
        Forming(Arc<Forming>),
        Running {
            members: Vec<Server>,
            cluster_id: u64,
        },
    }

    /// Servers in memory, messages lost at random (a request before it arrives, or its answer
    /// after it was handled).
    struct World {
        servers: Mutex<BTreeMap<String, Sim>>,
        rng: Mutex<rand::rngs::StdRng>,
        loss: f64,
    }

    impl World {
        /// Messages take 1 to 150 ms: coordinators' rounds overlap.
        fn delay(&self) -> Duration {
            use rand::Rng;
            Duration::from_millis(self.rng.lock().unwrap().gen_range(1..150))
        }
        fn lost(&self) -> bool {
            use rand::Rng;
            self.rng.lock().unwrap().gen_bool(self.loss)
        }
        fn forming(&self, ep: &str) -> Option<Arc<Forming>> {
            match self.servers.lock().unwrap().get(ep) {
                Some(Sim::Forming(f)) => Some(f.clone()),
                _ => None,
            }
        }
    }

    #[tonic::async_trait]
    impl Peers for World {
        async fn discover(&self, ep: &str) -> Option<DiscoverResponse> {
            tokio::time::sleep(self.delay()).await;
            if self.lost() {
                return None;
            }
            match self.servers.lock().unwrap().get(ep)? {
                Sim::Down => None,
                Sim::Forming(f) => Some(f.discover()),
                Sim::Running {
                    members,
                    cluster_id,
                } => Some(DiscoverResponse {
                    server: members.iter().find(|m| m.client_addr == ep).cloned(),
                    instance: format!("member-{ep}"),
                    members: members.clone(),
                    running: true,
                    cluster_id: *cluster_id,
                    ..Default::default()
                }),
            }
        }
        async fn promise(&self, ep: &str, req: PromiseRequest) -> Result<PromiseResponse, String> {
            tokio::time::sleep(self.delay()).await;
            if self.lost() {
                return Err("lost".into());
            }
            let r = match self.servers.lock().unwrap().get(ep) {
                Some(Sim::Forming(f)) => f.promise(req),
                Some(Sim::Running { .. }) => PromiseResponse::default(),
                _ => return Err("down".into()),
            };
            tokio::time::sleep(self.delay()).await;
            if self.lost() {
                return Err("answer lost".into());
            }
            Ok(r)
        }
        async fn commit(&self, ep: &str, req: CommitRequest) {
            tokio::time::sleep(self.delay()).await;
            if let (false, Some(f)) = (self.lost(), self.forming(ep)) {
                f.commit(req);
            }
        }
        async fn release(&self, ep: &str, req: ReleaseRequest) {
            tokio::time::sleep(self.delay()).await;
            if let (false, Some(f)) = (self.lost(), self.forming(ep)) {
                f.release(req);
            }
        }
    }

    /// One server's view of the world: some servers it cannot discover for a while (the others
    /// can; its promises and commits still get through), so that two coordinators may each
    /// believe they are the lowest.
    struct Eyes {
        world: Arc<World>,
        blind: Vec<String>,
        until: tokio::time::Instant,
    }

    #[tonic::async_trait]
    impl Peers for Eyes {
        async fn discover(&self, ep: &str) -> Option<DiscoverResponse> {
            if tokio::time::Instant::now() < self.until && self.blind.iter().any(|b| b == ep) {
                tokio::time::sleep(self.world.delay()).await;
                return None;
            }
            self.world.discover(ep).await
        }
        async fn promise(&self, ep: &str, req: PromiseRequest) -> Result<PromiseResponse, String> {
            self.world.promise(ep, req).await
        }
        async fn commit(&self, ep: &str, req: CommitRequest) {
            self.world.commit(ep, req).await
        }
        async fn release(&self, ep: &str, req: ReleaseRequest) {
            self.world.release(ep, req).await
        }
    }

    fn cluster_id_of(members: &[Server]) -> u64 {
        let mut names: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_addr))
            .collect();
        names.sort();
        member_id(&names.join(","))
    }

    /// One simulated run: `n` servers listing each other, expecting `expect`, started at random
    /// times, some crashing (and restarting) while they form, messages lost at random. Returns
    /// every set a server bootstrapped with, and the cluster each server ended in.
    async fn simulate(seed: u64, n: usize, expect: u32) -> (Vec<Vec<String>>, Vec<u64>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let world = Arc::new(World {
            servers: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed)),
            loss: rng.gen_range(0.0..0.3),
        });
        let base = if std::path::Path::new("/dev/shm").exists() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
        .join(format!("eden-forming-sim-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let eps: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let bootstrapped = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (world, eps, bootstrapped) = (world.clone(), eps.clone(), bootstrapped.clone());
            let me = Server {
                name: format!("n{i}"),
                peer_addr: format!("s{i}:2380"),
                client_addr: eps[i].clone(),
            };
            let dir = base.join(&eps[i]);
            std::fs::create_dir_all(&dir).unwrap();
            let start = Duration::from_millis(rng.gen_range(0..2_000));
            // Some servers crash once while they form, and start again a little later.
            let crash = rng.gen_bool(0.3).then(|| {
                (
                    Duration::from_millis(rng.gen_range(0..2_000)),
                    Duration::from_millis(rng.gen_range(0..3_000)),
                )
            });
            let eyes = Eyes {
                world: world.clone(),
                blind: eps
                    .iter()
                    .filter(|e| **e != eps[i] && rng.gen_bool(0.3))
                    .cloned()
                    .collect(),
                until: tokio::time::Instant::now()
                    + Duration::from_millis(rng.gen_range(0..10_000)),
            };
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                let mut crash = crash;
                let outcome = loop {
                    let f = Forming::new(me.clone(), expect, &dir).unwrap();
                    world.servers.lock().unwrap().insert(me.client_addr.clone(), Sim::Forming(f.clone()));
                    let run = f.run(&eps, &eyes);
                    match crash.take() {
                        None => break run.await,
                        Some((after, down)) => tokio::select! {
                            o = run => break o,
                            _ = tokio::time::sleep(after) => {
                                world.servers.lock().unwrap().insert(me.client_addr.clone(), Sim::Down);
                                drop(f);
                                tokio::time::sleep(down).await;
                            }
                        },
                    }
                };
                let (members, cluster_id) = match outcome {
                    Outcome::Bootstrap(m) => {
                        let members: Vec<Server> = m
                            .iter()
                            .map(|(name, peer)| Server {
                                name: name.clone(),
                                peer_addr: peer.clone(),
                                client_addr: peer.trim_end_matches(":2380").to_string(),
                            })
                            .collect();
                        let mut names: Vec<String> = m.iter().map(|(n, _)| n.clone()).collect();
                        names.sort();
                        bootstrapped.lock().unwrap().push(names);
                        let id = cluster_id_of(&members);
                        (members, id)
                    }
                    Outcome::Member { cluster_id } => {
                        let servers = world.servers.lock().unwrap();
                        let members = servers
                            .values()
                            .find_map(|s| match s {
                                Sim::Running { members, cluster_id: c } if *c == cluster_id => Some(members.clone()),
                                _ => None,
                            })
                            .expect("a running member answered");
                        (members, cluster_id)
                    }
                    Outcome::Join(through) => {
                        let servers = world.servers.lock().unwrap();
                        let (mut members, id) = through
                            .iter()
                            .find_map(|ep| match servers.get(ep) {
                                Some(Sim::Running { members, cluster_id }) => Some((members.clone(), *cluster_id)),
                                _ => None,
                            })
                            .expect("joined through a running member");
                        members.push(me.clone());
                        (members, id)
                    }
                };
                let mut servers = world.servers.lock().unwrap();
                // Members learn of a joiner (the leader replicates it).
                for s in servers.values_mut() {
                    if let Sim::Running { members: m, cluster_id: c } = s {
                        if *c == cluster_id && !m.iter().any(|x| same_server(x, &me)) {
                            m.push(me.clone());
                        }
                    }
                }
                servers.insert(me.client_addr.clone(), Sim::Running { members, cluster_id });
                cluster_id
            }));
        }
        let mut ended = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(600), t).await {
                Ok(id) => ended.push(id.unwrap()),
                Err(_) => {
                    let states: Vec<String> = world
                        .servers
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(ep, s)| match s {
                            Sim::Down => format!("{ep}: down"),
                            Sim::Forming(f) => format!(
                                "{ep}: forming {:?} {:?}",
                                f.instance,
                                f.promised.lock().unwrap()
                            ),
                            Sim::Running { members, .. } => format!(
                                "{ep}: running {:?}",
                                members.iter().map(|m| &m.name).collect::<Vec<_>>()
                            ),
                        })
                        .collect();
                    panic!("seed {seed} (n {n}, expect {expect}): a server never ended forming: {states:#?}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        let b = bootstrapped.lock().unwrap().clone();
        (b, ended)
    }

    /// The property forming exists for, over many simulated runs: every server that bootstraps
    /// does so with the same members (one cluster), and every server ends in that one cluster.
    #[tokio::test(start_paused = true)]
    async fn simulated_servers_always_form_exactly_one_cluster() {
        let runs: u64 = std::env::var("EDEN_FORMING_SIM_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let first: u64 = std::env::var("EDEN_FORMING_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::random::<u32>() as u64);
        for seed in first..first + runs {
            let n = 3 + (seed % 3) as usize; // 3, 4 or 5 servers
            let expect = (n / 2 + 1 + (seed / 3 % 2) as usize).min(n) as u32;
            let (sets, clusters) = simulate(seed, n, expect).await;
            assert!(!sets.is_empty(), "seed {seed}: nobody bootstrapped");
            assert!(
                sets.iter().all(|s| s == &sets[0] && s.len() == expect as usize),
                "seed {seed} (n {n}, expect {expect}): bootstrapped with different members: {sets:?}"
            );
            assert!(
                clusters.iter().all(|c| *c == clusters[0]),
                "seed {seed} (n {n}, expect {expect}): servers ended in different clusters: {clusters:?}"
            );
        }
    }

    #[test]
    fn expect_must_be_a_majority_of_the_list() {
        let list: Vec<String> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(check_expect(3, &list, "a:1").is_ok());
        assert!(check_expect(2, &list, "http://a:1").is_ok());
        assert!(check_expect(1, &list, "a:1").is_err());
        assert!(check_expect(4, &list, "a:1").is_err());
        assert!(
            check_expect(2, &list, "d:1").is_err(),
            "four servers: two could form twice"
        );
        assert!(check_expect(0, &list, "a:1").is_err());
        assert!(check_expect(1, &[], "a:1").is_ok());
    }
}
