//! Fault injection for the fault suite (`tests/it/faults*.rs`): a small
//! tmpfs to fill (the tests run as root), and the broker's own resource
//! counts (file descriptors, resident memory) read from /proc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh temp dir; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    fills: u32,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `16m`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("pam-tmpfs")
            .tempdir()
            .unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("running mount (the fault tests run as root)");
        assert!(status.success(), "mounting a tmpfs on {:?}", dir.path());
        Tmpfs { dir, fills: 0 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full (ENOSPC); returns its path.
    pub fn fill(&mut self) -> PathBuf {
        use std::io::Write;
        self.fills += 1;
        let path = self.path().join(format!("filler-{}", self.fills));
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {path:?}: {e}"),
            }
        }
        // The last partial blocks too.
        for size in [4096usize, 512, 1] {
            while file.write_all(&block[..size]).is_ok() {}
        }
        let _ = file.flush();
        path
    }

    /// Bytes free on the tmpfs (`df`).
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes every filler file: space returns.
    pub fn free_up(&mut self) {
        for i in 1..=self.fills {
            let _ = std::fs::remove_file(self.path().join(format!("filler-{i}")));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a broker still shutting down may hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Open file descriptors of this process (the broker runs in it).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors of this process (the broker runs in it), leaving
/// out its store's: pooled connections come and go with load, up to the
/// pool's size (TCP sockets to the PostgreSQL port and through `via`, a
/// fault proxy in front of it; SQLite's database, WAL and shm files).
pub fn broker_fds(database: &super::TestDatabase, via: &[u16]) -> usize {
    let mut ports = via.to_vec();
    let mut files = None;
    if database.is_postgres() {
        if let Some(port) = url::Url::parse(&database.url).ok().and_then(|u| u.port()) {
            ports.push(port);
        } else {
            ports.push(5432);
        }
    } else {
        files = Some(database.url.trim_start_matches("sqlite://").to_owned());
    }
    open_fds_except(&ports, files.as_deref())
}

/// Open file descriptors of this process, leaving out TCP sockets to or
/// from `ports` on loopback and files whose path starts with `files`.
pub fn open_fds_except(ports: &[u16], files: Option<&str>) -> usize {
    let mut pooled = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                continue;
            }
            let port_of = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let touches = |addr: &str| port_of(addr).is_some_and(|p| ports.contains(&p));
            if touches(fields[1]) || touches(fields[2]) {
                pooled.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| {
                            let l = l.to_string_lossy().into_owned();
                            !pooled.contains(&l) && !files.is_some_and(|f| l.starts_with(f))
                        })
                        .unwrap_or(true)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
