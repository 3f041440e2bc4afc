//! Warren's DNS resolver for sandboxes (helper "net-policy-dns").
//!
//! Listens on UDP and TCP; identifies the sandbox by the query's source
//! address; answers names its policy does not allow with REFUSED at once;
//! forwards allowed names to the upstream servers, and before answering,
//! opens the firewall for the A records it returns.
//!
//! Per query type, for a name the policy allows:
//! - `A`: forwarded (UDP, falling back to TCP when the answer is truncated);
//!   when the name matches an `allowOut` domain pattern, the A records of
//!   the answer (the queried name's and those of the CNAME chain starting at
//!   it) are passed to [`DnsClients::allow_resolved`], awaited, before the
//!   answer is sent. In `allowlist` mode a CNAME target that no pattern
//!   allows still counts: the user allowed the name they asked for, and its
//!   addresses are what that name resolves to. In `internet` mode names that
//!   match no pattern are answered but open nothing, so they stay subject to
//!   `denyOut` and to the private-range block (no DNS rebinding into the
//!   host's LAN).
//! - `AAAA`, `HTTPS`, `SVCB`, `ANY`: an empty NOERROR answer. Sandboxes are
//!   IPv4-only, and HTTPS/SVCB address hints would point clients at
//!   addresses the firewall has not opened.
//! - anything else (`TXT`, `MX`, `CNAME`, …): forwarded; opens nothing.
//!
//! Unknown sources, non-`IN` classes and names the policy refuses get
//! REFUSED; upstream failures SERVFAIL within [`QUERY_DEADLINE`]. At most
//! [`MAX_IN_FLIGHT`] queries are worked on at once (further UDP queries are
//! dropped, as an overloaded server does; TCP connections wait their turn).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use super::CompiledPolicy;

/// The most queries worked on at once (UDP and TCP together).
pub const MAX_IN_FLIGHT: usize = 1024;
/// The most TCP connections served at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Time allowed for one exchange with one upstream server.
const UPSTREAM_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Time after which a query the upstreams did not answer gets SERVFAIL.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(5);
/// How long a TCP client may stay silent (or take to send a message).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest time the firewall keeps a resolved address open (the
/// shortest is the firewall's business).
const MAX_ALLOW_TTL: u32 = 3600;
/// The size of a DNS header: shorter messages are not DNS.
const HEADER_LEN: usize = 12;
/// The largest UDP message read (queries and upstream answers).
const UDP_BUFFER: usize = 4096;
/// The UDP payload size advertised upstream and to clients (the DNS Flag
/// Day 2020 value, which avoids IP fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
/// The classic UDP limit for clients that do not use EDNS.
const CLASSIC_UDP_LIMIT: usize = 512;
/// How deep a CNAME chain is followed.
const MAX_CNAME_DEPTH: usize = 16;

/// What the resolver asks of the rest of the network code.
#[async_trait]
pub trait DnsClients: Send + Sync {
    /// The sandbox with this source address and its policy.
    fn policy_for(&self, source: Ipv4Addr) -> Option<(String, Arc<CompiledPolicy>)>;
    /// Allows `sandbox` to reach these addresses for `ttl` (the answer's
    /// smallest TTL, at most an hour; the implementation applies its own
    /// minimum). Called, and awaited, before the answer is sent. `policy` is
    /// the one [`policy_for`](Self::policy_for) returned for this query: an
    /// implementation ignores the call when the sandbox's policy has changed
    /// since, so an old query never re-opens what a new policy dropped.
    async fn allow_resolved(
        &self,
        sandbox: &str,
        policy: &Arc<CompiledPolicy>,
        addrs: &[Ipv4Addr],
        ttl: Duration,
    );
}

/// A running resolver. Dropping it stops it (its tasks are aborted and its
/// sockets closed).
pub struct Resolver {
    port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Resolver {
    /// Binds UDP and TCP on `bind` (port 0: a free port, the same for
    /// both) and starts answering. `upstream` are the servers allowed names
    /// are forwarded to (tried in order).
    pub async fn start(
        bind: SocketAddr,
        upstream: Vec<SocketAddr>,
        clients: Arc<dyn DnsClients>,
    ) -> io::Result<Resolver> {
        let (udp, tcp) = bind_pair(bind).await?;
        let port = udp.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            clients,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        tracing::debug!(port, "DNS resolver listening");
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), Arc::clone(&shared))),
            tokio::spawn(serve_tcp(tcp, shared)),
        ];
        Ok(Resolver { port, tasks })
    }

    /// The port the resolver listens on (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // The listener tasks own the JoinSets of the query and connection
        // tasks: aborting them drops those sets, which aborts the rest.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The upstream servers in a `resolv.conf` text (`nameserver` lines, port
/// 53, IPv4 and IPv6, in order, without duplicates). Addresses with a zone
/// (`fe80::1%eth0`) are skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(addr)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let server = SocketAddr::new(addr, 53);
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    servers
}

/// Parses an upstream server given as `IP`, `IP:PORT`, `IPv6` or
/// `[IPv6]:PORT` (port 53 when absent).
pub fn parse_upstream(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .ok()
        .map(|addr| SocketAddr::new(addr, 53))
}

/// State shared by the listener and query tasks.
struct Shared {
    upstream: Vec<SocketAddr>,
    clients: Arc<dyn DnsClients>,
    in_flight: Arc<Semaphore>,
}

/// How a query arrived (decides the largest answer that may be sent).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Binds UDP, then TCP on the port UDP got; when that port is taken for
/// TCP and any port would do, tries again with another.
async fn bind_pair(bind: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut attempt = 0;
    loop {
        let udp = UdpSocket::bind(bind).await?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempt < 8 => {
                tracing::debug!(port = local.port(), "DNS TCP port taken; trying another");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut queries = JoinSet::new();
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let (len, source) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive failed");
                // Never spin on a persistent error.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while queries.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
            tracing::debug!(%source, "too many DNS queries in flight; dropping one");
            continue;
        };
        let query = buffer[..len].to_vec();
        let socket = Arc::clone(&socket);
        let shared = Arc::clone(&shared);
        queries.spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&shared, &query, source, Transport::Udp).await {
                if let Err(e) = socket.send_to(&reply, source).await {
                    tracing::debug!(%source, error = %e, "sending a DNS answer failed");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_TCP_CONNECTIONS {
            tracing::debug!(%source, "too many DNS TCP connections; closing one");
            continue;
        }
        connections.spawn(serve_tcp_connection(stream, source, Arc::clone(&shared)));
    }
}

/// Answers length-prefixed queries on one connection, one at a time, until
/// the client closes it, stays idle or sends something that is not DNS.
async fn serve_tcp_connection(mut stream: TcpStream, source: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Some(query) = read_framed(&mut stream, TCP_IDLE_TIMEOUT).await else {
            return;
        };
        let Ok(permit) = Arc::clone(&shared.in_flight).acquire_owned().await else {
            return;
        };
        let reply = answer(&shared, &query, source, Transport::Tcp).await;
        drop(permit);
        let Some(reply) = reply else {
            tracing::debug!(%source, "closing a DNS TCP connection after a bad message");
            return;
        };
        if write_framed(&mut stream, &reply, TCP_IDLE_TIMEOUT)
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Reads one length-prefixed DNS message (`None`: closed, idle, too short).
async fn read_framed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    timeout(limit, stream.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    if len < HEADER_LEN {
        return None;
    }
    let mut message = vec![0u8; len];
    timeout(limit, stream.read_exact(&mut message))
        .await
        .ok()?
        .ok()?;
    Some(message)
}

/// Writes one length-prefixed DNS message.
async fn write_framed(stream: &mut TcpStream, message: &[u8], limit: Duration) -> Option<()> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    timeout(limit, stream.write_all(&framed)).await.ok()?.ok()
}

/// The encoded answer to one query (`None`: nothing should be sent).
async fn answer(
    shared: &Shared,
    query: &[u8],
    source: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(%source, error = %e, "unparsable DNS message");
            return format_error_for_raw(query);
        }
    };
    if request.message_type() != MessageType::Query {
        tracing::debug!(%source, "ignoring a DNS response sent to the resolver");
        return None;
    }
    let reply = respond(shared, &request, source).await;
    encode(&reply, &request, transport)
}

/// FORMERR for a message whose header is readable and says "query".
fn format_error_for_raw(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// Decides and builds the answer to a parsed query.
async fn respond(shared: &Shared, request: &Message, source: SocketAddr) -> Message {
    if request.op_code() != OpCode::Query {
        return reply_to(request, ResponseCode::NotImp);
    }
    let [query] = request.queries() else {
        return reply_to(request, ResponseCode::FormErr);
    };
    let Some((sandbox, policy)) = source_ipv4(source).and_then(|ip| shared.clients.policy_for(ip))
    else {
        tracing::debug!(%source, "DNS query from an unknown source refused");
        return reply_to(request, ResponseCode::Refused);
    };
    let name = query.name().to_ascii();
    if query.query_class() != DNSClass::IN || !policy.allows_name(&name) {
        tracing::debug!(%sandbox, %name, "DNS name refused by policy");
        return reply_to(request, ResponseCode::Refused);
    }
    match query.query_type() {
        RecordType::AAAA | RecordType::HTTPS | RecordType::SVCB | RecordType::ANY => {
            reply_to(request, ResponseCode::NoError)
        }
        query_type => {
            let opens_firewall = query_type == RecordType::A && policy.matches_domain(&name);
            let outcome = timeout(QUERY_DEADLINE, forward(shared, query)).await;
            let mut response = match outcome {
                Ok(Ok(response)) => response,
                Ok(Err(reason)) => {
                    tracing::debug!(%sandbox, %name, %reason, "DNS upstreams failed");
                    return reply_to(request, ResponseCode::ServFail);
                }
                Err(_) => {
                    tracing::debug!(%sandbox, %name, "DNS upstreams timed out");
                    return reply_to(request, ResponseCode::ServFail);
                }
            };
            if opens_firewall {
                let (addrs, ttl) = resolved_addresses(&response, query.name());
                if !addrs.is_empty() {
                    tracing::debug!(%sandbox, %name, ?addrs, ttl, "opening resolved addresses");
                    shared
                        .clients
                        .allow_resolved(
                            &sandbox,
                            &policy,
                            &addrs,
                            Duration::from_secs(u64::from(ttl)),
                        )
                        .await;
                }
            }
            adopt_upstream_response(&mut response, request);
            response
        }
    }
}

/// The IPv4 address of a query's source (IPv4-mapped IPv6 included).
fn source_ipv4(source: SocketAddr) -> Option<Ipv4Addr> {
    match source.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// A response to `request` with this code, echoing its question.
fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(request.checking_disabled())
        .set_response_code(code);
    reply.add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        reply.set_edns(our_edns());
    }
    reply
}

fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns
}

/// Turns the upstream's response into the answer for the client: its id,
/// its question as written (letter case included), EDNS only if it used it.
fn adopt_upstream_response(response: &mut Message, request: &Message) {
    response
        .set_id(request.id())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_truncated(false);
    *response.queries_mut() = request.queries().to_vec();
    *response.extensions_mut() = request.extensions().as_ref().map(|_| our_edns());
    // Signatures of the upstream's message would not match the new one.
    response.take_signature();
}

/// Encodes an answer, truncating it (TC, question only) when it exceeds
/// what the client accepts over UDP.
fn encode(reply: &Message, request: &Message, transport: Transport) -> Option<Vec<u8>> {
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match request.extensions() {
            Some(edns) => {
                usize::from(edns.max_payload()).clamp(CLASSIC_UDP_LIMIT, usize::from(EDNS_PAYLOAD))
            }
            None => CLASSIC_UDP_LIMIT,
        },
    };
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Some(bytes),
        Ok(_) if transport == Transport::Udp => {
            let mut truncated = reply_to(request, reply.response_code());
            truncated.set_truncated(true);
            truncated.to_vec().ok()
        }
        Ok(_) => reply_to(request, ResponseCode::ServFail).to_vec().ok(),
        Err(e) => {
            tracing::debug!(error = %e, "encoding a DNS answer failed");
            reply_to(request, ResponseCode::ServFail).to_vec().ok()
        }
    }
}

/// The A records of `response` for `name` and the CNAME chain starting at
/// it, and the time to keep them open (their smallest TTL, at most
/// [`MAX_ALLOW_TTL`]).
fn resolved_addresses(response: &Message, name: &Name) -> (Vec<Ipv4Addr>, u32) {
    let mut names = vec![name.clone()];
    for _ in 0..MAX_CNAME_DEPTH {
        let targets: Vec<Name> = response
            .answers()
            .iter()
            .filter(|record| names.contains(record.name()))
            .filter_map(|record| match record.data() {
                Some(RData::CNAME(target)) => Some(target.0.clone()),
                _ => None,
            })
            .filter(|target| !names.contains(target))
            .collect();
        if targets.is_empty() {
            break;
        }
        names.extend(targets);
    }
    let mut seen = HashSet::new();
    let mut addrs = Vec::new();
    let mut ttl = MAX_ALLOW_TTL;
    for record in response.answers() {
        if let (true, Some(RData::A(a))) = (names.contains(record.name()), record.data()) {
            ttl = ttl.min(record.ttl());
            if seen.insert(a.0) {
                addrs.push(a.0);
            }
        }
    }
    (addrs, ttl)
}

/// Asks the upstream servers in turn; the first NOERROR or NXDOMAIN answer
/// wins.
async fn forward(shared: &Shared, query: &Query) -> Result<Message, String> {
    if shared.upstream.is_empty() {
        return Err("no upstream DNS server is configured".into());
    }
    let id: u16 = rand::random();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(query.clone())
        .set_edns(our_edns());
    let bytes = message
        .to_vec()
        .map_err(|e| format!("encoding the upstream query: {e}"))?;
    let mut failures = Vec::new();
    for &upstream in &shared.upstream {
        let mut outcome = exchange_udp(upstream, &bytes, id, query).await;
        if matches!(&outcome, Ok(response) if response.truncated()) {
            outcome = exchange_tcp(upstream, &bytes, id, query).await;
        }
        match outcome {
            Ok(response)
                if matches!(
                    response.response_code(),
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                return Ok(response)
            }
            Ok(response) => failures.push(format!("{upstream}: {}", response.response_code())),
            Err(e) => failures.push(format!("{upstream}: {e}")),
        }
    }
    Err(failures.join("; "))
}

/// Whether `response` answers our query `id` for `query`.
fn answers_query(response: &Message, id: u16, query: &Query) -> bool {
    response.id() == id
        && response.message_type() == MessageType::Response
        && matches!(response.queries(), [q] if q.name() == query.name()
            && q.query_type() == query.query_type())
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> Result<Message, String> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buffer = vec![0u8; UDP_BUFFER];
        loop {
            let len = socket.recv(&mut buffer).await?;
            // Anything else (stale, spoofed, garbage) is ignored.
            if let Ok(response) = Message::from_vec(&buffer[..len]) {
                if answers_query(&response, id, question) {
                    return Ok::<_, io::Error>(response);
                }
            }
        }
    };
    match timeout(UPSTREAM_TRY_TIMEOUT, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(format!("UDP: {e}")),
        Err(_) => Err("UDP: no answer in time".into()),
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> Result<Message, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| e.to_string())?;
        write_framed(&mut stream, query, UPSTREAM_TRY_TIMEOUT)
            .await
            .ok_or("sending failed")?;
        let bytes = read_framed(&mut stream, UPSTREAM_TRY_TIMEOUT)
            .await
            .ok_or("no answer")?;
        let response = Message::from_vec(&bytes).map_err(|e| e.to_string())?;
        if answers_query(&response, id, question) {
            Ok(response)
        } else {
            Err("the answer does not match the query".to_owned())
        }
    };
    match timeout(UPSTREAM_TRY_TIMEOUT, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(format!("TCP: {e}")),
        Err(_) => Err("TCP: no answer in time".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::Record;

    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "\
# generated
search example.internal
nameserver 10.0.0.2
nameserver   1.1.1.1   # comment
;nameserver 9.9.9.9
nameserver 2001:db8::53
nameserver fe80::1%eth0
nameserver not-an-address
nameserver 10.0.0.2
options edns0
nameserver
  nameserver 8.8.8.8
";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "8.8.8.8:53".parse().unwrap(),
            ]
        );
        assert!(upstreams_from_resolv_conf("").is_empty());
        assert!(upstreams_from_resolv_conf("search a.b\n").is_empty());
    }

    #[test]
    fn upstreams_parse_with_and_without_port() {
        assert_eq!(
            parse_upstream("1.2.3.4"),
            Some("1.2.3.4:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("1.2.3.4:5353"),
            Some("1.2.3.4:5353".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("2001:db8::1"),
            Some("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:54"),
            Some("[2001:db8::1]:54".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]"),
            Some("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(parse_upstream("dns.google"), None);
        assert_eq!(parse_upstream("1.2.3.4:99999"), None);
    }

    fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(Name::from_str(name).unwrap(), ttl, RData::A(A(ip.into())))
    }

    fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::CNAME(CNAME(Name::from_str(target).unwrap())),
        )
    }

    #[test]
    fn resolved_addresses_follow_the_cname_chain_only() {
        let mut response = Message::new();
        response.add_answers([
            cname("www.example.com.", 300, "edge.cdn.net."),
            cname("edge.cdn.net.", 600, "node.cdn.net."),
            a("node.cdn.net.", 120, [198, 51, 100, 1]),
            a("node.cdn.net.", 3000, [198, 51, 100, 2]),
            a("node.cdn.net.", 3000, [198, 51, 100, 2]),
            a("unrelated.evil.net.", 10, [10, 0, 0, 1]),
        ]);
        let (addrs, ttl) =
            resolved_addresses(&response, &Name::from_str("WWW.example.com.").unwrap());
        assert_eq!(
            addrs,
            vec![
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2)
            ]
        );
        assert_eq!(ttl, 120);
    }

    #[test]
    fn resolved_ttl_is_bounded() {
        let name = Name::from_str("a.example.com.").unwrap();
        let mut short = Message::new();
        short.add_answer(a("a.example.com.", 5, [203, 0, 113, 1]));
        assert_eq!(resolved_addresses(&short, &name).1, 5);
        let mut long = Message::new();
        long.add_answer(a("a.example.com.", 86400, [203, 0, 113, 1]));
        assert_eq!(resolved_addresses(&long, &name).1, MAX_ALLOW_TTL);
        let (addrs, _) = resolved_addresses(&Message::new(), &name);
        assert!(addrs.is_empty());
    }

    #[test]
    fn cname_loops_end() {
        let mut response = Message::new();
        response.add_answers([
            cname("a.example.com.", 60, "b.example.com."),
            cname("b.example.com.", 60, "a.example.com."),
        ]);
        let (addrs, _) = resolved_addresses(&response, &Name::from_str("a.example.com.").unwrap());
        assert!(addrs.is_empty());
    }

    #[test]
    fn garbage_gets_formerr_only_when_it_looks_like_a_query() {
        assert_eq!(format_error_for_raw(b"short"), None);
        let mut header = [0u8; 12];
        header[0] = 0x12;
        header[1] = 0x34;
        header[2] = 0x80; // a response: never answered
        assert_eq!(format_error_for_raw(&header), None);
        header[2] = 0;
        let reply = Message::from_vec(&format_error_for_raw(&header).unwrap()).unwrap();
        assert_eq!(reply.id(), 0x1234);
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let mut request = Message::new();
        request.set_id(7).add_query(Query::query(
            Name::from_str("big.example.com.").unwrap(),
            RecordType::A,
        ));
        let mut reply = reply_to(&request, ResponseCode::NoError);
        for i in 0..60u8 {
            reply.add_answer(a("big.example.com.", 60, [198, 51, 100, i]));
        }
        let udp = Message::from_vec(&encode(&reply, &request, Transport::Udp).unwrap()).unwrap();
        assert!(udp.truncated());
        assert!(udp.answers().is_empty());
        assert_eq!(udp.id(), 7);
        assert_eq!(udp.queries().len(), 1);
        let tcp = Message::from_vec(&encode(&reply, &request, Transport::Tcp).unwrap()).unwrap();
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 60);
    }
}
