//! The last steps of an import: precedence, the same admission `gatehouse validate` runs,
//! and the files. Nothing is written unless at least one route survives admission, and a
//! resource gatehouse would refuse is never written: it is listed instead, so the folder
//! always passes `gatehouse validate`.

use super::{printable, ImportError, Outcome, Report, RouteOut, Scope, Translation};
use crate::resource::{admit, parse_value, Catalog, Origin, Resource};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most characters of a name a file's header comment quotes.
const MAX_LABEL: usize = 200;

/// Orders, checks and writes a translation as the new folder `out`.
pub fn finish(mut t: Translation, out: &Path) -> Result<Outcome, ImportError> {
    assign_priorities(&mut t.routes);
    admit_all(&mut t)?;
    let used: Vec<String> = t
        .routes
        .iter()
        .flat_map(|r| r.route.upstream_refs().map(|(_, id)| id.into_owned()))
        .collect();
    t.upstreams.retain(|u| used.contains(&u.upstream.id));
    if t.routes.is_empty() {
        return Err(ImportError::NothingTranslated);
    }
    let reports = fold_globals(std::mem::take(&mut t.reports), &t.routes);
    let files = write(&t, out)?;
    Ok(Outcome {
        routes: t.routes.len(),
        upstreams: t.upstreams.len(),
        files,
        reports,
    })
}

/// The source tries routes in its own order (Spring: `order`, lower first, then as listed;
/// kratos: as listed) and takes the first that matches. gatehouse ranks by `priority`,
/// higher first, before anything else: the n-th route in the source's order gets priority
/// `-n` (the first keeps the default 0), so gatehouse tries them in the same order.
fn assign_priorities(routes: &mut [RouteOut]) {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| (routes[i].order, routes[i].seq));
    for (rank, i) in order.into_iter().enumerate() {
        routes[i].route.priority = -(i32::try_from(rank).unwrap_or(i32::MAX));
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.route.priority));
}

fn route_file(id: &str) -> String {
    format!("route-{id}.yaml")
}

fn upstream_file(id: &str) -> String {
    format!("upstream-{id}.yaml")
}

fn to_value(resource: &Resource) -> Result<serde_yaml::Value, ImportError> {
    serde_yaml::to_value(resource).map_err(|e| ImportError::Internal(e.to_string()))
}

/// Runs the resources through admission until it accepts them all, taking out (and
/// listing) each one it refuses: a route whose translated match or headers gatehouse does
/// not take, and with a refused upstream the routes that need it.
fn admit_all(t: &mut Translation) -> Result<(), ImportError> {
    loop {
        let mut docs = Vec::with_capacity(t.routes.len() + t.upstreams.len());
        for r in &t.routes {
            let resource = Resource::Route(Arc::new(r.route.clone()));
            let origin = Origin::file(Arc::from(route_file(&r.route.id)), 1);
            docs.push(parse_value(origin, to_value(&resource)?, None));
        }
        for u in &t.upstreams {
            let resource = Resource::Upstream(Arc::new(u.upstream.clone()));
            let origin = Origin::file(Arc::from(upstream_file(&u.upstream.id)), 1);
            docs.push(parse_value(origin, to_value(&resource)?, None));
        }
        let (_, rejections) = admit(&docs, &Catalog::default());
        if rejections.is_empty() {
            return Ok(());
        }
        for rejection in rejections {
            let source = rejection.origin.source.as_ref();
            if let Some(i) = t
                .routes
                .iter()
                .position(|r| route_file(&r.route.id) == source)
            {
                let r = t.routes.remove(i);
                t.missed(
                    r.at,
                    &r.scope,
                    "route",
                    format!("gatehouse refuses its translation: {}", rejection.error),
                );
            } else if let Some(i) = t
                .upstreams
                .iter()
                .position(|u| upstream_file(&u.upstream.id) == source)
            {
                let u = t.upstreams.remove(i);
                let id = u.upstream.id.clone();
                let users: Vec<usize> = (0..t.routes.len())
                    .filter(|&i| t.routes[i].route.upstream_refs().any(|(_, r)| r == id))
                    .collect();
                for i in users.into_iter().rev() {
                    let r = t.routes.remove(i);
                    t.missed(
                        r.at,
                        &r.scope,
                        "route",
                        format!(
                            "gatehouse refuses the translation of its upstream `{id}` ({}): {}",
                            u.label, rejection.error
                        ),
                    );
                }
            } else {
                return Err(ImportError::Internal(format!(
                    "{}: {}",
                    rejection.key, rejection.error
                )));
            }
        }
    }
}

/// A global filter or middleware that could not be translated for any route is listed
/// once, as `every route`, rather than once per route.
fn fold_globals(reports: Vec<Report>, routes: &[RouteOut]) -> Vec<Report> {
    type Key = (usize, usize, String, String, bool);
    let key = |r: &Report| -> Key {
        (
            r.at.index,
            r.at.line,
            r.item.clone(),
            r.why.clone(),
            r.partial,
        )
    };
    let mut scopes: HashMap<Key, HashSet<Scope>> = HashMap::new();
    for r in reports.iter().filter(|r| r.global) {
        scopes.entry(key(r)).or_default().insert(r.scope.clone());
    }
    let wanted: HashSet<&Scope> = routes.iter().map(|r| &r.scope).collect();
    let everywhere: HashSet<Key> = scopes
        .into_iter()
        .filter(|(_, s)| wanted.iter().all(|w| s.contains(*w)))
        .map(|(k, _)| k)
        .collect();
    let mut out: Vec<Report> = Vec::with_capacity(reports.len());
    let mut folded: HashSet<Key> = HashSet::new();
    for mut r in reports {
        if r.global {
            let k = key(&r);
            if everywhere.contains(&k) {
                if !folded.insert(k) {
                    continue;
                }
                r.scope = Scope::Every;
            }
        }
        out.push(r);
    }
    out.sort_by_key(|r| (r.at.index, r.at.line));
    out
}

/// The output folder must not exist yet or be an empty folder (not a link to one): an
/// import never writes over, next to or through what is there.
pub fn check_target(out: &Path) -> Result<(), ImportError> {
    let refuse = |message: &str| ImportError::Output {
        path: out.display().to_string(),
        message: message.into(),
    };
    if out.file_name().is_none() {
        return Err(refuse("name a new folder to write into"));
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(&format!("cannot read it: {e}"))),
    };
    if !meta.is_dir() {
        return Err(refuse(
            "it is there and is not a folder; name a folder that does not exist or is empty",
        ));
    }
    let mut entries =
        std::fs::read_dir(out).map_err(|e| refuse(&format!("cannot read it: {e}")))?;
    if entries.next().is_some() {
        return Err(refuse(
            "the folder is not empty; name a folder that does not exist or is empty",
        ));
    }
    Ok(())
}

/// Writes every file into a new folder next to `out`, then renames it to `out`: a run
/// writes all of its files or none.
fn write(t: &Translation, out: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let fail = |path: &Path, source| ImportError::Write {
        path: path.display().to_string(),
        source,
    };
    check_target(out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::create_dir_all(&parent).map_err(|e| fail(&parent, e))?;
    let mut n = 0u32;
    let temp = loop {
        let temp = parent.join(format!(".{name}.import-{}-{n}", std::process::id()));
        match std::fs::create_dir(&temp) {
            Ok(()) => break temp,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(fail(&temp, e)),
        }
    };
    let written = fill(t, &temp).and_then(|names| {
        if std::fs::symlink_metadata(out).is_ok() {
            check_target(out)?;
            std::fs::remove_dir(out).map_err(|e| fail(out, e))?;
        }
        std::fs::rename(&temp, out).map_err(|e| fail(out, e))?;
        Ok(names)
    });
    match written {
        Ok(names) => Ok(names.into_iter().map(|n| out.join(n)).collect()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            Err(e)
        }
    }
}

/// A file's header comment: one line, whatever the names it quotes hold.
fn header(label: &str, at: &super::At) -> String {
    format!(
        "# {}, imported from {} by `gatehouse import`.\n",
        printable(label, MAX_LABEL),
        printable(&at.to_string(), MAX_LABEL)
    )
}

/// Writes the files into the new folder `dir`, returning their names.
fn fill(t: &Translation, dir: &Path) -> Result<Vec<String>, ImportError> {
    let mut files = Vec::new();
    let mut put = |name: String, header: String, resource: Resource| {
        let yaml =
            serde_yaml::to_string(&resource).map_err(|e| ImportError::Internal(e.to_string()))?;
        let path = dir.join(&name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{header}{yaml}").as_bytes()))
            .map_err(|source| ImportError::Write {
                path: path.display().to_string(),
                source,
            })?;
        files.push(name);
        Ok::<(), ImportError>(())
    };
    for u in &t.upstreams {
        put(
            upstream_file(&u.upstream.id),
            header(&u.label, &u.at),
            Resource::Upstream(Arc::new(u.upstream.clone())),
        )?;
    }
    for r in &t.routes {
        put(
            route_file(&r.route.id),
            header(&r.label, &r.at),
            Resource::Route(Arc::new(r.route.clone())),
        )?;
    }
    Ok(files)
}
