//! A simulator of many reference agents in one process, for the scale and storm benchmarks.
//!
//! Member `g` (a global index) listens on its own loopback address [`addr`]`(g)`, port
//! [`PORT`], and speaks the agent's HA-status protocol (seed 004): `GET /rest/ha/status` →
//! `MAIN` | `BACKUP`, `POST /rest/ha/status?change=MAIN|BACKUP`, `Authorization: token <T>`.
//! Every member starts as `BACKUP`, like a real agent. A member is killed by a line
//! `kill <g>` on stdin: its listener closes (new connections are refused) and its open
//! connections are dropped, as when the agent's process dies. `count` prints how many
//! requests were answered so far. The HTTP/1.1 handling is hand-written and minimal so that
//! one core can answer tens of thousands of heartbeats per second.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// The port every simulated member listens on (each on its own address).
pub const PORT: u16 = 7400;
/// Members per simulator process: a listener and a connection each, well inside a
/// 20,000-descriptor limit.
pub const PER_PROCESS: usize = 6000;

/// Loopback address of member `g`: 127.b.c.d with c, d in 1..=250 (never .0 or .255).
pub fn addr(g: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, (1 + g / 62_500) as u8, (1 + (g / 250) % 250) as u8, (1 + g % 250) as u8)
}

pub fn endpoint(g: usize) -> String {
    format!("{}:{PORT}", addr(g))
}

struct Member {
    main: AtomicU8,
    dead: AtomicBool,
    killed: Notify,
}

/// Serve members `first .. first + count` until stdin closes.
pub async fn run(first: usize, count: usize, token: String) -> anyhow::Result<()> {
    // A listener and a kept-alive connection per member.
    let files = understudy::operator::raise_file_limit();
    anyhow::ensure!(
        files as usize > 2 * count + 64,
        "the open-files limit ({files}) is too low for {count} simulated members; raise `ulimit -Hn`"
    );
    let served = Arc::new(AtomicU64::new(0));
    let auth = Arc::new(format!("token {token}"));
    let mut members = Vec::with_capacity(count);
    for g in first..first + count {
        let listener = TcpListener::bind((addr(g), PORT)).await?;
        let m =
            Arc::new(Member { main: AtomicU8::new(0), dead: AtomicBool::new(false), killed: Notify::new() });
        members.push(m.clone());
        tokio::spawn(serve(listener, m, auth.clone(), served.clone()));
    }
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|w| w.parse::<usize>().ok())) {
            (Some("kill"), Some(g)) if (first..first + count).contains(&g) => {
                let m = &members[g - first];
                m.dead.store(true, Ordering::SeqCst);
                m.killed.notify_waiters();
            }
            (Some("count"), _) => println!("count {}", served.load(Ordering::SeqCst)),
            _ => eprintln!("simulator: ignoring {line:?}"),
        }
    }
    Ok(())
}

async fn serve(listener: TcpListener, m: Arc<Member>, auth: Arc<String>, served: Arc<AtomicU64>) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = m.killed.notified() => return,
        };
        let Ok((stream, _)) = conn else { continue };
        if m.dead.load(Ordering::SeqCst) {
            return;
        }
        let (m, auth, served) = (m.clone(), auth.clone(), served.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(stream, &m, &auth, &served) => {}
                () = m.killed.notified() => {}
            }
        });
    }
}

/// Answer requests on one connection until the peer closes it.
async fn connection(stream: TcpStream, m: &Member, auth: &str, served: &AtomicU64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let request = line.trim_end().to_owned();
        let (mut authorized, mut body_len, mut close) = (false, 0usize, false);
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "authorization" => authorized = value == auth,
                "content-length" => body_len = value.parse().unwrap_or(0),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        if body_len > 0 {
            let mut skip = vec![0; body_len.min(1 << 16)];
            reader.read_exact(&mut skip).await?;
        }
        if m.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (code, body) = if !authorized {
            ("401 Unauthorized", "unauthorized")
        } else if request.starts_with("GET /rest/ha/status") {
            ("200 OK", if m.main.load(Ordering::SeqCst) == 1 { "MAIN" } else { "BACKUP" })
        } else if request.starts_with("POST /rest/ha/status?change=MAIN") {
            m.main.store(1, Ordering::SeqCst);
            ("200 OK", "MAIN")
        } else if request.starts_with("POST /rest/ha/status?change=BACKUP") {
            m.main.store(0, Ordering::SeqCst);
            ("200 OK", "BACKUP")
        } else {
            ("404 Not Found", "not found")
        };
        served.fetch_add(1, Ordering::Relaxed);
        let response = format!(
            "HTTP/1.1 {code}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}
