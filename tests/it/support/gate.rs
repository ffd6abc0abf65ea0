//! A TCP forwarder that can be closed and opened again, to make a real
//! peer (moto) unreachable for a while: closed, its port refuses
//! connections and every forwarded connection is cut.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

pub struct Gate {
    pub url: String,
    addr: SocketAddr,
    upstream: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Gate {
    /// Forwards a port on loopback to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Gate {
        let upstream = url::Url::parse(upstream).unwrap();
        let upstream: SocketAddr = format!(
            "{}:{}",
            upstream.host_str().unwrap(),
            upstream.port_or_known_default().unwrap()
        )
        .parse()
        .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut gate = Gate {
            url: format!("http://{addr}"),
            addr,
            upstream,
            runtime: None,
        };
        gate.open();
        gate
    }

    pub fn open(&mut self) {
        assert!(self.runtime.is_none(), "already open");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind(self.addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).unwrap()
        };
        let upstream = self.upstream;
        runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.runtime = Some(runtime);
    }

    pub fn close(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}
