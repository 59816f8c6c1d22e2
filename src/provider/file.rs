//! The file provider: every YAML document under `provider.file.paths`, watched for changes.

use super::Ingest;
use crate::resource::{parse_file, Document, FieldError, Origin};
use crate::snapshot::SourceKind;
use async_trait::async_trait;
use notify::Watcher;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Lets the caller adjust documents after reading (the demo points sample upstreams at its
/// built-in servers this way).
pub type Overlay = Arc<dyn Fn(&mut Vec<Document>) + Send + Sync>;

/// Reads resource files.
#[derive(Clone)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    overlay: Option<Overlay>,
}

impl FileSource {
    pub fn new(paths: Vec<PathBuf>) -> FileSource {
        FileSource {
            paths,
            overlay: None,
        }
    }

    pub fn with_overlay(mut self, overlay: Overlay) -> FileSource {
        self.overlay = Some(overlay);
        self
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Every document the paths hold now, with a fingerprint of the files' content so that
    /// a change that changes nothing can be skipped.
    pub fn read(&self) -> Reading {
        let listing = self.files();
        let mut docs: Vec<Document> = listing
            .unreadable
            .iter()
            .map(|(path, e)| unreadable(path.display().to_string().into(), e))
            .collect();
        let mut hasher = DefaultHasher::new();
        for file in &listing.files {
            let source: Arc<str> = file.display().to_string().into();
            match read_text(file) {
                Ok(text) => {
                    (&source, &text).hash(&mut hasher);
                    docs.extend(parse_file(source, &text));
                }
                Err(e) => docs.push(unreadable(source, &e)),
            }
        }
        if let Some(overlay) = &self.overlay {
            overlay(&mut docs);
        }
        let lost = listing
            .unreadable
            .iter()
            .map(|(path, e)| format!("{}: cannot read: {e}", path.display()))
            .collect();
        Reading {
            docs,
            fingerprint: hasher.finish(),
            lost,
        }
    }

    /// The YAML files under the paths, in a stable order, and the configured paths that
    /// cannot be read at all. Only regular files are taken (a symbolic link to one too): a
    /// FIFO or a socket named `x.yaml` would block the reader for good.
    pub fn files(&self) -> Listing {
        let mut listing = Listing::default();
        for path in &self.paths {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    if let Err(e) = walk(path, &mut listing.files) {
                        listing.unreadable.push((path.clone(), e));
                    }
                }
                Ok(meta) if meta.is_file() => listing.files.push(path.clone()),
                Ok(_) => listing.unreadable.push((path.clone(), not_regular())),
                Err(e) => listing.unreadable.push((path.clone(), e)),
            }
        }
        listing
    }
}

/// What [`FileSource::read`] found.
pub struct Reading {
    pub docs: Vec<Document>,
    /// Changes whenever a file's name or content does.
    pub fingerprint: u64,
    /// Configured paths that could not be read at all (gone, or not a file or folder): the
    /// source is lost rather than emptied.
    pub lost: Vec<String>,
}

/// The files under the configured paths.
#[derive(Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    /// Configured paths that cannot be read, and why.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

/// Reads one resource file, refusing anything that is not a regular file, since opening a
/// FIFO waits for a writer that may never come. (The check and the open are two steps; a
/// file swapped for a FIFO in between is not guarded against.)
pub fn read_text(path: &Path) -> std::io::Result<String> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    std::fs::read_to_string(path)
}

fn not_regular() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")
}

fn unreadable(source: Arc<str>, e: &std::io::Error) -> Document {
    Document {
        origin: Origin::file(source, 0),
        key: None,
        parsed: Err(vec![FieldError::new("", format!("cannot read: {e}"))]),
    }
}

/// Collects the YAML files under `dir`. Hidden entries are editors' swap and backup files;
/// anything that is not a regular file or a folder (FIFOs, sockets, devices) is skipped.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // Follows symbolic links, as reading does; a dangling one is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, files)?;
        } else if !meta.is_file() {
            tracing::debug!(path = %path.display(), "skipped: not a regular file");
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Applies the files now, then (when `watch` is on) again whenever they change, and whenever
/// `POST /admin/resync` asks.
pub struct FileProvider {
    inner: Arc<Inner>,
    watch: bool,
}

/// What a reload needs, shared with the blocking thread that does the reading.
struct Inner {
    source: FileSource,
    ingest: Ingest,
    last: std::sync::Mutex<u64>,
}

/// How long a burst of file events is let settle before reloading: editors write in steps.
const SETTLE: Duration = Duration::from_millis(50);

impl FileProvider {
    pub fn new(source: FileSource, ingest: Ingest, watch: bool) -> FileProvider {
        ingest.source().set_kind(SourceKind::File);
        FileProvider {
            inner: Arc::new(Inner {
                source,
                ingest,
                last: std::sync::Mutex::new(0),
            }),
            watch,
        }
    }

    /// Reads and applies the files if their content changed since the last time. Blocks on
    /// file reads: call it before the runtime starts, or from a blocking thread.
    pub fn reload(&self) {
        self.inner.reload(false);
    }

    /// [`FileProvider::reload`] on a blocking thread, so file reads (and the name lookups of
    /// compilation) never stall the async runtime. `force` applies even an unchanged read.
    async fn reload_off_runtime(&self, force: bool) {
        let inner = self.inner.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || inner.reload(force)).await {
            tracing::error!("reloading resource files failed: {e}");
        }
    }

    fn watcher(
        paths: &[PathBuf],
        tx: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> notify::Result<Box<dyn Watcher + Send>> {
        let handler = move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        };
        let mut watcher: Box<dyn Watcher + Send> =
            match notify::recommended_watcher(handler.clone()) {
                Ok(w) => Box::new(w),
                Err(e) => {
                    tracing::warn!("file events unavailable ({e}); polling every second");
                    let config =
                        notify::Config::default().with_poll_interval(Duration::from_secs(1));
                    Box::new(notify::PollWatcher::new(handler, config)?)
                }
            };
        for path in paths {
            // Watch a file's directory: editors replace files by renaming over them.
            let (target, mode) = if path.is_dir() {
                (path.clone(), notify::RecursiveMode::Recursive)
            } else {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                (
                    parent.unwrap_or(Path::new(".")).to_path_buf(),
                    notify::RecursiveMode::NonRecursive,
                )
            };
            if let Err(e) = watcher.watch(&target, mode) {
                tracing::warn!(path = %target.display(), "cannot watch: {e}");
            }
        }
        Ok(watcher)
    }
}

impl Inner {
    fn reload(&self, force: bool) {
        let reading = self.source.read();
        let health = self.ingest.source();
        if !reading.lost.is_empty() {
            let error = reading.lost.join("; ");
            health.lost(error.clone());
            // A configured path that vanished (an unmounted volume, a deleted folder) is a
            // lost source, not an empty one: keep what is in force. At startup there is
            // nothing to keep, so what could be read applies, its problems listed.
            if self.ingest.has_snapshot() {
                tracing::warn!("resource files lost, serving the last snapshot: {error}");
                return;
            }
        } else {
            health.healthy();
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !force && *last == reading.fingerprint && reading.fingerprint != 0 {
            return;
        }
        *last = reading.fingerprint;
        self.ingest.apply(&reading.docs, None, None);
    }
}

#[async_trait]
impl BackgroundService for FileProvider {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let health = self.inner.ingest.source();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Setting up the watches walks the folders: off the runtime too.
        let watcher = if self.watch {
            let paths = self.inner.source.paths().to_vec();
            match tokio::task::spawn_blocking(move || FileProvider::watcher(&paths, tx)).await {
                Ok(Ok(w)) => Some(w),
                Ok(Err(e)) => {
                    tracing::error!("cannot watch resource files, changes need a restart: {e}");
                    None
                }
                Err(e) => {
                    tracing::error!("cannot watch resource files, changes need a restart: {e}");
                    None
                }
            }
        } else {
            drop(tx);
            None
        };
        let mut events = watcher.is_some();
        if events {
            // A file written between the first read and the watch's setup raised no event:
            // read once more now that every later change will.
            self.reload_off_runtime(false).await;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ticket = health.resync_requested() => {
                    self.reload_off_runtime(true).await;
                    health.resync_done(ticket);
                }
                event = rx.recv(), if events => {
                    if event.is_none() {
                        events = false;
                        continue;
                    }
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload_off_runtime(false).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Live;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn only_regular_yaml_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), "kind: Upstream\nid: a\nnodes: []\n").unwrap();
        std::fs::write(root.join("notes.txt"), "not a resource").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.yml"), "kind: Upstream\nid: b\nnodes: []\n").unwrap();
        let fifo = root.join("x.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());

        let source = FileSource::new(vec![root.to_path_buf()]);
        let listing = source.files();
        let names: Vec<_> = listing
            .files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a.yaml", "sub/b.yml"], "the FIFO is skipped");
        assert!(listing.unreadable.is_empty());

        // Named directly, it is refused rather than opened (opening would wait for a writer).
        let reading = FileSource::new(vec![fifo.clone()]).read();
        assert_eq!(reading.lost.len(), 1, "{:?}", reading.lost);
        assert!(reading.lost[0].contains("not a regular file"));
        let e = read_text(&fifo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    /// A reload that blocks (slow disk, slow name lookups while compiling) must not hold the
    /// async runtime: here the reload waits for a task on that same single-threaded runtime.
    #[test]
    fn reloads_run_off_the_async_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "kind: Upstream\nid: a\nnodes: []\n").unwrap();

        let entered = Arc::new(AtomicBool::new(false));
        let released_in_time = Arc::new(AtomicBool::new(false));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let overlay: Overlay = {
            let (entered, released_in_time) = (entered.clone(), released_in_time.clone());
            Arc::new(move |_docs: &mut Vec<Document>| {
                if entered.swap(true, Ordering::SeqCst) {
                    return; // only the first reload is judged
                }
                let rx = release_rx.lock().unwrap();
                if rx.recv_timeout(Duration::from_secs(3)).is_ok() {
                    released_in_time.store(true, Ordering::SeqCst);
                }
            })
        };
        let live = Arc::new(Live::new());
        let source = FileSource::new(vec![dir.path().to_path_buf()]).with_overlay(overlay);
        let provider = Arc::new(FileProvider::new(source, Ingest::new(live), true));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let running = provider.clone();
            let service = tokio::spawn(async move { running.start(stop_rx).await });
            // Changes come from another thread until a reload starts (the watch is set up
            // asynchronously, so a first write may come too early).
            let toucher = {
                let (entered, file) = (entered.clone(), file.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        if entered.load(Ordering::SeqCst) {
                            return;
                        }
                        let text = format!("kind: Upstream\nid: a{i}\nnodes: []\n");
                        std::fs::write(&file, text).unwrap();
                        std::thread::sleep(Duration::from_millis(25));
                    }
                })
            };
            // This task runs only if the runtime thread is free while the reload blocks.
            while !entered.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = release_tx.send(());
            toucher.join().unwrap();
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), service).await;
        });
        assert!(
            released_in_time.load(Ordering::SeqCst),
            "the reload blocked the runtime thread"
        );
    }
}
