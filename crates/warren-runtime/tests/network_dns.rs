#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sandbox DNS resolver over real UDP and TCP sockets on loopback: a
//! fake upstream server written here answers a few test names, a test
//! `DnsClients` maps source addresses to policies and records what the
//! resolver opens. Not privileged.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;
use warren_runtime::network::dns::{DnsClients, Resolver};
use warren_runtime::network::{compile, CompiledPolicy, NetMode};

/// The client address mapped to an allowlist policy.
const ALLOWLIST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Mapped to nothing.
const UNKNOWN_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Mapped to an internet policy that names one domain.
const INTERNET_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Mapped to a `none` policy.
const NONE_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// How long `allow_resolved` takes: the answer must not arrive before it
/// has finished.
const ALLOW_DELAY: Duration = Duration::from_millis(300);

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// The fake upstream's zone.
fn zone(query: &Name, query_type: RecordType) -> Option<Vec<Record>> {
    let a =
        |owner: &str, ttl: u32, ip: Ipv4Addr| Record::from_rdata(name(owner), ttl, RData::A(A(ip)));
    let lower = query.to_lowercase().to_ascii();
    let records = match lower.as_str() {
        "web.warren.test." => vec![a(&lower, 30, Ipv4Addr::new(198, 51, 100, 7))],
        "x.y.wild.warren.test." => vec![
            a(&lower, 300, Ipv4Addr::new(198, 51, 100, 8)),
            a(&lower, 200, Ipv4Addr::new(198, 51, 100, 9)),
        ],
        "wild.warren.test." => vec![a(&lower, 300, Ipv4Addr::new(198, 51, 100, 10))],
        "alias.warren.test." => vec![
            Record::from_rdata(
                name(&lower),
                600,
                RData::CNAME(CNAME(name("target.elsewhere.test."))),
            ),
            a("target.elsewhere.test.", 900, Ipv4Addr::new(203, 0, 113, 9)),
            // Not part of the chain: never opened.
            a("stray.elsewhere.test.", 900, Ipv4Addr::new(10, 9, 9, 9)),
        ],
        "big.warren.test." => (0..120u8)
            .map(|i| a(&lower, 120, Ipv4Addr::new(198, 51, 100, i)))
            .collect(),
        "free.warren.test." | "denied.warren.test." => {
            vec![a(&lower, 120, Ipv4Addr::new(198, 51, 100, 99))]
        }
        _ => return None,
    };
    // Names other than A queries exist but have no data of that type.
    Some(if query_type == RecordType::A {
        records
    } else {
        Vec::new()
    })
}

/// A fake upstream DNS server on 127.0.0.1 (UDP and TCP on one port).
struct FakeUpstream {
    addr: SocketAddr,
    /// Every question it was asked, lowercase.
    asked: Arc<Mutex<Vec<(String, RecordType)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeUpstream {
    async fn start() -> FakeUpstream {
        // UDP and TCP on one port: an ephemeral UDP port may be taken for
        // TCP by someone else, so try again with another.
        let mut attempts = 0;
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            match TcpListener::bind(udp.local_addr().unwrap()).await {
                Ok(tcp) => break (Arc::new(udp), tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                    attempts += 1;
                }
                Err(e) => panic!("binding the fake upstream: {e}"),
            }
        };
        let addr = udp.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let udp_asked = Arc::clone(&asked);
        let udp_task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
                let Some(reply) = upstream_answer(&buffer[..len], &udp_asked, true) else {
                    continue;
                };
                udp.send_to(&reply, from).await.unwrap();
            }
        });
        let tcp_asked = Arc::clone(&asked);
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let asked = Arc::clone(&tcp_asked);
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let Some(reply) = upstream_answer(&query, &asked, false) else {
                        return;
                    };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    let _ = stream.write_all(&framed).await;
                });
            }
        });
        FakeUpstream {
            addr,
            asked,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn asked(&self) -> Vec<(String, RecordType)> {
        self.asked.lock().unwrap().clone()
    }

    fn was_asked(&self, query: &str) -> bool {
        self.asked().iter().any(|(n, _)| n == query)
    }
}

/// The fake upstream's answer; over UDP, answers larger than the query's
/// EDNS size come back truncated.
fn upstream_answer(
    query: &[u8],
    asked: &Mutex<Vec<(String, RecordType)>>,
    udp: bool,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries().first()?.clone();
    asked.lock().unwrap().push((
        question.name().to_lowercase().to_ascii(),
        question.query_type(),
    ));
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match zone(question.name(), question.query_type()) {
        Some(records) => {
            reply.add_answers(records);
        }
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    let bytes = reply.to_vec().ok()?;
    let limit = request
        .extensions()
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()));
    if udp && bytes.len() > limit {
        let mut truncated = Message::new();
        truncated
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_truncated(true)
            .add_query(question);
        return truncated.to_vec().ok();
    }
    Some(bytes)
}

/// One `allow_resolved` call.
#[derive(Debug, Clone)]
struct Allowed {
    sandbox: String,
    addrs: Vec<Ipv4Addr>,
    ttl: Duration,
    finished: Instant,
    /// Whether the policy passed is the very one `policy_for` handed out.
    same_policy: bool,
}

/// Maps source addresses to policies; records what the resolver opens.
struct TestClients {
    policies: HashMap<Ipv4Addr, (String, Arc<CompiledPolicy>)>,
    allowed: Mutex<Vec<Allowed>>,
}

#[async_trait]
impl DnsClients for TestClients {
    fn policy_for(&self, source: Ipv4Addr) -> Option<(String, Arc<CompiledPolicy>)> {
        self.policies.get(&source).cloned()
    }

    async fn allow_resolved(
        &self,
        sandbox: &str,
        policy: &Arc<CompiledPolicy>,
        addrs: &[Ipv4Addr],
        ttl: Duration,
    ) {
        tokio::time::sleep(ALLOW_DELAY).await;
        let same_policy = self
            .policies
            .values()
            .any(|(id, p)| id == sandbox && Arc::ptr_eq(p, policy));
        self.allowed.lock().unwrap().push(Allowed {
            sandbox: sandbox.to_owned(),
            addrs: addrs.to_vec(),
            ttl,
            finished: Instant::now(),
            same_policy,
        });
    }
}

impl TestClients {
    fn new() -> Arc<TestClients> {
        let policy = |mode, allow: &[&str]| {
            let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
            Arc::new(compile(mode, &allow, &[]).unwrap())
        };
        let mut policies = HashMap::new();
        policies.insert(
            ALLOWLIST_SOURCE,
            (
                "sb-allow".to_owned(),
                policy(
                    NetMode::Allowlist,
                    &[
                        "web.warren.test",
                        "*.wild.warren.test",
                        "alias.warren.test",
                        "big.warren.test",
                        "missing.warren.test",
                        "198.51.100.0/24",
                    ],
                ),
            ),
        );
        policies.insert(
            INTERNET_SOURCE,
            (
                "sb-internet".to_owned(),
                policy(NetMode::Internet, &["web.warren.test"]),
            ),
        );
        policies.insert(
            NONE_SOURCE,
            (
                "sb-none".to_owned(),
                policy(NetMode::None, &["web.warren.test"]),
            ),
        );
        Arc::new(TestClients {
            policies,
            allowed: Mutex::new(Vec::new()),
        })
    }

    fn allowed(&self) -> Vec<Allowed> {
        self.allowed.lock().unwrap().clone()
    }
}

/// A resolver in front of the fake upstream, with the test clients.
struct Setup {
    upstream: FakeUpstream,
    clients: Arc<TestClients>,
    resolver: Resolver,
}

impl Setup {
    async fn start() -> Setup {
        let upstream = FakeUpstream::start().await;
        let clients = TestClients::new();
        let resolver = Resolver::start(
            "127.0.0.1:0".parse().unwrap(),
            vec![upstream.addr],
            Arc::clone(&clients) as Arc<dyn DnsClients>,
        )
        .await
        .unwrap();
        Setup {
            upstream,
            clients,
            resolver,
        }
    }

    fn server(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.resolver.port()))
    }
}

fn query_message(id: u16, query_name: &str, query_type: RecordType, edns: bool) -> Message {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(query_name), query_type));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    message
}

/// Sends a query over UDP from `from` and returns the answer and when it
/// arrived.
async fn udp_query(
    server: SocketAddr,
    from: Ipv4Addr,
    query_name: &str,
    query_type: RecordType,
) -> (Message, Instant) {
    let id = rand::random();
    let message = query_message(id, query_name, query_type, false);
    let (reply, arrived) = udp_exchange(server, from, &message.to_vec().unwrap()).await;
    let reply = reply.expect("no answer in time");
    assert_eq!(reply.id(), id);
    (reply, arrived)
}

/// Sends raw bytes over UDP; waits up to 6 s for an answer.
async fn udp_exchange(
    server: SocketAddr,
    from: Ipv4Addr,
    bytes: &[u8],
) -> (Option<Message>, Instant) {
    let socket = UdpSocket::bind(SocketAddr::from((from, 0))).await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0u8; 65536];
    let received = tokio::time::timeout(Duration::from_secs(6), socket.recv(&mut buffer)).await;
    let arrived = Instant::now();
    match received {
        Ok(Ok(len)) => (Some(Message::from_vec(&buffer[..len]).unwrap()), arrived),
        _ => (None, arrived),
    }
}

/// Sends a query over TCP from `from`.
async fn tcp_query(
    server: SocketAddr,
    from: Ipv4Addr,
    query_name: &str,
    query_type: RecordType,
) -> (Message, Instant) {
    let id = rand::random();
    let message = query_message(id, query_name, query_type, false);
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let bytes = message.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    };
    let reply = tokio::time::timeout(Duration::from_secs(6), read)
        .await
        .expect("no TCP answer in time");
    let arrived = Instant::now();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.id(), id);
    (reply, arrived)
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::A(a)) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn allowed_name_is_answered_after_the_firewall_opens() {
    let setup = Setup::start().await;
    for transport in ["udp", "tcp"] {
        let before = setup.clients.allowed().len();
        let started = Instant::now();
        let (reply, arrived) = if transport == "udp" {
            udp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "WEB.Warren.test.",
                RecordType::A,
            )
            .await
        } else {
            tcp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "WEB.Warren.test.",
                RecordType::A,
            )
            .await
        };
        assert_eq!(reply.response_code(), ResponseCode::NoError, "{transport}");
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(a_records(&reply), vec![Ipv4Addr::new(198, 51, 100, 7)]);
        // The question comes back as written (letter case included).
        assert_eq!(reply.queries()[0].name().to_ascii(), "WEB.Warren.test.");
        let allowed = setup.clients.allowed();
        assert_eq!(allowed.len(), before + 1, "{transport}");
        let call = &allowed[before];
        assert_eq!(call.sandbox, "sb-allow");
        assert_eq!(call.addrs, vec![Ipv4Addr::new(198, 51, 100, 7)]);
        // The answer's TTL as is: the firewall applies its minimum.
        assert_eq!(call.ttl, Duration::from_secs(30));
        assert!(call.same_policy, "the policy the query was decided under");
        assert!(
            call.finished <= arrived,
            "{transport}: the answer arrived before allow_resolved finished"
        );
        assert!(arrived - started >= ALLOW_DELAY);
    }
}

#[tokio::test]
async fn wildcard_matches_names_below_only() {
    let setup = Setup::start().await;
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "x.y.wild.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    let allowed = setup.clients.allowed();
    assert_eq!(allowed.len(), 1);
    assert_eq!(
        allowed[0].addrs,
        vec![
            Ipv4Addr::new(198, 51, 100, 8),
            Ipv4Addr::new(198, 51, 100, 9)
        ]
    );
    assert_eq!(allowed[0].ttl, Duration::from_secs(200), "the smallest TTL");

    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "wild.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(!setup.upstream.was_asked("wild.warren.test."));
    assert_eq!(setup.clients.allowed().len(), 1);
}

#[tokio::test]
async fn disallowed_name_is_refused_at_once() {
    let setup = Setup::start().await;
    for transport in ["udp", "tcp"] {
        let started = Instant::now();
        let (reply, arrived) = if transport == "udp" {
            udp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "free.warren.test.",
                RecordType::A,
            )
            .await
        } else {
            tcp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "free.warren.test.",
                RecordType::A,
            )
            .await
        };
        assert_eq!(reply.response_code(), ResponseCode::Refused, "{transport}");
        assert!(reply.answers().is_empty());
        assert!(
            arrived - started < Duration::from_millis(500),
            "{transport}: refusal took {:?}",
            arrived - started
        );
    }
    assert!(!setup.upstream.was_asked("free.warren.test."));
    assert!(setup.clients.allowed().is_empty());
}

#[tokio::test]
async fn cname_chain_addresses_count_for_the_queried_name() {
    let setup = Setup::start().await;
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "alias.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(a_records(&reply).contains(&Ipv4Addr::new(203, 0, 113, 9)));
    let allowed = setup.clients.allowed();
    assert_eq!(allowed.len(), 1);
    // The target's address, not the stray record outside the chain.
    assert_eq!(allowed[0].addrs, vec![Ipv4Addr::new(203, 0, 113, 9)]);
    assert_eq!(allowed[0].ttl, Duration::from_secs(900));
}

#[tokio::test]
async fn aaaa_gets_an_empty_answer_without_asking_upstream() {
    let setup = Setup::start().await;
    for transport in ["udp", "tcp"] {
        let (reply, _) = if transport == "udp" {
            udp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "web.warren.test.",
                RecordType::AAAA,
            )
            .await
        } else {
            tcp_query(
                setup.server(),
                ALLOWLIST_SOURCE,
                "web.warren.test.",
                RecordType::AAAA,
            )
            .await
        };
        assert_eq!(reply.response_code(), ResponseCode::NoError, "{transport}");
        assert!(reply.answers().is_empty());
        assert_eq!(reply.queries()[0].query_type(), RecordType::AAAA);
    }
    // A disallowed name stays refused whatever the type.
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "free.warren.test.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(setup.upstream.asked().is_empty());
    assert!(setup.clients.allowed().is_empty());
}

#[tokio::test]
async fn other_types_are_forwarded_without_opening_anything() {
    let setup = Setup::start().await;
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "web.warren.test.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(setup
        .upstream
        .asked()
        .contains(&("web.warren.test.".to_owned(), RecordType::TXT)));
    assert!(setup.clients.allowed().is_empty());
}

#[tokio::test]
async fn nxdomain_passes_through() {
    let setup = Setup::start().await;
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "missing.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert!(setup.clients.allowed().is_empty());
}

#[tokio::test]
async fn unknown_source_and_none_mode_are_refused() {
    let setup = Setup::start().await;
    for source in [UNKNOWN_SOURCE, NONE_SOURCE] {
        let (reply, _) = udp_query(setup.server(), source, "web.warren.test.", RecordType::A).await;
        assert_eq!(reply.response_code(), ResponseCode::Refused, "{source}");
        let (reply, _) = tcp_query(setup.server(), source, "web.warren.test.", RecordType::A).await;
        assert_eq!(reply.response_code(), ResponseCode::Refused, "{source}");
    }
    assert!(setup.upstream.asked().is_empty());
    assert!(setup.clients.allowed().is_empty());
}

#[tokio::test]
async fn internet_mode_answers_everything_but_opens_only_named_domains() {
    let setup = Setup::start().await;
    let (reply, _) = udp_query(
        setup.server(),
        INTERNET_SOURCE,
        "free.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&reply), vec![Ipv4Addr::new(198, 51, 100, 99)]);
    assert!(setup.clients.allowed().is_empty());

    let (reply, _) = udp_query(
        setup.server(),
        INTERNET_SOURCE,
        "web.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    let allowed = setup.clients.allowed();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0].sandbox, "sb-internet");
    assert_eq!(allowed[0].addrs, vec![Ipv4Addr::new(198, 51, 100, 7)]);

    let (reply, _) = udp_query(
        setup.server(),
        INTERNET_SOURCE,
        "nowhere.warren.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let setup = Setup::start().await;
    // The upstream truncates over UDP, so the resolver asks it over TCP;
    // the client (no EDNS: 512 bytes) gets TC and retries over TCP.
    let (reply, _) = udp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "big.warren.test.",
        RecordType::A,
    )
    .await;
    assert!(reply.truncated());
    assert!(reply.answers().is_empty());
    let (reply, _) = tcp_query(
        setup.server(),
        ALLOWLIST_SOURCE,
        "big.warren.test.",
        RecordType::A,
    )
    .await;
    assert!(!reply.truncated());
    assert_eq!(a_records(&reply).len(), 120);
    let allowed = setup.clients.allowed();
    assert_eq!(allowed.last().unwrap().addrs.len(), 120);
}

#[tokio::test]
async fn garbage_does_not_kill_the_resolver() {
    let setup = Setup::start().await;
    let server = setup.server();
    // Not DNS at all: no answer.
    let (reply, _) = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(b"\x01", server).await.unwrap();
        socket.send_to(&[0xff; 600], server).await.unwrap();
        socket.send_to(&[], server).await.unwrap();
        let mut buffer = [0u8; 512];
        let got = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buffer)).await;
        (got.ok(), ())
    };
    assert!(reply.is_none(), "garbage was answered");
    // A query header with a broken body: FORMERR with its id.
    let mut broken = query_message(0x4242, "web.warren.test.", RecordType::A, false)
        .to_vec()
        .unwrap();
    broken.truncate(20);
    let (reply, _) = udp_exchange(server, ALLOWLIST_SOURCE, &broken).await;
    let reply = reply.expect("a broken query gets FORMERR");
    assert_eq!(reply.id(), 0x4242);
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    // A response sent to the resolver is ignored.
    let mut response = query_message(7, "web.warren.test.", RecordType::A, false);
    response.set_message_type(MessageType::Response);
    let (reply, _) = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(&response.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let got = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buffer)).await;
        (got.ok(), ())
    };
    assert!(reply.is_none(), "a response was answered");
    // TCP garbage: a short frame, then a huge length and a close.
    for junk in [&b"\x00\x03abc"[..], &b"\xff\xff\x00\x01"[..], &b"\x00"[..]] {
        let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
        stream.write_all(junk).await.unwrap();
        drop(stream);
    }
    // Still serving, both ways.
    let (reply, _) = udp_query(server, ALLOWLIST_SOURCE, "web.warren.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    let (reply, _) = tcp_query(server, ALLOWLIST_SOURCE, "web.warren.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
}

#[tokio::test]
async fn upstream_down_gives_servfail_quickly() {
    // A port nobody listens on (refused at once) and one that never answers.
    let closed = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (upstream, limit) in [
        (vec![closed], Duration::from_secs(1)),
        (vec![silent.local_addr().unwrap()], Duration::from_secs(4)),
        (vec![], Duration::from_secs(1)),
    ] {
        let clients = TestClients::new();
        let resolver = Resolver::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream.clone(),
            Arc::clone(&clients) as Arc<dyn DnsClients>,
        )
        .await
        .unwrap();
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, resolver.port()));
        let started = Instant::now();
        let (reply, arrived) =
            udp_query(server, ALLOWLIST_SOURCE, "web.warren.test.", RecordType::A).await;
        assert_eq!(
            reply.response_code(),
            ResponseCode::ServFail,
            "{upstream:?}"
        );
        assert!(
            arrived - started < limit,
            "{upstream:?}: SERVFAIL took {:?}",
            arrived - started
        );
        assert!(clients.allowed().is_empty());
    }
}

#[tokio::test]
async fn second_upstream_is_tried_when_the_first_fails() {
    let closed = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let upstream = FakeUpstream::start().await;
    let clients = TestClients::new();
    let resolver = Resolver::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![closed, upstream.addr],
        Arc::clone(&clients) as Arc<dyn DnsClients>,
    )
    .await
    .unwrap();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, resolver.port()));
    let (reply, _) = udp_query(server, ALLOWLIST_SOURCE, "web.warren.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&reply), vec![Ipv4Addr::new(198, 51, 100, 7)]);
}

#[tokio::test]
async fn many_concurrent_queries_are_all_answered() {
    let setup = Setup::start().await;
    let server = setup.server();
    let queries: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let query_name = if i % 2 == 0 {
                    "web.warren.test."
                } else {
                    "free.warren.test."
                };
                udp_query(server, ALLOWLIST_SOURCE, query_name, RecordType::A)
                    .await
                    .0
                    .response_code()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for query in queries {
        codes.push(query.await.unwrap());
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ResponseCode::NoError)
            .count(),
        100
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ResponseCode::Refused)
            .count(),
        100
    );
}

#[tokio::test]
async fn dropping_the_resolver_closes_its_port() {
    let setup = Setup::start().await;
    let port = setup.resolver.port();
    let Setup {
        upstream: _upstream,
        clients: _clients,
        resolver,
    } = setup;
    drop(resolver);
    // Let the runtime drop the aborted tasks and their sockets.
    let mut freed = false;
    for _ in 0..50 {
        if std::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), port)).is_ok()
            && std::net::UdpSocket::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), port)).is_ok()
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "port {port} still in use after drop");
}
