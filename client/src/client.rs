//! The client: nodes on a rendezvous ring, typed operations, failover.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sessiond_proto::ErrorCode;
use sessiond_proto::wire::{
    MAX_FRAME_BYTES_CAP, NodeStats, Op, Outcome, Placement, RESEND_WINDOW, SessionRecord, WriteTag,
};
use sessiond_proto::{SessionId, UserName, ring};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::connection::{CallError, ConnectOptions};
use crate::node::Node;
use crate::{Error, Session, SessionInfo};

/// How many times a write whose outcome is unknown goes round the nodes
/// before the call ends with [`Error::Indeterminate`].
const TAGGED_WRITE_ROUNDS: usize = 2;

/// Configures and builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<String>,
    auth_token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    update_retries: u32,
    max_frame_bytes: usize,
    fall: u32,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            auth_token: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            update_retries: 64,
            max_frame_bytes: MAX_FRAME_BYTES_CAP,
            fall: 3,
        }
    }
}

impl ClientBuilder {
    /// The store nodes' binary-protocol addresses (`host:port`). Every
    /// client of one deployment must list the same nodes so they agree on
    /// which node owns which session; the order does not matter.
    pub fn nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// The token the servers were started with (`--auth-token`).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// How long one attempt waits for its node's answer (default 2 s). A
    /// call that fails over makes one attempt per node; a write whose
    /// answer was lost, up to two per node (the crate's "Write guarantees";
    /// without Redis, a node that lost it is asked again at once: up to
    /// three per node, and four for a write to its session's one node), so
    /// it may take up to three times the nodes times this (at least four
    /// times this), plus the [`connect_timeout`](Self::connect_timeout) of
    /// each connection it opens on the way.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long opening a connection may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often [`Client::update`] retries after a version conflict
    /// (default 64).
    pub fn update_retries(mut self, retries: u32) -> Self {
        self.update_retries = retries;
        self
    }

    /// How many calls in a row to a node must time out before the client
    /// takes the node out of rotation for every caller (default 3). A
    /// refused or broken connection takes it out at once; a node out of
    /// rotation is probed in the background (after 50 ms, doubling up to
    /// 2 s) and comes back when it answers.
    pub fn fall(mut self, timeouts: u32) -> Self {
        self.fall = timeouts.max(1);
        self
    }

    /// The largest frame the client reads (default: the protocol's 64 MiB
    /// ceiling; what it sends is bounded by the server's limit). A larger
    /// answer is dropped unread and fails its own call alone with
    /// [`Error::TooLarge`](crate::Error::TooLarge) (a write it answers was
    /// applied); the other calls on the connection go on.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Connects to every node. Succeeds when at least one node answers;
    /// the others are probed in the background until they do. Fails at once
    /// on a wrong token or protocol version.
    pub async fn build(self) -> Result<Client, Error> {
        let mut names = self.nodes.clone();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(Error::Config("no nodes given".into()));
        }
        let seeds: Vec<u64> = names.iter().map(|name| ring::node_seed(name)).collect();
        let options = Arc::new(ConnectOptions {
            auth_token: self.auth_token.clone(),
            connect_timeout: self.connect_timeout,
            max_frame_bytes: self.max_frame_bytes,
        });
        let stop_probes = CancellationToken::new();
        // Dropped on every early return below: no probe outlives a failed build.
        let stop_probes_guard = stop_probes.clone().drop_guard();
        let nodes: Vec<Arc<Node>> = names
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let placement = Placement {
                    ring: seeds.clone(),
                    owner: index as u32,
                };
                Arc::new(Node::new(
                    name,
                    placement,
                    options.clone(),
                    self.fall,
                    stop_probes.clone(),
                ))
            })
            .collect();
        let attempts =
            futures_util::future::join_all(nodes.iter().map(|node| node.connection())).await;
        let mut last_error = None;
        for attempt in attempts {
            match attempt {
                Ok(_) => last_error = None,
                Err(err @ (Error::Unauthorized(_) | Error::Protocol(_))) => return Err(err),
                Err(err) => last_error = last_error.or(Some(err)),
            }
        }
        if !nodes.iter().any(|node| node.is_up()) {
            return Err(last_error.unwrap_or_else(|| Error::Unavailable("no node answered".into())));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                seeds,
                timeout: self.timeout,
                update_retries: self.update_retries,
                _stop_probes: stop_probes_guard,
            }),
        })
    }
}

/// A sessiond client: cheap to clone, safe to share between tasks.
///
/// Each session is owned by one node, chosen by rendezvous hashing of its
/// id over the node list; calls go to the owner and fail over to the next
/// node in the session's order when the owner is down. New sessions are
/// spread evenly, each created on the node that will own it.
///
/// Without Redis replication on the servers, a node's sessions live only
/// in its memory: when it dies they are gone, and failover only keeps new
/// sessions and other nodes' sessions working. With `--redis`, every node
/// can serve every session and failover loses nothing.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Arc<Node>>,
    seeds: Vec<u64>,
    timeout: Duration,
    update_retries: u32,
    _stop_probes: DropGuard,
}

impl Client {
    /// A builder; at least [`nodes`](ClientBuilder::nodes) must be set.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The node addresses, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.inner
            .nodes
            .iter()
            .map(|node| node.address.clone())
            .collect()
    }

    /// Each node's address and whether the client has it in rotation (a
    /// node out of rotation is being probed in the background).
    pub fn nodes_up(&self) -> Vec<(String, bool)> {
        self.inner
            .nodes
            .iter()
            .map(|node| (node.address.clone(), node.is_up()))
            .collect()
    }

    /// The address of the node that owns `id`.
    pub fn owner_of(&self, id: &SessionId) -> &str {
        let owner = ring::owner(&self.inner.seeds, id).unwrap_or(0);
        &self.inner.nodes[owner].address
    }

    /// The largest idle TTL the servers accept (`--max-ttl`), as the first
    /// reachable node reported it.
    pub fn max_ttl(&self) -> Option<Duration> {
        self.inner
            .nodes
            .iter()
            .find_map(|node| node.max_ttl_secs())
            .map(Duration::from_secs)
    }

    /// Sends `op` to the nodes in `order`, skipping down nodes and failing
    /// over when a node cannot answer.
    ///
    /// A write (create, put, patch, rotate) carries one random tag for all
    /// its attempts. Once an attempt may have been applied (its answer was
    /// lost, or the node could not tell), every later attempt says so, and
    /// the node judges it against the session's write log: it answers the
    /// write's true outcome, applies it if it had not been, or says it
    /// cannot tell. While the outcome is unknown the nodes are asked a
    /// second time round (a node stalled past one timeout, e.g. by its
    /// Redis, has usually recovered by then). If no node can tell, the call
    /// ends with [`Error::Indeterminate`]: a write is never applied twice.
    async fn call(&self, order: Vec<usize>, op: Op) -> Result<Outcome, Error> {
        self.call_within(order, op, self.inner.timeout).await
    }

    /// Reads the event log (`op` is an [`Op::Events`]): on any node with
    /// Redis, on the first node without; the call may take the read's wait
    /// on top of the usual timeout.
    pub(crate) async fn read_events(&self, op: Op) -> Result<Outcome, Error> {
        let wait = match &op {
            Op::Events { wait_ms, .. } => Duration::from_millis(u64::from(*wait_ms)),
            _ => Duration::ZERO,
        };
        let order = if self.shares_sessions() {
            (0..self.inner.nodes.len()).collect()
        } else {
            vec![0]
        };
        // A timeout of `Duration::MAX` (no limit) stays that.
        let timeout = self.inner.timeout.saturating_add(wait);
        self.call_within(order, op, timeout).await
    }

    /// [`call`](Self::call) with its own per-attempt timeout.
    async fn call_within(
        &self,
        order: Vec<usize>,
        op: Op,
        timeout: Duration,
    ) -> Result<Outcome, Error> {
        // A call may fail without awaiting anything (every node is down):
        // this hands the runtime back once the task's budget is spent, so a
        // caller retrying in a loop does not starve other tasks (among them
        // the probes that bring the nodes back).
        tokio::task::coop::consume_budget().await;
        let tag = op.is_tagged_write().then(|| fastrand::u64(1..));
        // Every attempt says when the first was sent (a late first attempt
        // is judged by it).
        let sent_at_ms = unix_millis();
        let mut maybe_applied_since: Option<Instant> = None;
        let mut last_error = None;
        let mut last_node = None;
        let rounds = if tag.is_some() {
            TAGGED_WRITE_ROUNDS
        } else {
            1
        };
        // Each attempt: its node, and whether it is of a later round.
        let mut plan: VecDeque<(usize, bool)> = (0..rounds)
            .flat_map(|round| order.iter().map(move |&index| (index, round > 0)))
            .collect();
        // Without shared sessions only the node that may have applied a
        // write can judge it (nodes without Redis cannot see each other's
        // creates): once per node and call, it is asked again at once.
        let ask_again = tag.is_some() && !self.shares_sessions();
        // With write-behind nodes only the node that may have applied a
        // write can judge it (it may still be in its queue, which no other
        // node sees: another would judge it against an older copy and may
        // apply it again): once it may have been applied, the call stays
        // on that node.
        let stay_where_applied = tag.is_some() && self.writes_behind();
        let mut asked_again = Vec::new();
        while let Some((index, later_round)) = plan.pop_front() {
            if later_round && maybe_applied_since.is_none() {
                // Another round only settles a write whose fate is unknown.
                break;
            }
            let node = &self.inner.nodes[index];
            let connection = match node.connection().await {
                Ok(connection) => connection,
                Err(err) => {
                    last_error = Some(err);
                    continue;
                }
            };
            if let Some(since) = maybe_applied_since {
                if since.elapsed() > RESEND_WINDOW {
                    break;
                }
                // Once per node: the second round revisits the same ones.
                if let Some(last) = last_node.filter(|&last| last != index && !later_round) {
                    self.warn_of_orphan(&op, last);
                }
            }
            last_node = Some(index);
            let write = tag.map(|id| WriteTag {
                id,
                resent_after_ms: maybe_applied_since
                    .map(|since| since.elapsed().as_millis() as u64),
                sent_at_ms,
            });
            let sent_at = Instant::now();
            match node.call(connection, &op, write, timeout).await {
                Ok(Outcome::Error(error)) => {
                    node.answered();
                    match error.code {
                        // The node refused without acting (e.g. its Redis
                        // is down): another node may take it.
                        ErrorCode::Unavailable | ErrorCode::Overloaded => {
                            last_error = Some(Error::from(error));
                        }
                        // The node could not tell whether an earlier
                        // attempt (or its own Redis command) landed.
                        ErrorCode::Indeterminate if tag.is_some() => {
                            maybe_applied_since.get_or_insert(sent_at);
                            if stay_where_applied {
                                plan.retain(|&(next, _)| next == index);
                            }
                            last_error = Some(Error::from(error));
                        }
                        // A call safe to repeat (untagged: a revocation
                        // whose Redis command got no answer, say) is asked
                        // again, as after a refusal.
                        ErrorCode::Indeterminate => {
                            last_error = Some(Error::Unavailable(error.message));
                        }
                        // Refused before it was judged, by a node with a
                        // lower limit (`--max-session-bytes`, `--max-ttl`)
                        // than the one an earlier attempt may have been
                        // applied on: that one settles it.
                        ErrorCode::PayloadTooLarge | ErrorCode::InvalidTtl
                            if maybe_applied_since.is_some() =>
                        {
                            last_error = Some(Error::from(error));
                        }
                        _ => return Err(Error::from(error)),
                    }
                }
                Ok(outcome) => {
                    node.answered();
                    return Ok(outcome);
                }
                Err(CallError::NotSent(err @ Error::TooLarge(_)))
                    if maybe_applied_since.is_none() =>
                {
                    return Err(err);
                }
                Err(CallError::AnswerTooLarge(err)) => {
                    // Judged and carried out: re-sending would be answered
                    // the same, by this node or another.
                    node.answered();
                    return Err(err);
                }
                Err(CallError::NotSent(err)) => {
                    // The connection closed before the request left: as
                    // with a lost answer, the next attempt opens a new one.
                    last_error = Some(err);
                }
                Err(CallError::Stalled(err)) => {
                    node.timed_out();
                    last_error = Some(err);
                }
                Err(CallError::Lost(err)) => {
                    // A connection that broke is not a dead node: the next
                    // attempt opens a new one, and only if that fails is
                    // the node marked down.
                    if let Error::Timeout(_) = err {
                        node.timed_out();
                    }
                    if tag.is_some() {
                        maybe_applied_since.get_or_insert(sent_at);
                    }
                    if stay_where_applied {
                        plan.retain(|&(next, _)| next == index);
                    }
                    // A call safe to repeat whose connection broke (not
                    // one that timed out) is asked again too, even past
                    // the plan's end: the node may be well.
                    let repeat = tag.is_none() && !matches!(err, Error::Timeout(_));
                    // (Not past the plan's end for a write, and not when
                    // it goes to this node next anyway: that is its asking
                    // again.)
                    if (ask_again || repeat) && !asked_again.contains(&index) {
                        asked_again.push(index);
                        let next = plan.front().map(|&(next, _)| next);
                        if next.map_or(repeat, |next| next != index) {
                            plan.push_front((index, later_round));
                        }
                    }
                    last_error = Some(err);
                }
            }
        }
        let last_error = last_error.unwrap_or_else(|| Error::Unavailable("no node is up".into()));
        if maybe_applied_since.is_some() {
            return Err(Error::Indeterminate(format!(
                "no node could tell whether the {} was applied (last error: {last_error})",
                op.name()
            )));
        }
        Err(last_error)
    }

    /// A create whose answer was lost, made on another node instead: without
    /// shared sessions the first node cannot be asked whether it made one.
    fn warn_of_orphan(&self, op: &Op, first: usize) {
        if matches!(op, Op::Create { .. }) && !self.shares_sessions() {
            tracing::warn!(
                node = %self.inner.nodes[first].address,
                "a create got no answer and is made on another node instead; \
                 that node may hold an orphan session until its TTL ends"
            );
        }
    }

    /// Sends an operation on `id` to its owner, failing over to the next
    /// nodes of its order only when nodes share sessions (Redis): without
    /// it another node would wrongly answer "not found".
    /// A write whose answer was lost is sent to the owner once more, where
    /// it is judged against the session's write log.
    async fn call_for(&self, id: &SessionId, op: Op) -> Result<Outcome, Error> {
        let mut order = ring::preference(&self.inner.seeds, id);
        if !self.shares_sessions() {
            order.truncate(1);
            if op.is_tagged_write() {
                order.push(order[0]);
            }
        }
        self.call(order, op).await
    }

    /// Whether the nodes said they share sessions (any node that answered).
    fn shares_sessions(&self) -> bool {
        self.nodes_said(Node::shares_sessions)
    }

    /// Whether the nodes said they write behind to Redis (any node that
    /// answered).
    fn writes_behind(&self) -> bool {
        self.nodes_said(Node::writes_behind)
    }

    /// What the first node that answered said of the deployment in its
    /// `Welcome` (`false` before any did).
    fn nodes_said(&self, said: impl Fn(&Node) -> Option<bool>) -> bool {
        self.inner
            .nodes
            .iter()
            .find_map(|node| said(node))
            .unwrap_or(false)
    }

    async fn session_call(&self, id: &SessionId, op: Op) -> Result<SessionRecord, Error> {
        expect_session(self.call_for(id, op).await?)
    }

    /// Creates a session holding `data`, with an idle `ttl` (the server's
    /// default when `None`).
    pub async fn create<T: Serialize + ?Sized>(
        &self,
        data: &T,
        ttl: Option<Duration>,
    ) -> Result<SessionInfo, Error> {
        self.create_session(data, ttl, None).await
    }

    /// [`create`](Self::create) for a session that belongs to `user` (1 to
    /// 256 bytes): it shows in [`list_user_sessions`](Self::list_user_sessions),
    /// and the server's `--max-sessions-per-user` applies in the same step
    /// ([`Error::TooManySessions`] when the server rejects past it).
    pub async fn create_for_user<T: Serialize + ?Sized>(
        &self,
        data: &T,
        ttl: Option<Duration>,
        user: &str,
    ) -> Result<SessionInfo, Error> {
        self.create_session(data, ttl, Some(checked_user(user)?))
            .await
    }

    async fn create_session<T: Serialize + ?Sized>(
        &self,
        data: &T,
        ttl: Option<Duration>,
        user: Option<String>,
    ) -> Result<SessionInfo, Error> {
        let op = Op::Create {
            data: Bytes::from(serde_json::to_vec(data)?),
            ttl_secs: ttl.map(ttl_secs),
            user,
        };
        // Spread new sessions: a random key picks the first node to try.
        let order = ring::preference(&self.inner.seeds, &SessionId::from_u128(fastrand::u128(..)));
        let record = expect_session(self.call(order, op).await?)?;
        Ok(SessionInfo::from(&record))
    }

    /// Reads a session (refreshing its expiry) and decodes its data as `T`.
    pub async fn get<T: DeserializeOwned>(&self, id: &SessionId) -> Result<Session<T>, Error> {
        let record = self.session_call(id, Op::Get { id: *id }).await?;
        decode(&record)
    }

    /// Replaces a session's data. With `expected_version`, only if the
    /// session is still at that version ([`Error::Conflict`] otherwise).
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        id: &SessionId,
        data: &T,
        expected_version: Option<u64>,
    ) -> Result<SessionInfo, Error> {
        self.put_with_ttl(id, data, None, expected_version).await
    }

    /// [`put`](Self::put) that also sets a new idle TTL.
    pub async fn put_with_ttl<T: Serialize + ?Sized>(
        &self,
        id: &SessionId,
        data: &T,
        ttl: Option<Duration>,
        expected_version: Option<u64>,
    ) -> Result<SessionInfo, Error> {
        let op = Op::Put {
            id: *id,
            data: Bytes::from(serde_json::to_vec(data)?),
            ttl_secs: ttl.map(ttl_secs),
            expected_version,
        };
        Ok(SessionInfo::from(&self.session_call(id, op).await?))
    }

    /// Applies an RFC 7386 JSON merge patch atomically on the server.
    pub async fn patch(
        &self,
        id: &SessionId,
        patch: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<SessionInfo, Error> {
        self.patch_with_ttl(id, patch, None, expected_version).await
    }

    /// [`patch`](Self::patch) that also sets a new idle TTL.
    pub async fn patch_with_ttl(
        &self,
        id: &SessionId,
        patch: &serde_json::Value,
        ttl: Option<Duration>,
        expected_version: Option<u64>,
    ) -> Result<SessionInfo, Error> {
        let op = Op::Patch {
            id: *id,
            patch: Bytes::from(serde_json::to_vec(patch)?),
            ttl_secs: ttl.map(ttl_secs),
            expected_version,
        };
        Ok(SessionInfo::from(&self.session_call(id, op).await?))
    }

    /// Read-modify-write: reads the session, lets `change` modify the data,
    /// and writes it back if nobody wrote in between; on a conflict it reads
    /// again and retries (with a short jittered backoff), up to the
    /// builder's `update_retries`. Returns the session as written.
    ///
    /// The change is applied at most once: a write whose answer was lost is
    /// re-sent with its identity and judged by the server, and if no node
    /// can tell whether it landed the call ends with
    /// [`Error::Indeterminate`] instead of applying `change` again.
    pub async fn update<T, F>(&self, id: &SessionId, mut change: F) -> Result<Session<T>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T),
    {
        let retries = self.inner.update_retries;
        for attempt in 0..=retries {
            let mut session: Session<T> = self.get(id).await?;
            change(&mut session.data);
            match self.put(id, &session.data, Some(session.version())).await {
                Ok(info) => return Ok(Session { info, ..session }),
                Err(Error::Conflict { .. }) => {
                    let ceiling = 1u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=ceiling * 500)))
                        .await;
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::TooManyConflicts {
            attempts: retries + 1,
        })
    }

    /// Deletes a session; deleting a missing one succeeds.
    pub async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        match self.call_for(id, Op::Delete { id: *id }).await? {
            Outcome::Deleted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Extends a session's expiry, optionally with a new idle TTL, without
    /// writing it (the version stays).
    pub async fn touch(&self, id: &SessionId, ttl: Option<Duration>) -> Result<SessionInfo, Error> {
        let op = Op::Touch {
            id: *id,
            ttl_secs: ttl.map(ttl_secs),
        };
        Ok(SessionInfo::from(&self.session_call(id, op).await?))
    }

    /// Moves a session to a new id (after a login, against session
    /// fixation); the old id stops working at once. The version and the
    /// session's user are kept.
    pub async fn rotate(&self, id: &SessionId) -> Result<SessionInfo, Error> {
        let op = Op::Rotate {
            id: *id,
            user: None,
        };
        Ok(SessionInfo::from(&self.session_call(id, op).await?))
    }

    /// A login: moves a session to a new id and binds it to `user` in the
    /// same step (the old id stops working at once; the server's
    /// `--max-sessions-per-user` applies).
    pub async fn rotate_for_user(&self, id: &SessionId, user: &str) -> Result<SessionInfo, Error> {
        let op = Op::Rotate {
            id: *id,
            user: Some(checked_user(user)?),
        };
        Ok(SessionInfo::from(&self.session_call(id, op).await?))
    }

    /// The nodes that know `user`'s sessions: with Redis, any one (in an
    /// order picked by the user's name, with failover); without it, each
    /// node knows its own.
    fn user_orders(&self, user: &str) -> Vec<Vec<usize>> {
        if self.shares_sessions() {
            let key = SessionId::from_u128(u128::from(ring::node_seed(user)));
            vec![ring::preference(&self.inner.seeds, &key)]
        } else {
            (0..self.inner.nodes.len())
                .map(|index| vec![index])
                .collect()
        }
    }

    /// `op` of `user` on each node that knows some of the user's sessions,
    /// all at once: one answer per node (see `user_orders`), every node
    /// asked even when one fails.
    async fn on_user_nodes(&self, user: &str, op: impl Fn() -> Op) -> Vec<Result<Outcome, Error>> {
        let calls = self
            .user_orders(user)
            .into_iter()
            .map(|order| self.call(order, op()));
        futures_util::future::join_all(calls).await
    }

    /// The live sessions of `user`, oldest first (without their data). An
    /// error when a node that may hold some of them does not answer.
    pub async fn list_user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>, Error> {
        let user = checked_user(user)?;
        let mut sessions = Vec::new();
        let listings = self
            .on_user_nodes(&user, || Op::ListUser { user: user.clone() })
            .await;
        for listing in listings {
            match listing? {
                Outcome::UserSessions(records) => {
                    sessions.extend(records.iter().map(SessionInfo::from));
                }
                other => return Err(unexpected(&other)),
            }
        }
        sessions.sort_by_key(|session| (session.created_at, session.id));
        Ok(sessions)
    }

    /// Deletes every session of `user` but `except` ("sign out everywhere"
    /// or, with the current session as `except`, "sign out other
    /// devices"); returns how many were deleted. Without Redis every node
    /// is asked, also when one fails, so a node that is down holds up only
    /// its own sessions; the error (the first) then comes after the others
    /// revoked theirs: call it again once that node is back.
    pub async fn revoke_user_sessions(
        &self,
        user: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, Error> {
        let user = checked_user(user)?;
        let revocations = self
            .on_user_nodes(&user, || Op::RevokeUser {
                user: user.clone(),
                except: except.copied(),
            })
            .await;
        let mut revoked = 0;
        let mut failed = None;
        for revocation in revocations {
            match revocation {
                Ok(Outcome::Revoked(count)) => revoked += count,
                Ok(other) => failed = failed.or(Some(unexpected(&other))),
                Err(err) => failed = failed.or(Some(err)),
            }
        }
        failed.map_or(Ok(revoked), Err)
    }

    /// Pings every node; returns each node's address and whether it answered.
    pub async fn ping_all(&self) -> Vec<(String, Result<(), Error>)> {
        let pings = (0..self.inner.nodes.len()).map(|index| async move {
            let result = match self.call(vec![index], Op::Ping).await {
                Ok(Outcome::Pong) => Ok(()),
                Ok(other) => Err(unexpected(&other)),
                Err(err) => Err(err),
            };
            (self.inner.nodes[index].address.clone(), result)
        });
        futures_util::future::join_all(pings).await
    }

    /// The counters of the node at `address` (one of [`nodes`](Self::nodes)).
    pub async fn stats(&self, address: &str) -> Result<NodeStats, Error> {
        let index = self
            .inner
            .nodes
            .iter()
            .position(|node| node.address == address)
            .ok_or_else(|| Error::Config(format!("{address} is not one of the client's nodes")))?;
        match self.call(vec![index], Op::Stats).await? {
            Outcome::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }
}

/// Seconds for the wire, rounded up so a sub-second TTL is not zero.
fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
}

fn expect_session(outcome: Outcome) -> Result<SessionRecord, Error> {
    match outcome {
        Outcome::Session(record) => Ok(record),
        other => Err(unexpected(&other)),
    }
}

fn decode<T: DeserializeOwned>(record: &SessionRecord) -> Result<Session<T>, Error> {
    Ok(Session {
        info: SessionInfo::from(record),
        data: serde_json::from_slice(&record.data)?,
        user: record.user.clone(),
    })
}

/// `user`, checked before it is sent.
fn checked_user(user: &str) -> Result<String, Error> {
    UserName::parse(user)
        .map(|user| user.to_string())
        .map_err(|err| Error::Invalid {
            code: ErrorCode::InvalidUser,
            message: err.to_string(),
        })
}

/// The error of an answer that is not the one the call expects.
pub(crate) fn unexpected(outcome: &Outcome) -> Error {
    match outcome {
        Outcome::Error(error) => Error::from(error.clone()),
        other => Error::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// Now, by this machine's clock, in ms since the Unix epoch (0 if the
/// clock is before it).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
