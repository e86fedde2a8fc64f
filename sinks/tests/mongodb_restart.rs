//! The MongoDB writer across a server crash: a private SecantusDB process (own port and data
//! directory, started and killed by this test only) is killed with SIGKILL between two batches.
//! The acknowledged batch survives (majority + journal write concern), the next write is
//! `Unavailable` while the server is down, and succeeds once it is back.
//!
//! Needs the project's venv (`$TRIBUTARY_CACHE/venv/bin/secantusd-py`, see stack/stack.sh);
//! without it the test says so and passes vacuously.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::json;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter, WriteError};
use tributary_sinks::mongodb::projection::PRODUCTS;
use tributary_sinks::mongodb::MongoWriter;

fn server_binary() -> Option<PathBuf> {
    let cache = std::env::var_os("TRIBUTARY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tributary")))?;
    let bin = cache.join("venv/bin/secantusd-py");
    bin.exists().then_some(bin)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The server process; killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct Server(Child);

impl Server {
    fn start(bin: &Path, port: u16, dir: &Path) -> Server {
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--storage-path")
            .arg(dir)
            // Without it SecantusDB acknowledges `j: true` before its log reaches the disk, and
            // a SIGKILL loses the acknowledged batch (found by this test).
            .arg("--sync-on-commit")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("secantusd-py starts");
        Server(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn product(key: &str, version: i64) -> Change {
    Change {
        view: PRODUCTS,
        key: key.into(),
        version,
        event_time_ms: version,
        op: Op::Upsert(
            json!({"sku": key, "available": version})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    }
}

/// Writes `batch` until it is accepted, failing after `within`.
async fn write_eventually(writer: &MongoWriter, batch: &[Change], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match writer.write(batch).await {
            Ok(_) => return,
            Err(e @ WriteError::Rejected { .. }) => panic!("rejected: {e}"),
            Err(e) => assert!(Instant::now() < deadline, "still unavailable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn mongodb_writer_survives_a_server_crash() {
    let Some(bin) = server_binary() else {
        eprintln!("skipped: secantusd-py not installed (run stack/stack.sh up)");
        return;
    };
    let dir = std::env::temp_dir().join(unique_name("tributary-test-secantus"));
    std::fs::create_dir_all(&dir).expect("data dir");
    let port = free_port();
    let mut server = Server::start(&bin, port, &dir);
    let url = format!(
        "mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000"
    );
    let writer = MongoWriter::connect(&url, "tributary")
        .await
        .expect("client");

    write_eventually(&writer, &[product("p1", 1)], Duration::from_secs(30)).await;
    server.kill();
    match writer.write(&[product("p2", 1)]).await {
        Err(e @ WriteError::Unavailable { .. }) => assert!(e.retriable()),
        other => panic!("expected unavailable while the server is down, got {other:?}"),
    }
    let server = Server::start(&bin, port, &dir);
    write_eventually(&writer, &[product("p2", 1)], Duration::from_secs(30)).await;

    let mut ids = Vec::new();
    let mut cursor = writer
        .database()
        .collection::<Document>(PRODUCTS)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find");
    while cursor.advance().await.expect("cursor") {
        let d = cursor.deserialize_current().expect("doc");
        ids.push(d.get_str("_id").unwrap_or_default().to_string());
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        ids,
        vec!["p1", "p2"],
        "the batch acknowledged before the crash survived"
    );
}
