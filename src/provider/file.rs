//! The file provider: every YAML document under `provider.file.paths`, watched for changes.

use super::Ingest;
use crate::resource::{parse_file, Document, FieldError, Origin};
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
    pub fn read(&self) -> (Vec<Document>, u64) {
        let mut docs = Vec::new();
        let mut hasher = DefaultHasher::new();
        for file in self.files(&mut docs) {
            let source: Arc<str> = file.display().to_string().into();
            match std::fs::read_to_string(&file) {
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
        (docs, hasher.finish())
    }

    /// The YAML files under the paths, in a stable order. A path that cannot be read becomes
    /// a failed document, so it is reported like any other problem.
    fn files(&self, docs: &mut Vec<Document>) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for path in &self.paths {
            if path.is_dir() {
                if let Err(e) = walk(path, &mut files) {
                    docs.push(unreadable(path.display().to_string().into(), &e));
                }
            } else if path.exists() {
                files.push(path.clone());
            } else {
                let e =
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
                docs.push(unreadable(path.display().to_string().into(), &e));
            }
        }
        files
    }
}

fn unreadable(source: Arc<str>, e: &std::io::Error) -> Document {
    Document {
        origin: Origin::file(source, 0),
        key: None,
        parsed: Err(vec![FieldError::new("", format!("cannot read: {e}"))]),
    }
}

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
            continue; // editors' swap and backup files
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Applies the files now, then (when `watch` is on) again whenever they change.
pub struct FileProvider {
    source: FileSource,
    ingest: Ingest,
    watch: bool,
    last: std::sync::Mutex<u64>,
}

/// How long a burst of file events is let settle before reloading: editors write in steps.
const SETTLE: Duration = Duration::from_millis(50);

impl FileProvider {
    pub fn new(source: FileSource, ingest: Ingest, watch: bool) -> FileProvider {
        FileProvider {
            source,
            ingest,
            watch,
            last: std::sync::Mutex::new(0),
        }
    }

    /// Reads and applies the files if their content changed since the last time.
    pub fn reload(&self) {
        let (docs, fingerprint) = self.source.read();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == fingerprint && fingerprint != 0 {
            return;
        }
        *last = fingerprint;
        self.ingest.apply(&docs, None);
    }

    fn watcher(
        &self,
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
        for path in self.source.paths() {
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

#[async_trait]
impl BackgroundService for FileProvider {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.watch {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watcher = match self.watcher(tx) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("cannot watch resource files, changes need a restart: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload();
                }
            }
        }
    }
}
