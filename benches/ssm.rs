//! Data-channel benchmarks on loopback, against the fake agent of the
//! integration tests (in this process, so its own work is included):
//!
//! * interactive echo latency: one keystroke to the agent and back,
//!   p50/p99 over many round trips, next to a raw TCP echo on loopback;
//! * bulk output throughput: the agent streams N bytes of terminal output;
//! * port forwarding throughput: a TCP echo through the smux tunnel.
//!
//! Run: `cargo bench --bench ssm` (prints the percentiles first, then the
//! criterion measurements).

#![allow(clippy::unwrap_used)] // a benchmark fails loudly

#[path = "../tests/it/support/fake_aws/mod.rs"]
mod fake_aws;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use pam::ssm::{Event, Options, Session};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUND_TRIPS: usize = 5000;
const BULK: usize = 32 << 20;
const PORT_BULK: usize = 16 << 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fake, mut session) = runtime.block_on(async {
        let fake = fake_aws::FakeAws::start(None).await;
        let session = echo_session(&fake, "bench").await;
        (fake, session)
    });

    // Percentiles, which criterion does not report.
    runtime.block_on(async {
        let tcp = tcp_round_trips(ROUND_TRIPS).await;
        let channel = channel_round_trips(&mut session, ROUND_TRIPS).await;
        report("raw TCP echo (loopback)", &tcp);
        report("data channel echo", &channel);
        let added = |p: f64| percentile(&channel, p).saturating_sub(percentile(&tcp, p));
        println!(
            "added by the data channel: p50 {:?}, p99 {:?}",
            added(0.50),
            added(0.99)
        );
        let start = Instant::now();
        bulk(&mut session, BULK).await;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "bulk output: {} MiB in {seconds:.2} s = {:.1} MiB/s",
            BULK >> 20,
            (BULK as f64 / (1 << 20) as f64) / seconds
        );
        let seconds = port_echo(&fake, PORT_BULK).await;
        println!(
            "smux port echo: {} MiB each way in {seconds:.2} s = {:.1} MiB/s",
            PORT_BULK >> 20,
            (PORT_BULK as f64 / (1 << 20) as f64) / seconds
        );
    });

    let session = std::sync::Arc::new(tokio::sync::Mutex::new(session));
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    criterion.bench_function("ssm/echo_one_keystroke", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let session = session.clone();
            async move {
                let mut session = session.lock().await;
                let start = Instant::now();
                for _ in 0..iterations {
                    round_trip(&mut session).await;
                }
                start.elapsed()
            }
        })
    });
    let mut group = criterion.benchmark_group("ssm/bulk_output");
    group.throughput(Throughput::Bytes(4 << 20));
    group.bench_function("4MiB", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let session = session.clone();
            async move {
                let mut session = session.lock().await;
                let start = Instant::now();
                for _ in 0..iterations {
                    bulk(&mut session, 4 << 20).await;
                }
                start.elapsed()
            }
        })
    });
    group.finish();
    criterion.final_summary();
    drop(fake);
}

async fn echo_session(fake: &fake_aws::FakeAws, id: &str) -> Session {
    let (url, token) = fake.create_session(id, "i-bench", fake_aws::App::Echo, "Standard_Stream");
    Session::connect(
        &url,
        &SecretString::from(token),
        Options::new(id, "i-bench"),
    )
    .await
    .unwrap()
}

async fn round_trip(session: &mut Session) {
    session.send_input(b"x").await.unwrap();
    match session.recv().await {
        Some(Event::Output(bytes)) if bytes.len() == 1 => {}
        other => panic!("unexpected {other:?}"),
    }
}

async fn channel_round_trips(session: &mut Session, n: usize) -> Vec<Duration> {
    for _ in 0..200 {
        round_trip(session).await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        round_trip(session).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

async fn tcp_round_trips(n: usize) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        while socket.read_exact(&mut byte).await.is_ok() {
            socket.write_all(&byte).await.unwrap();
        }
    });
    let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
    client.set_nodelay(true).unwrap();
    let mut samples = Vec::with_capacity(n);
    let mut byte = [0u8; 1];
    for i in 0..n + 200 {
        let start = Instant::now();
        client.write_all(b"x").await.unwrap();
        client.read_exact(&mut byte).await.unwrap();
        if i >= 200 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    samples
}

async fn bulk(session: &mut Session, total: usize) {
    session
        .send_input(format!("\0bulk:{total}").as_bytes())
        .await
        .unwrap();
    let mut received = 0;
    while received < total {
        match session.recv().await {
            Some(Event::Output(bytes)) => received += bytes.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Seconds to push `total` bytes through a smux stream to a TCP echo and back.
async fn port_echo(fake: &fake_aws::FakeAws, total: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = socket.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let port = pam::ecs::open_port(&fake.aws(), "i-bench", "127.0.0.1", address.port())
        .await
        .unwrap();
    let stream = port.connect().await.unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < total {
        let n = r.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the echo ended early");
        received += n;
    }
    let seconds = start.elapsed().as_secs_f64();
    writer.await.unwrap();
    port.close().await.unwrap();
    seconds
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(label: &str, sorted: &[Duration]) {
    println!(
        "{label}: n={} p50 {:?} p90 {:?} p99 {:?} max {:?}",
        sorted.len(),
        percentile(sorted, 0.50),
        percentile(sorted, 0.90),
        percentile(sorted, 0.99),
        sorted[sorted.len() - 1]
    );
}
