//! The Sentinel protocol, as far as clients use it: what the discovery endpoint answers and
//! publishes, decided from what the leader wrote to HaCluster status.
//!
//! Sentinel-aware clients (redis-py, Jedis, Lettuce, go-redis, ioredis) find the primary by
//! asking `SENTINEL get-master-addr-by-name` or `SENTINEL masters`, and reconnect when they
//! hear `+switch-master`. Understudy answers those from status: one "master" per shard of
//! every served redis HaCluster, named `namespace/cluster` (one shard) or
//! `namespace/cluster/shard`, or after the cluster's `spec.routing.masterName`. A name two
//! clusters claim is served for neither. Nothing here reads a socket or a clock; the server
//! (`crate::sentinel`) feeds requests in and writes the replies out.

use std::collections::{BTreeMap, BTreeSet};

/// A member of a shard, as the edge converted it from status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    /// Where clients reach it (the member's endpoint, or its allowed clientAddress).
    pub host: String,
    pub port: u16,
    pub healthy: bool,
    /// Observed as a replica (not fenced, not unknown).
    pub replica: bool,
    /// The member it replicates from.
    pub upstream: Option<String>,
    pub offset: Option<i64>,
}

/// A shard, as the edge converted it from status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardView {
    pub name: String,
    pub primary: Option<String>,
    /// The member being promoted, while a promotion is under way.
    pub target: Option<String>,
    pub epoch: i64,
    pub members: Vec<MemberView>,
}

/// A served HaCluster (redis, not a standby).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub namespace: String,
    pub name: String,
    /// `spec.routing.masterName`.
    pub master_name: Option<String>,
    /// heartbeatInterval × failureThreshold: Sentinel's `down-after-milliseconds`.
    pub down_after_ms: u64,
    /// The failover deadline: Sentinel's `failover-timeout`.
    pub failover_timeout_ms: u64,
    pub shards: Vec<ShardView>,
}

impl ClusterView {
    /// The cluster's `namespace/name`: who claims its master names.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One instance as Sentinel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub host: String,
    pub port: u16,
    pub healthy: bool,
    /// A replica attached to the current primary.
    pub linked: bool,
    pub offset: i64,
}

impl Instance {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A shard with a recorded primary, as a Sentinel "master".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub name: String,
    pub primary: Instance,
    pub replicas: Vec<Instance>,
    pub epoch: i64,
    pub failing_over: bool,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
}

/// The master name of `shard`: `namespace/cluster` for a cluster of one shard,
/// `namespace/cluster/shard` otherwise; with `spec.routing.masterName` (which has no `/`, so
/// it never takes a default name) that name, or `masterName-shard`.
pub fn master_name(
    namespace: &str,
    cluster: &str,
    custom: Option<&str>,
    shard: &str,
    shards: usize,
) -> String {
    match (custom, shards) {
        (Some(name), 1) => name.to_owned(),
        (Some(name), _) => format!("{name}-{shard}"),
        (None, 1) => format!("{namespace}/{cluster}"),
        (None, _) => format!("{namespace}/{cluster}/{shard}"),
    }
}

/// The masters of one cluster. A shard without a recorded primary (bootstrapping), or whose
/// primary is not among its members, is not a master yet: clients are told there is none.
pub fn masters(c: &ClusterView) -> Vec<Master> {
    let mut out = Vec::new();
    for s in &c.shards {
        let Some(primary) = s.primary.as_ref().and_then(|p| s.members.iter().find(|m| &m.name == p)) else {
            continue;
        };
        let as_instance = |m: &MemberView, linked: bool| Instance {
            host: m.host.clone(),
            port: m.port,
            healthy: m.healthy,
            linked,
            offset: m.offset.unwrap_or(0),
        };
        let mut replicas: Vec<Instance> = s
            .members
            .iter()
            .filter(|m| m.name != primary.name)
            .map(|m| {
                let linked = m.replica && m.upstream.as_deref() == Some(primary.name.as_str());
                let mut i = as_instance(m, linked);
                // Fenced or unknown members are reported down: clients must not read from them.
                i.healthy = m.healthy && m.replica;
                i
            })
            .collect();
        replicas.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        out.push(Master {
            name: master_name(&c.namespace, &c.name, c.master_name.as_deref(), &s.name, c.shards.len()),
            primary: as_instance(primary, true),
            replicas,
            epoch: s.epoch,
            failing_over: s.target.as_ref().is_some_and(|t| t != &primary.name),
            down_after_ms: c.down_after_ms,
            failover_timeout_ms: c.failover_timeout_ms,
        });
    }
    out
}

/// A Pub/Sub message for subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub channel: String,
    pub payload: String,
}

impl Event {
    fn new(channel: &str, payload: String) -> Self {
        Self { channel: channel.to_owned(), payload }
    }
}

/// Where the leader publishes its announcements for the other operator replicas, which
/// follow it (`<name> <epoch> <host> <port>`). Heard by exact subscribers only: a client's
/// `PSUBSCRIBE *` (Sentinel's channels) does not get it.
pub const PROMOTED: &str = "__understudy__:promoted";

impl Event {
    /// The leader's announcement, for the other replicas' endpoints.
    pub fn promoted(name: &str, epoch: i64, host: &str, port: u16) -> Self {
        Self::new(PROMOTED, format!("{name} {epoch} {host} {port}"))
    }

    /// Read a [`PROMOTED`] payload: (name, epoch, host, port).
    pub fn parse_promoted(payload: &str) -> Option<(&str, i64, &str, u16)> {
        let mut words = payload.split(' ');
        let name = words.next().filter(|n| !n.is_empty())?;
        let epoch = words.next()?.parse().ok()?;
        let host = words.next().filter(|h| !h.is_empty())?;
        let port = words.next()?.parse().ok()?;
        words.next().is_none().then_some((name, epoch, host, port))
    }
}

/// A promotion the leader saw succeed before its outcome reached status: clients are sent
/// to the new primary at once instead of after the status write and its watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Announced {
    epoch: i64,
    host: String,
    port: u16,
}

/// Every master served, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// What each cluster (`namespace/cluster`) claims, from its status: its masters by name.
    claims: BTreeMap<String, BTreeMap<String, Master>>,
    /// What is served: the names exactly one cluster claims, announcements applied.
    masters: BTreeMap<String, Master>,
    announced: BTreeMap<String, Announced>,
}

impl Directory {
    pub fn get(&self, name: &str) -> Option<&Master> {
        self.masters.get(name)
    }

    /// Every master name served, in order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.masters.keys()
    }

    pub fn len(&self) -> usize {
        self.masters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// Every cluster (`namespace/cluster`) that claims a name.
    pub fn clusters(&self) -> impl Iterator<Item = &String> {
        self.claims.keys()
    }

    /// The names `cluster` claims that another cluster claims too (served for neither), each
    /// with the others that claim it.
    pub fn conflicts(&self, cluster: &str) -> Vec<(String, Vec<String>)> {
        let Some(mine) = self.claims.get(cluster) else { return Vec::new() };
        mine.keys()
            .filter_map(|name| {
                let others: Vec<String> = self
                    .claims
                    .iter()
                    .filter(|(k, c)| k.as_str() != cluster && c.contains_key(name))
                    .map(|(k, _)| k.clone())
                    .collect();
                (!others.is_empty()).then(|| (name.clone(), others))
            })
            .collect()
    }

    /// Replace what `cluster` (`namespace/cluster`) claims with `new` (nothing: it is gone or
    /// not served); returns what subscribers hear.
    pub fn replace(&mut self, cluster: &str, new: Vec<Master>) -> Vec<Event> {
        let new: BTreeMap<String, Master> = new.into_iter().map(|m| (m.name.clone(), m)).collect();
        let mut affected: BTreeSet<String> = new.keys().cloned().collect();
        let old = if new.is_empty() {
            self.claims.remove(cluster)
        } else {
            self.claims.insert(cluster.to_owned(), new)
        };
        affected.extend(old.into_iter().flat_map(BTreeMap::into_keys));
        affected.into_iter().flat_map(|name| self.refresh(&name)).collect()
    }

    /// Serve `name` as its claims and announcement say; returns what subscribers hear.
    fn refresh(&mut self, name: &str) -> Vec<Event> {
        let mut claimants = self.claims.values().filter_map(|c| c.get(name));
        let served = match (claimants.next(), claimants.next()) {
            (Some(one), None) => {
                let mut m = one.clone();
                if let Some(a) = self.announced.get(name) {
                    let confirmed = (&m.primary.host, m.primary.port) == (&a.host, a.port);
                    // Status catches up with the promotion (or moved past it): status is the
                    // truth again. An older status (the watch lags the leader) keeps the
                    // announcement.
                    if confirmed || m.epoch > a.epoch || (m.epoch == a.epoch && !m.failing_over) {
                        self.announced.remove(name);
                    } else {
                        promote_in(&mut m, a);
                    }
                }
                Some(m)
            }
            // Unclaimed, or claimed twice: served for neither cluster.
            _ => {
                self.announced.remove(name);
                None
            }
        };
        let before = self.masters.remove(name);
        let events = changes(before.as_ref(), served.as_ref());
        if let Some(m) = served {
            self.masters.insert(name.to_owned(), m);
        }
        events
    }
}

impl Directory {
    /// Announce that `name`'s promotion of epoch `epoch` made `host:port` its primary (the
    /// leader saw the promote step succeed); returns what subscribers hear. Ignored for a
    /// master not served, or when status already shows a later epoch.
    pub fn announce(&mut self, name: &str, epoch: i64, host: &str, port: u16) -> Vec<Event> {
        let Some(old) = self.masters.get(name) else { return Vec::new() };
        if old.epoch > epoch {
            return Vec::new();
        }
        let a = Announced { epoch, host: host.to_owned(), port };
        let mut new = old.clone();
        promote_in(&mut new, &a);
        let events = changes(Some(old), Some(&new));
        self.announced.insert(name.to_owned(), a);
        self.masters.insert(name.to_owned(), new);
        events
    }
}

/// `m` with the announced member as its healthy primary (and no longer among its replicas).
fn promote_in(m: &mut Master, a: &Announced) {
    m.replicas.retain(|r| (&r.host, r.port) != (&a.host, a.port));
    m.primary = Instance {
        host: a.host.clone(),
        port: a.port,
        healthy: true,
        linked: true,
        offset: m.primary.offset,
    };
    m.epoch = m.epoch.max(a.epoch);
    m.failing_over = false;
}

/// What Sentinel would publish when `old` became `new`.
pub fn changes(old: Option<&Master>, new: Option<&Master>) -> Vec<Event> {
    let at = |m: &Master| format!("{} {}", m.primary.host, m.primary.port);
    let mut out = Vec::new();
    match (old, new) {
        (None, Some(n)) => {
            out.push(Event::new("+monitor", format!("master {} {} quorum 1", n.name, at(n))));
            if !n.primary.healthy {
                out.push(Event::new("+sdown", format!("master {} {}", n.name, at(n))));
            }
        }
        (Some(o), None) => out.push(Event::new("-monitor", format!("master {} {}", o.name, at(o)))),
        (Some(o), Some(n)) => {
            let moved = (&o.primary.host, o.primary.port) != (&n.primary.host, n.primary.port);
            if moved {
                out.push(Event::new("+switch-master", format!("{} {} {}", n.name, at(o), at(n))));
            } else if o.primary.healthy != n.primary.healthy {
                let ch = if n.primary.healthy { "-sdown" } else { "+sdown" };
                out.push(Event::new(ch, format!("master {} {}", n.name, at(n))));
            }
            if !o.failing_over && n.failing_over {
                out.push(Event::new("+try-failover", format!("master {} {}", n.name, at(n))));
            }
            for r in &n.replicas {
                let before = o.replicas.iter().find(|b| (&b.host, b.port) == (&r.host, r.port));
                let flip = match before {
                    Some(b) if b.healthy != r.healthy => Some(r.healthy),
                    None if !r.healthy => Some(false),
                    _ => None,
                };
                if let Some(up) = flip {
                    let ch = if up { "-sdown" } else { "+sdown" };
                    let a = r.addr();
                    out.push(Event::new(
                        ch,
                        format!("slave {a} {} {} @ {} {}", r.host, r.port, n.name, at(n)),
                    ));
                }
            }
        }
        (None, None) => {}
    }
    out
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    NilArray,
}

impl Reply {
    fn bulk(s: impl AsRef<str>) -> Self {
        Reply::Bulk(s.as_ref().as_bytes().to_vec())
    }

    fn err(s: impl Into<String>) -> Self {
        Reply::Error(s.into())
    }

    /// A flat `field value field value …` array, as Sentinel sends its maps.
    fn pairs(fields: Vec<(&str, String)>) -> Self {
        Reply::Array(fields.into_iter().flat_map(|(k, v)| [Reply::bulk(k), Reply::bulk(v)]).collect())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Status(s) => {
                out.push(b'+');
                out.extend(s.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend(s.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }
}

/// The largest argument, inline request and argument count accepted: Sentinel requests are
/// a few short words; anything bigger is not a client of this protocol.
pub const MAX_ARG: usize = 64 * 1024;
pub const MAX_ARGS: usize = 1024;
/// The most a request may take in all: what a connection may make the endpoint buffer.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// A parsed request: its arguments, and how many bytes of the buffer it took.
pub type Request = (Vec<Vec<u8>>, usize);

/// A request that is not RESP: the connection is answered with an error and closed.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parse one request from the front of `buf`: its arguments and how many bytes it used, or
/// `None` when more bytes are needed. Both RESP arrays of bulk strings and inline commands
/// (`PING\r\n`, as typed into telnet) are requests.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
    match parse_one(buf)? {
        None if buf.len() > MAX_REQUEST => Err(ProtocolError("request too large")),
        r => Ok(r),
    }
}

fn parse_one(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            return if buf.len() > MAX_ARG { Err(ProtocolError("too big inline request")) } else { Ok(None) };
        };
        if end > MAX_ARG {
            return Err(ProtocolError("too big inline request"));
        }
        let text = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        let args = text.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).map(<[u8]>::to_vec);
        return Ok(Some((args.collect(), end + 1)));
    }
    let Some((head, mut at)) = line(buf) else {
        return if buf.len() > 32 { Err(ProtocolError("invalid multibulk length")) } else { Ok(None) };
    };
    let n = number(&head[1..]).ok_or(ProtocolError("invalid multibulk length"))?;
    if n > MAX_ARGS as i64 {
        return Err(ProtocolError("invalid multibulk length"));
    }
    let mut args = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let rest = &buf[at..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest[0] != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let Some((head, used)) = line(rest) else {
            return if rest.len() > 32 { Err(ProtocolError("invalid bulk length")) } else { Ok(None) };
        };
        let len = number(&head[1..]).ok_or(ProtocolError("invalid bulk length"))?;
        if !(0..=MAX_ARG as i64).contains(&len) {
            return Err(ProtocolError("invalid bulk length"));
        }
        let Some(data) = bulk_body(&rest[used..], len as usize)? else { return Ok(None) };
        at += used + data.len() + 2;
        args.push(data);
    }
    Ok(Some((args, at)))
}

/// A bulk string's `len` bytes and their CRLF at the front of `data`; None when more bytes
/// are needed.
fn bulk_body(data: &[u8], len: usize) -> Result<Option<Vec<u8>>, ProtocolError> {
    if data.len() < len + 2 {
        return Ok(None);
    }
    if &data[len..len + 2] != b"\r\n" {
        return Err(ProtocolError("bulk string not terminated by CRLF"));
    }
    Ok(Some(data[..len].to_vec()))
}

/// Parse one reply from the front of `buf` (what a peer's endpoint sends this one when it
/// follows the leader's announcements): the reply and how many bytes it used, or `None`
/// when more bytes are needed. Nesting deeper than 4, an element count above [`MAX_ARGS`]
/// or a string above [`MAX_ARG`] is a protocol error, as a peer never sends one.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    match reply_at(buf, 0)? {
        None if buf.len() > MAX_REQUEST => Err(ProtocolError("reply too large")),
        r => Ok(r),
    }
}

fn reply_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > 4 {
        return Err(ProtocolError("reply nested too deeply"));
    }
    let Some((head, used)) = line(buf) else {
        return if buf.len() > MAX_ARG { Err(ProtocolError("reply line too long")) } else { Ok(None) };
    };
    let Some((&kind, rest)) = head.split_first() else {
        return Err(ProtocolError("empty reply line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let count = || number(rest).ok_or(ProtocolError("invalid length"));
    Ok(Some(match kind {
        b'+' => (Reply::Status(text()), used),
        b'-' => (Reply::Error(text()), used),
        b':' => (Reply::Int(count()?), used),
        b'$' => match count()? {
            -1 => (Reply::Nil, used),
            len if (0..=MAX_ARG as i64).contains(&len) => {
                let Some(data) = bulk_body(&buf[used..], len as usize)? else { return Ok(None) };
                let took = used + data.len() + 2;
                (Reply::Bulk(data), took)
            }
            _ => return Err(ProtocolError("invalid bulk length")),
        },
        b'*' => match count()? {
            -1 => (Reply::NilArray, used),
            n if (0..=MAX_ARGS as i64).contains(&n) => {
                let mut at = used;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let Some((item, took)) = reply_at(&buf[at..], depth + 1)? else { return Ok(None) };
                    items.push(item);
                    at += took;
                }
                (Reply::Array(items), at)
            }
            _ => return Err(ProtocolError("invalid multibulk length")),
        },
        _ => return Err(ProtocolError("unknown reply type")),
    }))
}

/// How the endpoint is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What clients must `AUTH` with; None serves anyone who can connect.
    pub password: Option<String>,
    /// `SENTINEL myid`: 40 hex digits, stable for this replica.
    pub myid: String,
    pub version: String,
}

/// Compare without leaking, through timing, how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// One element of a PSUBSCRIBE pattern.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Star,
    Any,
    Byte(u8),
    /// `[...]`: byte ranges (inclusive), negated with `^`.
    Class(Vec<(u8, u8)>, bool),
}

fn pieces(pattern: &[u8]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut p = pattern;
    while let Some((&c, rest)) = p.split_first() {
        p = rest;
        match c {
            // Consecutive stars match what one does.
            b'*' if out.last() == Some(&Piece::Star) => {}
            b'*' => out.push(Piece::Star),
            b'?' => out.push(Piece::Any),
            b'\\' => match p.split_first() {
                Some((&x, r)) => {
                    out.push(Piece::Byte(x));
                    p = r;
                }
                None => out.push(Piece::Byte(b'\\')),
            },
            b'[' => {
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut ranges = Vec::new();
                loop {
                    match p {
                        // An unclosed class ends the pattern (as in Redis).
                        [] => break,
                        [b']', r @ ..] => {
                            p = r;
                            break;
                        }
                        [b'\\', x, r @ ..] => {
                            ranges.push((*x, *x));
                            p = r;
                        }
                        [lo, b'-', hi, r @ ..] if *hi != b']' => {
                            ranges.push(((*lo).min(*hi), (*lo).max(*hi)));
                            p = r;
                        }
                        [x, r @ ..] => {
                            ranges.push((*x, *x));
                            p = r;
                        }
                    }
                }
                out.push(Piece::Class(ranges, negate));
            }
            x => out.push(Piece::Byte(x)),
        }
    }
    out
}

/// Redis glob matching (`*`, `?`, `[...]` with ranges and `^`, `\` escapes), as PSUBSCRIBE
/// uses. Dynamic programming over pattern × text: a hostile pattern (`*a*a*a…`) costs
/// O(pattern × channel), never exponential time.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let ps = pieces(pattern);
    // row[j]: the pieces so far match text[..j].
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for piece in &ps {
        let mut next = vec![false; text.len() + 1];
        match piece {
            Piece::Star => {
                let mut any = false;
                for j in 0..=text.len() {
                    any |= row[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 0..text.len() {
                    if !row[j] {
                        continue;
                    }
                    let c = text[j];
                    next[j + 1] = match piece {
                        Piece::Any => true,
                        Piece::Byte(b) => *b == c,
                        Piece::Class(ranges, negate) => {
                            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negate
                        }
                        Piece::Star => unreachable!(),
                    };
                }
            }
        }
        row = next;
    }
    row[text.len()]
}

/// One client connection: authentication and subscriptions.
#[derive(Debug, Default)]
pub struct Session {
    authed: bool,
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    closing: bool,
    id: i64,
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{}' command", cmd.to_ascii_lowercase()))
}

/// Subscriptions one connection may hold, and the longest channel or pattern: every
/// published message is matched against each.
pub const MAX_SUBSCRIPTIONS: usize = 256;
pub const MAX_CHANNEL: usize = 256;

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

impl Session {
    pub fn new(id: i64) -> Self {
        Self { id, ..Self::default() }
    }

    /// The client asked to close (QUIT) or broke the protocol.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Subscribed to anything: the connection waits for messages too.
    pub fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    /// The replies a malformed request gets (the connection is then closed).
    pub fn protocol_error(&mut self, e: &ProtocolError) -> Reply {
        self.closing = true;
        Reply::err(format!("ERR Protocol error: {}", e.0))
    }

    /// What the subscriber hears of `event`.
    pub fn deliver(&self, event: &Event) -> Vec<Reply> {
        let mut out = Vec::new();
        if self.channels.contains(&event.channel) {
            out.push(Reply::Array(vec![
                Reply::bulk("message"),
                Reply::bulk(&event.channel),
                Reply::bulk(&event.payload),
            ]));
        }
        if event.channel == PROMOTED {
            return out;
        }
        for p in &self.patterns {
            if glob(p.as_bytes(), event.channel.as_bytes()) {
                out.push(Reply::Array(vec![
                    Reply::bulk("pmessage"),
                    Reply::bulk(p),
                    Reply::bulk(&event.channel),
                    Reply::bulk(&event.payload),
                ]));
            }
        }
        out
    }

    fn check_auth(&mut self, s: &Settings, user: Option<&[u8]>, pass: &[u8]) -> Reply {
        let Some(want) = &s.password else {
            return Reply::err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        };
        let user_ok = user.is_none_or(|u| u == b"default");
        if user_ok && same_secret(pass, want.as_bytes()) {
            self.authed = true;
            Reply::Status("OK".into())
        } else {
            Reply::err(WRONGPASS)
        }
    }

    /// Answer one request.
    pub fn handle(&mut self, s: &Settings, dir: &Directory, args: &[Vec<u8>]) -> Vec<Reply> {
        let Some(first) = args.first() else { return Vec::new() };
        let cmd = upper(first);
        let rest = &args[1..];
        match cmd.as_str() {
            "QUIT" => {
                self.closing = true;
                return vec![Reply::Status("OK".into())];
            }
            "AUTH" => {
                return vec![match rest {
                    [pass] => self.check_auth(s, None, pass),
                    [user, pass] => self.check_auth(s, Some(user), pass),
                    _ => wrong_args(&cmd),
                }];
            }
            "HELLO" => return vec![self.hello(s, rest)],
            _ => {}
        }
        if s.password.is_some() && !self.authed {
            return vec![Reply::err(NOAUTH)];
        }
        if self.subscribed()
            && !matches!(
                cmd.as_str(),
                "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "RESET"
            )
        {
            return vec![Reply::err(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                cmd.to_ascii_lowercase()
            ))];
        }
        match cmd.as_str() {
            "PING" if self.subscribed() => {
                let msg = rest.first().cloned().unwrap_or_default();
                vec![Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(msg)])]
            }
            "PING" => match rest {
                [] => vec![Reply::Status("PONG".into())],
                [msg] => vec![Reply::Bulk(msg.clone())],
                _ => vec![wrong_args(&cmd)],
            },
            "SUBSCRIBE" | "PSUBSCRIBE" if rest.is_empty() => vec![wrong_args(&cmd)],
            "SUBSCRIBE" | "PSUBSCRIBE" => {
                let pattern = cmd == "PSUBSCRIBE";
                if self.channels.len() + self.patterns.len() + rest.len() > MAX_SUBSCRIPTIONS
                    || rest.iter().any(|c| c.len() > MAX_CHANNEL)
                {
                    return vec![Reply::err(format!(
                        "ERR at most {MAX_SUBSCRIPTIONS} subscriptions of at most {MAX_CHANNEL} bytes each per connection"
                    ))];
                }
                rest.iter()
                    .map(|c| {
                        let c = text(c);
                        if pattern {
                            self.patterns.insert(c.clone())
                        } else {
                            self.channels.insert(c.clone())
                        };
                        self.sub_reply(&cmd, Some(&c))
                    })
                    .collect()
            }
            "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
                let pattern = cmd == "PUNSUBSCRIBE";
                let names: Vec<String> = if rest.is_empty() {
                    let set = if pattern { &self.patterns } else { &self.channels };
                    set.iter().cloned().collect()
                } else {
                    rest.iter().map(|c| text(c)).collect()
                };
                if names.is_empty() {
                    return vec![self.sub_reply(&cmd, None)];
                }
                names
                    .iter()
                    .map(|c| {
                        if pattern {
                            self.patterns.remove(c)
                        } else {
                            self.channels.remove(c)
                        };
                        self.sub_reply(&cmd, Some(c))
                    })
                    .collect()
            }
            "RESET" => {
                self.channels.clear();
                self.patterns.clear();
                self.authed = false;
                vec![Reply::Status("RESET".into())]
            }
            "CLIENT" => vec![self.client(rest)],
            "ROLE" => vec![Reply::Array(vec![
                Reply::bulk("sentinel"),
                Reply::Array(dir.masters.keys().map(Reply::bulk).collect()),
            ])],
            "INFO" => vec![Reply::bulk(info(s, dir))],
            "COMMAND" => vec![Reply::Array(Vec::new())],
            "SENTINEL" => vec![sentinel(s, dir, rest)],
            _ => {
                let shown: Vec<String> = rest.iter().take(4).map(|a| format!("'{}'", text(a))).collect();
                vec![Reply::err(format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    text(first),
                    shown.join(" ")
                ))]
            }
        }
    }

    fn sub_reply(&self, cmd: &str, name: Option<&str>) -> Reply {
        let count = self.channels.len() + self.patterns.len();
        Reply::Array(vec![
            Reply::bulk(cmd.to_ascii_lowercase()),
            name.map_or(Reply::Nil, Reply::bulk),
            Reply::Int(count as i64),
        ])
    }

    fn hello(&mut self, s: &Settings, rest: &[Vec<u8>]) -> Reply {
        let mut it = rest.iter();
        if let Some(v) = it.next() {
            match number(v) {
                Some(2) => {}
                Some(_) => return Reply::err("NOPROTO sorry, this protocol version is not supported."),
                None => return Reply::err("ERR Protocol version is not an integer or out of range"),
            }
        }
        while let Some(opt) = it.next() {
            match upper(opt).as_str() {
                "AUTH" => {
                    let (Some(user), Some(pass)) = (it.next(), it.next()) else {
                        return Reply::err("ERR Syntax error in HELLO option 'auth'");
                    };
                    if let Reply::Error(e) = self.check_auth(s, Some(user), pass) {
                        return Reply::Error(e);
                    }
                }
                "SETNAME" => {
                    if it.next().is_none() {
                        return Reply::err("ERR Syntax error in HELLO option 'setname'");
                    }
                }
                other => {
                    return Reply::err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        other.to_ascii_lowercase()
                    ));
                }
            }
        }
        if s.password.is_some() && !self.authed {
            return Reply::err(NOAUTH);
        }
        Reply::pairs(vec![
            ("server", "understudy".into()),
            ("version", s.version.clone()),
            ("proto", "2".into()),
            ("id", self.id.to_string()),
            ("mode", "sentinel".into()),
            ("role", "master".into()),
            ("modules", String::new()),
        ])
    }

    fn client(&self, rest: &[Vec<u8>]) -> Reply {
        match rest.first().map(|a| upper(a)).as_deref() {
            Some("SETNAME" | "SETINFO") => Reply::Status("OK".into()),
            Some("GETNAME") => Reply::Nil,
            Some("ID") => Reply::Int(self.id),
            Some(other) => Reply::err(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                other.to_ascii_lowercase()
            )),
            None => wrong_args("client"),
        }
    }
}

fn master_flags(m: &Master) -> String {
    let mut f = vec!["master"];
    if !m.primary.healthy {
        // One authority decides here, so subjectively down is objectively down.
        f.extend(["s_down", "o_down"]);
    }
    if m.failing_over {
        f.push("failover_in_progress");
    }
    f.join(",")
}

fn master_fields(m: &Master) -> Reply {
    Reply::pairs(vec![
        ("name", m.name.clone()),
        ("ip", m.primary.host.clone()),
        ("port", m.primary.port.to_string()),
        ("runid", String::new()),
        ("flags", master_flags(m)),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", m.down_after_ms.to_string()),
        ("info-refresh", "0".into()),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", m.epoch.to_string()),
        ("num-slaves", m.replicas.len().to_string()),
        ("num-other-sentinels", "0".into()),
        ("quorum", "1".into()),
        ("failover-timeout", m.failover_timeout_ms.to_string()),
        ("parallel-syncs", "1".into()),
    ])
}

fn replica_fields(m: &Master, r: &Instance) -> Reply {
    let flags = if r.healthy { "slave" } else { "slave,s_down" };
    Reply::pairs(vec![
        ("name", r.addr()),
        ("ip", r.host.clone()),
        ("port", r.port.to_string()),
        ("runid", String::new()),
        ("flags", flags.into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", m.down_after_ms.to_string()),
        ("info-refresh", "0".into()),
        ("role-reported", "slave".into()),
        ("role-reported-time", "0".into()),
        ("master-link-down-time", "0".into()),
        ("master-link-status", if r.linked { "ok" } else { "err" }.into()),
        ("master-host", m.primary.host.clone()),
        ("master-port", m.primary.port.to_string()),
        ("slave-priority", "100".into()),
        ("slave-repl-offset", r.offset.to_string()),
        ("replica-announced", "1".into()),
    ])
}

fn no_such_master() -> Reply {
    Reply::err("ERR No such master with that name")
}

fn sentinel(s: &Settings, dir: &Directory, rest: &[Vec<u8>]) -> Reply {
    let Some(sub) = rest.first() else { return wrong_args("sentinel") };
    let sub = upper(sub);
    let args = &rest[1..];
    let named = |args: &[Vec<u8>]| match args {
        [name] => Ok(dir.get(&text(name))),
        _ => Err(Reply::err(format!(
            "ERR wrong number of arguments for 'sentinel|{}' command",
            sub.to_ascii_lowercase()
        ))),
    };
    match sub.as_str() {
        "GET-MASTER-ADDR-BY-NAME" => match named(args) {
            Ok(Some(m)) => {
                Reply::Array(vec![Reply::bulk(&m.primary.host), Reply::bulk(m.primary.port.to_string())])
            }
            Ok(None) => Reply::NilArray,
            Err(e) => e,
        },
        "MASTERS" => Reply::Array(dir.masters.values().map(master_fields).collect()),
        "MASTER" => match named(args) {
            Ok(Some(m)) => master_fields(m),
            Ok(None) => no_such_master(),
            Err(e) => e,
        },
        "REPLICAS" | "SLAVES" => match named(args) {
            Ok(Some(m)) => Reply::Array(m.replicas.iter().map(|r| replica_fields(m, r)).collect()),
            Ok(None) => no_such_master(),
            Err(e) => e,
        },
        // Every operator replica answers the same from the same status; there are no peers
        // for a client to learn about.
        "SENTINELS" => match named(args) {
            Ok(Some(_)) => Reply::Array(Vec::new()),
            Ok(None) => no_such_master(),
            Err(e) => e,
        },
        "CKQUORUM" => match named(args) {
            Ok(Some(_)) => Reply::Status(
                "OK 1 usable Sentinels. Quorum and failover authorization can be reached".into(),
            ),
            Ok(None) => no_such_master(),
            Err(e) => e,
        },
        "IS-MASTER-DOWN-BY-ADDR" => {
            let [host, port, _epoch, _runid] = args else {
                return Reply::err(
                    "ERR wrong number of arguments for 'sentinel|is-master-down-by-addr' command",
                );
            };
            let (host, port) = (text(host), text(port));
            let down = dir
                .masters
                .values()
                .find(|m| m.primary.host == host && m.primary.port.to_string() == port)
                .is_some_and(|m| !m.primary.healthy);
            // No vote is ever given: failover is decided by the operator, not by election.
            Reply::Array(vec![Reply::Int(i64::from(down)), Reply::bulk("*"), Reply::Int(0)])
        }
        "MYID" => Reply::bulk(&s.myid),
        "MONITOR" | "REMOVE" | "SET" | "RESET" | "FLUSHCONFIG" | "CONFIG" | "SIMULATE-FAILURE" => {
            Reply::err(format!(
                "ERR SENTINEL {sub} is not served: Understudy serves discovery only; the masters are the redis HaClusters it manages"
            ))
        }
        "FAILOVER" => Reply::err(
            "ERR SENTINEL FAILOVER is not served: ask Understudy for a switchover with a ShardFailover or FailoverRequest",
        ),
        other => Reply::err(format!("ERR Unknown sentinel subcommand '{}'", other.to_ascii_lowercase())),
    }
}

fn info(s: &Settings, dir: &Directory) -> String {
    let mut out = format!(
        "# Server\r\nredis_mode:sentinel\r\nunderstudy_version:{}\r\n\r\n# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\nsentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
        s.version,
        dir.len()
    );
    for (i, m) in dir.masters.values().enumerate() {
        let status = if m.primary.healthy { "ok" } else { "odown" };
        out.push_str(&format!(
            "master{i}:name={},status={status},address={},slaves={},sentinels=1\r\n",
            m.name,
            m.primary.addr(),
            m.replicas.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16, healthy: bool, replica: bool, upstream: Option<&str>) -> MemberView {
        MemberView {
            name: name.into(),
            host: "10.0.0.1".into(),
            port,
            healthy,
            replica,
            upstream: upstream.map(Into::into),
            offset: Some(42),
        }
    }

    fn cluster(primary: &str) -> ClusterView {
        ClusterView {
            namespace: "ns".into(),
            name: "cache".into(),
            master_name: None,
            down_after_ms: 600,
            failover_timeout_ms: 30_000,
            shards: vec![ShardView {
                name: "main".into(),
                primary: Some(primary.into()),
                target: None,
                epoch: 3,
                members: vec![
                    member("a", 6379, true, primary != "a", Some(primary)),
                    member("b", 6380, true, primary != "b", Some(primary)),
                    member("c", 6381, false, true, Some(primary)),
                ],
            }],
        }
    }

    fn dir(c: &ClusterView) -> Directory {
        let mut d = Directory::default();
        d.replace(&c.key(), masters(c));
        d
    }

    fn cmd(words: &str) -> Vec<Vec<u8>> {
        words.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn settings(password: Option<&str>) -> Settings {
        Settings { password: password.map(Into::into), myid: "0".repeat(40), version: "test".into() }
    }

    fn encoded(r: &[Reply]) -> String {
        let mut out = Vec::new();
        for r in r {
            r.encode(&mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn names_one_master_per_shard() {
        let mut c = cluster("a");
        assert_eq!(masters(&c)[0].name, "ns/cache");
        let mut second = c.shards[0].clone();
        second.name = "s1".into();
        c.shards[0].name = "s0".into();
        c.shards.push(second);
        let names: Vec<String> = masters(&c).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["ns/cache/s0", "ns/cache/s1"]);
        c.master_name = Some("mymaster".into());
        let names: Vec<String> = masters(&c).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["mymaster-s0", "mymaster-s1"]);
        c.shards.pop();
        assert_eq!(masters(&c)[0].name, "mymaster");
    }

    #[test]
    fn a_name_two_clusters_claim_is_served_for_neither() {
        let mut a = cluster("a");
        a.master_name = Some("mymaster".into());
        let mut d = dir(&a);
        assert_eq!(d.get("mymaster").map(|m| m.primary.port), Some(6379));
        // Another namespace claims it too: clients are told there is no such master rather
        // than sent to either primary, and each cluster learns who else claims it.
        let mut b = cluster("b");
        b.namespace = "other".into();
        b.master_name = Some("mymaster".into());
        let events = d.replace(&b.key(), masters(&b));
        assert_eq!(events.iter().map(|e| e.channel.as_str()).collect::<Vec<_>>(), ["-monitor"]);
        assert!(d.get("mymaster").is_none());
        assert_eq!(d.conflicts("ns/cache"), [("mymaster".to_owned(), vec!["other/cache".to_owned()])]);
        assert_eq!(d.conflicts("other/cache"), [("mymaster".to_owned(), vec!["ns/cache".to_owned()])]);
        // An announcement for a contested name changes nothing.
        assert!(d.announce("mymaster", 9, "10.0.0.9", 6379).is_empty());
        assert!(d.get("mymaster").is_none());
        // The other renames: the first is served again, announced to subscribers.
        b.master_name = Some("theirs".into());
        let events = d.replace(&b.key(), masters(&b));
        assert_eq!(events.iter().filter(|e| e.channel == "+monitor").count(), 2);
        assert_eq!(d.get("mymaster").map(|m| m.primary.port), Some(6379));
        assert_eq!(d.get("theirs").map(|m| m.primary.port), Some(6380));
        assert!(d.conflicts("ns/cache").is_empty());
        // Renaming moves the master: the old name goes, the new one comes.
        a.master_name = None;
        let events = d.replace(&a.key(), masters(&a));
        let channels: BTreeSet<&str> = events.iter().map(|e| e.channel.as_str()).collect();
        assert_eq!(channels, BTreeSet::from(["-monitor", "+monitor"]));
        assert!(d.get("mymaster").is_none() && d.get("ns/cache").is_some());
        assert_eq!(d.clusters().cloned().collect::<Vec<_>>(), ["ns/cache", "other/cache"]);
    }

    #[test]
    fn a_shard_without_a_recorded_primary_is_no_master() {
        let mut c = cluster("a");
        c.shards[0].primary = None;
        assert!(masters(&c).is_empty());
        c.shards[0].primary = Some("gone".into());
        assert!(masters(&c).is_empty());
    }

    #[test]
    fn answers_the_recorded_primary() {
        let d = dir(&cluster("b"));
        let mut s = Session::new(1);
        let r = s.handle(&settings(None), &d, &cmd("SENTINEL get-master-addr-by-name ns/cache"));
        assert_eq!(encoded(&r), "*2\r\n$8\r\n10.0.0.1\r\n$4\r\n6380\r\n");
        let r = s.handle(&settings(None), &d, &cmd("sentinel GET-MASTER-ADDR-BY-NAME other"));
        assert_eq!(encoded(&r), "*-1\r\n");
    }

    #[test]
    fn masters_carry_the_fields_redis_py_reads() {
        let d = dir(&cluster("a"));
        let r = Session::new(1).handle(&settings(None), &d, &cmd("SENTINEL masters"));
        let Reply::Array(ms) = &r[0] else { panic!("{r:?}") };
        let Reply::Array(fields) = &ms[0] else { panic!() };
        let map: BTreeMap<String, String> = fields
            .chunks(2)
            .map(|kv| match kv {
                [Reply::Bulk(k), Reply::Bulk(v)] => (text(k), text(v)),
                _ => panic!(),
            })
            .collect();
        assert_eq!(map["name"], "ns/cache");
        assert_eq!(map["ip"], "10.0.0.1");
        assert_eq!(map["port"], "6379");
        assert_eq!(map["flags"], "master");
        assert_eq!(map["num-other-sentinels"], "0");
        assert_eq!(map["num-slaves"], "2");
        assert_eq!(map["config-epoch"], "3");
        assert_eq!(map["down-after-milliseconds"], "600");
    }

    #[test]
    fn replicas_that_are_down_or_detached_say_so() {
        let mut c = cluster("a");
        c.shards[0].members[1].upstream = Some("c".into());
        let d = dir(&c);
        let r = Session::new(1).handle(&settings(None), &d, &cmd("SENTINEL replicas ns/cache"));
        let out = encoded(&r);
        assert!(out.contains("$5\r\nflags\r\n$5\r\nslave\r\n"), "{out}");
        assert!(out.contains("$5\r\nflags\r\n$12\r\nslave,s_down\r\n"), "{out}");
        assert!(out.contains("$18\r\nmaster-link-status\r\n$3\r\nerr\r\n"), "{out}");
    }

    #[test]
    fn an_unhealthy_primary_is_reported_down() {
        let mut c = cluster("a");
        c.shards[0].members[0].healthy = false;
        let d = dir(&c);
        let out = encoded(&Session::new(1).handle(&settings(None), &d, &cmd("SENTINEL master ns/cache")));
        assert!(out.contains("master,s_down,o_down"), "{out}");
        let r = Session::new(1).handle(
            &settings(None),
            &d,
            &cmd("SENTINEL is-master-down-by-addr 10.0.0.1 6379 0 *"),
        );
        assert_eq!(r, vec![Reply::Array(vec![Reply::Int(1), Reply::bulk("*"), Reply::Int(0)])]);
    }

    #[test]
    fn a_moved_primary_is_published_as_switch_master() {
        let mut d = dir(&cluster("a"));
        let events = d.replace("ns/cache", masters(&cluster("b")));
        assert!(
            events.contains(&Event::new("+switch-master", "ns/cache 10.0.0.1 6379 10.0.0.1 6380".into())),
            "{events:?}"
        );
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6380);
        // The same status again publishes nothing.
        assert!(d.replace("ns/cache", masters(&cluster("b"))).is_empty());
        // A deleted cluster is no longer served.
        let events = d.replace("ns/cache", Vec::new());
        assert_eq!(events, vec![Event::new("-monitor", "master ns/cache 10.0.0.1 6380".into())]);
        assert!(d.is_empty());
    }

    #[test]
    fn an_announced_promotion_holds_until_status_catches_up() {
        let mut d = dir(&cluster("a"));
        // The decision recorded (epoch 4, target b), then b promoted and announced.
        let mut recorded = cluster("a");
        recorded.shards[0].epoch = 4;
        recorded.shards[0].target = Some("b".into());
        d.replace("ns/cache", masters(&recorded));
        let events = d.announce("ns/cache", 4, "10.0.0.1", 6380);
        assert_eq!(events, vec![Event::new("+switch-master", "ns/cache 10.0.0.1 6379 10.0.0.1 6380".into())]);
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6380);
        // A lagging watch delivers the recorded decision again, or an older status: kept.
        assert!(d.replace("ns/cache", masters(&recorded)).is_empty());
        assert!(d.replace("ns/cache", masters(&cluster("a"))).is_empty());
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6380);
        // The outcome arrives: nothing more to publish, and status rules from here on.
        let mut done = cluster("b");
        done.shards[0].epoch = 4;
        assert!(d.replace("ns/cache", masters(&done)).is_empty());
        let mut later = cluster("a");
        later.shards[0].epoch = 5;
        assert_eq!(d.replace("ns/cache", masters(&later)).len(), 1);
        // An announcement older than status is ignored.
        assert!(d.announce("ns/cache", 4, "10.0.0.1", 6381).is_empty());
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6379);
    }

    #[test]
    fn an_announcement_status_never_confirms_gives_way_to_status() {
        let mut recorded = cluster("a");
        recorded.shards[0].epoch = 4;
        recorded.shards[0].target = Some("b".into());
        let mut d = dir(&recorded);
        d.announce("ns/cache", 4, "10.0.0.1", 6380);
        // Same epoch, no promotion under way, the old primary recorded: status wins.
        let mut abandoned = cluster("a");
        abandoned.shards[0].epoch = 4;
        let events = d.replace("ns/cache", masters(&abandoned));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6379);
        // A master no longer served forgets its announcement.
        d.announce("ns/cache", 4, "10.0.0.1", 6380);
        d.replace("ns/cache", Vec::new());
        d.replace("ns/cache", masters(&recorded));
        assert_eq!(d.get("ns/cache").unwrap().primary.port, 6379);
    }

    #[test]
    fn replacing_one_cluster_leaves_a_longer_named_one_alone() {
        let mut d = dir(&cluster("a"));
        let mut other = cluster("a");
        other.name = "cache-2".into();
        d.replace(&other.key(), masters(&other));
        d.replace("ns/cache", Vec::new());
        assert!(d.get("ns/cache-2").is_some());
        d.replace("ns/cache-2", Vec::new());
        assert!(d.is_empty());
    }

    #[test]
    fn subscribers_hear_channels_and_patterns() {
        let (st, d) = (settings(None), Directory::default());
        let mut s = Session::new(1);
        let r = s.handle(&st, &d, &cmd("SUBSCRIBE +switch-master"));
        assert_eq!(encoded(&r), "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n");
        s.handle(&st, &d, &cmd("PSUBSCRIBE *"));
        let ev = Event::new("+switch-master", "x 1 2 3 4".into());
        let out = s.deliver(&ev);
        assert_eq!(out.len(), 2);
        assert!(s.deliver(&Event::new("+sdown", "m".into())).len() == 1);
        // Only Pub/Sub commands while subscribed.
        let r = s.handle(&st, &d, &cmd("SENTINEL masters"));
        assert!(matches!(&r[0], Reply::Error(e) if e.starts_with("ERR Can't execute")));
        assert_eq!(encoded(&s.handle(&st, &d, &cmd("PING"))), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        s.handle(&st, &d, &cmd("UNSUBSCRIBE"));
        let r = s.handle(&st, &d, &cmd("PUNSUBSCRIBE"));
        assert_eq!(encoded(&r), "*3\r\n$12\r\npunsubscribe\r\n$1\r\n*\r\n:0\r\n");
        assert!(!s.subscribed());
        // Bounded: every message is matched against every subscription.
        let many: Vec<Vec<u8>> = std::iter::once(b"PSUBSCRIBE".to_vec())
            .chain((0..=MAX_SUBSCRIPTIONS).map(|i| format!("p{i}*").into_bytes()))
            .collect();
        assert!(matches!(&s.handle(&st, &d, &many)[0], Reply::Error(_)));
        assert!(!s.subscribed());
        let long = cmd(&format!("PSUBSCRIBE {}", "*".repeat(MAX_CHANNEL + 1)));
        assert!(matches!(&s.handle(&st, &d, &long)[0], Reply::Error(_)));
    }

    #[test]
    fn the_leaders_announcements_reach_exact_subscribers_only() {
        let (st, d) = (settings(None), Directory::default());
        let ev = Event::promoted("ns/c", 7, "10.0.0.5", 6379);
        assert_eq!(Event::parse_promoted(&ev.payload), Some(("ns/c", 7, "10.0.0.5", 6379)));
        let mut fan = Session::new(1);
        fan.handle(&st, &d, &cmd("PSUBSCRIBE *"));
        assert!(
            fan.deliver(&ev).is_empty(),
            "a client's PSUBSCRIBE * is not told the operator's own channel"
        );
        let mut peer = Session::new(2);
        peer.handle(&st, &d, &cmd(&format!("SUBSCRIBE {PROMOTED}")));
        assert_eq!(peer.deliver(&ev).len(), 1);
        for bad in ["", "ns/c", "ns/c 7 h", "ns/c x h 1", "ns/c 7 h 99999", "ns/c 7 h 1 extra", " 7 h 1"] {
            assert_eq!(Event::parse_promoted(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies_parse_back_from_their_encoding() {
        let replies = [
            Reply::Status("OK".into()),
            Reply::err("WRONGPASS no"),
            Reply::Int(-3),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
            Reply::NilArray,
            Reply::Array(vec![Reply::bulk("message"), Reply::Array(vec![Reply::Int(1)]), Reply::bulk("")]),
        ];
        let mut all = Vec::new();
        for r in &replies {
            r.encode(&mut all);
        }
        let mut at = 0;
        for r in &replies {
            let (got, used) = parse_reply(&all[at..]).expect("valid").expect("complete");
            assert_eq!(&got, r);
            at += used;
        }
        assert_eq!(at, all.len());
        // Every strict prefix needs more bytes, never errors.
        let mut one = Vec::new();
        replies[6].encode(&mut one);
        for cut in 0..one.len() {
            assert_eq!(parse_reply(&one[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        for bad in [&b"?x\r\n"[..], b"$5\r\nabcdefg", b"*-2\r\n", b"$-2\r\n", b":x\r\n", b"\r\n"] {
            assert!(parse_reply(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(6) + ":1\r\n";
        assert!(parse_reply(deep.as_bytes()).is_err());
        assert!(parse_reply(format!("${}\r\n", MAX_ARG + 1).as_bytes()).is_err());
    }

    #[test]
    fn a_password_is_required_when_set() {
        let (st, d) = (settings(Some("s3cret")), dir(&cluster("a")));
        let mut s = Session::new(1);
        assert_eq!(s.handle(&st, &d, &cmd("SENTINEL masters")), vec![Reply::err(NOAUTH)]);
        assert_eq!(s.handle(&st, &d, &cmd("AUTH wrong")), vec![Reply::err(WRONGPASS)]);
        assert_eq!(s.handle(&st, &d, &cmd("AUTH someone s3cret")), vec![Reply::err(WRONGPASS)]);
        assert_eq!(s.handle(&st, &d, &cmd("AUTH s3cre")), vec![Reply::err(WRONGPASS)]);
        assert_eq!(s.handle(&st, &d, &cmd("AUTH s3cret")), vec![Reply::Status("OK".into())]);
        assert!(matches!(&s.handle(&st, &d, &cmd("SENTINEL masters"))[0], Reply::Array(m) if m.len() == 1));
        // HELLO carries the credentials too; RESP3 is refused so clients fall back to RESP2.
        let mut s = Session::new(2);
        assert!(
            matches!(&s.handle(&st, &d, &cmd("HELLO 3"))[0], Reply::Error(e) if e.starts_with("NOPROTO"))
        );
        assert!(matches!(&s.handle(&st, &d, &cmd("HELLO 2 AUTH default s3cret"))[0], Reply::Array(_)));
        assert_eq!(s.handle(&st, &d, &cmd("PING")), vec![Reply::Status("PONG".into())]);
        // Without a password configured, AUTH is an error (as Redis answers).
        let mut s = Session::new(3);
        assert!(matches!(&s.handle(&settings(None), &d, &cmd("AUTH x"))[0], Reply::Error(_)));
    }

    #[test]
    fn failover_requests_point_at_the_operator() {
        let r = Session::new(1).handle(
            &settings(None),
            &Directory::default(),
            &cmd("SENTINEL failover ns/cache"),
        );
        assert!(matches!(&r[0], Reply::Error(e) if e.contains("ShardFailover")));
    }

    #[test]
    fn parses_resp_and_inline_requests() {
        let req = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n*1\r\n$4\r\nQUIT\r\n";
        let (args, used) = parse_request(req).unwrap().unwrap();
        assert_eq!(args, vec![b"PING".to_vec(), b"hi".to_vec()]);
        let (args, _) = parse_request(&req[used..]).unwrap().unwrap();
        assert_eq!(args, vec![b"QUIT".to_vec()]);
        // Every prefix of a request needs more bytes; none is an error.
        for cut in 0..used {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse_request(b"ping  now\r\n").unwrap().unwrap().0,
            vec![b"ping".to_vec(), b"now".to_vec()]
        );
        assert!(parse_request(b"*99999999\r\n").is_err());
        assert!(parse_request(b"*1\r\n$99999999\r\n").is_err());
        assert!(parse_request(b"*1\r\n:1\r\n").is_err());
        assert!(parse_request(b"*1\r\n$2\r\nabcd").is_err());
        assert!(parse_request(&vec![b'a'; MAX_ARG + 10]).is_err());
        // Many arguments, each within bounds, never finished: refused once it is too large.
        let mut big = b"*1000\r\n".to_vec();
        while big.len() <= MAX_REQUEST {
            big.extend_from_slice(format!("${MAX_ARG}\r\n").as_bytes());
            big.extend(std::iter::repeat_n(b'x', MAX_ARG));
            big.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_request(&big), Err(ProtocolError("request too large")));
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"+switch-master"));
        assert!(glob(b"+s*", b"+sdown"));
        assert!(!glob(b"+s*", b"-sdown"));
        assert!(glob(b"?sdown", b"-sdown"));
        assert!(glob(b"[+-]sdown", b"-sdown"));
        assert!(!glob(b"[^+-]sdown", b"-sdown"));
        assert!(glob(b"[a-c]x", b"bx"));
        assert!(glob(b"\\*", b"*"));
        assert!(!glob(b"\\*", b"a"));
        assert!(glob(b"a**b", b"ab"));
        assert!(glob(b"[abc", b"a"));
        // A pattern built to backtrack: answered at once, not in exponential time.
        let hostile = "*a".repeat(5000) + "b";
        let t = std::time::Instant::now();
        assert!(!glob(hostile.as_bytes(), "a".repeat(200).as_bytes()));
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }
}
