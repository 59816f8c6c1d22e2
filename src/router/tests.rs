use super::*;

struct R {
    priority: i32,
    paths: Vec<String>,
    hosts: Vec<String>,
    methods: Vec<String>,
    headers: Vec<(&'static str, &'static str)>,
    query: Vec<(&'static str, &'static str)>,
    case_insensitive: bool,
}

fn r(paths: &[&str]) -> R {
    R {
        priority: 0,
        paths: paths.iter().map(|s| s.to_string()).collect(),
        case_insensitive: false,
        hosts: vec![],
        methods: vec![],
        headers: vec![],
        query: vec![],
    }
}

impl R {
    fn hosts(mut self, hosts: &[&str]) -> R {
        self.hosts = hosts.iter().map(|s| s.to_string()).collect();
        self
    }
    fn methods(mut self, methods: &[&str]) -> R {
        self.methods = methods.iter().map(|s| s.to_string()).collect();
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> R {
        self.headers.push((name, value));
        self
    }
    fn query(mut self, name: &'static str, value: &'static str) -> R {
        self.query.push((name, value));
        self
    }
    fn any_case(mut self) -> R {
        self.case_insensitive = true;
        self
    }
    fn priority(mut self, p: i32) -> R {
        self.priority = p;
        self
    }
}

fn router(routes: Vec<(&'static str, R)>) -> Router<&'static str> {
    let mut router = Router::default();
    for (name, r) in &routes {
        let matcher = RouteMatcher::compile(RouteSpec {
            priority: r.priority,
            paths: &r.paths,
            hosts: &r.hosts,
            methods: &r.methods,
            headers: &r.headers,
            query: &r.query,
            case_insensitive: r.case_insensitive,
        })
        .unwrap();
        router.insert((*name).into(), &matcher, *name);
    }
    router
}

struct Req {
    host: Option<&'static str>,
    path: &'static str,
    method: Method,
    headers: HeaderMap,
    query: Option<&'static str>,
}

fn get(path: &'static str) -> Req {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    Req {
        host: None,
        path,
        method: Method::GET,
        headers: HeaderMap::new(),
        query,
    }
}

impl Req {
    fn host(mut self, h: &'static str) -> Req {
        self.host = Some(h);
        self
    }
    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, value.parse().unwrap());
        self
    }
}

fn find(router: &Router<&'static str>, req: Req) -> Option<&'static str> {
    let host = req.host.map(normalize_host);
    router
        .find(&RouteRequest {
            host: host.as_deref(),
            path: req.path,
            method: &req.method,
            headers: &req.headers,
            query: req.query,
        })
        .copied()
}

#[test]
fn exact_prefix_and_param_paths() {
    let rt = router(vec![
        ("exact", r(&["/health"])),
        ("prefix", r(&["/api/**"])),
        ("param", r(&["/items/{id}"])),
        ("root", r(&["/"])),
    ]);
    assert_eq!(find(&rt, get("/health")), Some("exact"));
    assert_eq!(find(&rt, get("/health/x")), None);
    assert_eq!(find(&rt, get("/api")), Some("prefix"), "the prefix itself");
    assert_eq!(find(&rt, get("/api/")), Some("prefix"));
    assert_eq!(find(&rt, get("/api/a/b/c")), Some("prefix"));
    assert_eq!(
        find(&rt, get("/apix")),
        None,
        "prefixes end at a segment boundary"
    );
    assert_eq!(find(&rt, get("/items/42")), Some("param"));
    assert_eq!(
        find(&rt, get("/items/")),
        None,
        "a parameter needs a non-empty segment"
    );
    assert_eq!(find(&rt, get("/items/42/more")), None);
    assert_eq!(find(&rt, get("/")), Some("root"));
}

#[test]
fn more_specific_paths_win_ties() {
    let rt = router(vec![
        ("all", r(&["/**"])),
        ("api", r(&["/api/**"])),
        ("users", r(&["/api/users/**"])),
        ("user", r(&["/api/users/{id}"])),
        ("me", r(&["/api/users/me"])),
    ]);
    assert_eq!(find(&rt, get("/other")), Some("all"));
    assert_eq!(find(&rt, get("/api/orders")), Some("api"));
    assert_eq!(find(&rt, get("/api/users")), Some("users"));
    assert_eq!(find(&rt, get("/api/users/7")), Some("user"));
    assert_eq!(find(&rt, get("/api/users/me")), Some("me"));
    assert_eq!(find(&rt, get("/api/users/7/orders")), Some("users"));
}

#[test]
fn priority_beats_specificity() {
    let rt = router(vec![
        ("specific", r(&["/api/users"])),
        ("catch-all", r(&["/api/**"]).priority(10)),
    ]);
    assert_eq!(find(&rt, get("/api/users")), Some("catch-all"));
}

#[test]
fn hosts_exact_wildcard_case_and_port() {
    let rt = router(vec![
        ("exact", r(&["/**"]).hosts(&["api.example.com"])),
        ("wild", r(&["/**"]).hosts(&["*.example.com"])),
        ("any", r(&["/**"])),
    ]);
    assert_eq!(find(&rt, get("/").host("api.example.com")), Some("exact"));
    assert_eq!(
        find(&rt, get("/").host("API.Example.COM:8080")),
        Some("exact")
    );
    assert_eq!(find(&rt, get("/").host("web.example.com")), Some("wild"));
    assert_eq!(find(&rt, get("/").host("a.b.example.com")), Some("wild"));
    assert_eq!(
        find(&rt, get("/").host("example.com")),
        Some("any"),
        "wildcards need a subdomain"
    );
    assert_eq!(find(&rt, get("/").host("other.org")), Some("any"));
    assert_eq!(find(&rt, get("/")), Some("any"));
}

#[test]
fn longer_host_wins_a_tie_and_a_host_route_needs_its_host() {
    let rt = router(vec![
        ("short", r(&["/x"]).hosts(&["*.example.com"])),
        ("long", r(&["/x"]).hosts(&["*.eu.example.com"])),
    ]);
    assert_eq!(find(&rt, get("/x").host("a.eu.example.com")), Some("long"));
    assert_eq!(find(&rt, get("/x").host("a.us.example.com")), Some("short"));
    assert_eq!(find(&rt, get("/x")), None);
}

#[test]
fn methods_filter_and_fall_through() {
    let rt = router(vec![
        ("read", r(&["/users"]).methods(&["GET", "head"])),
        ("write", r(&["/users"]).methods(&["POST"])),
        ("fallback", r(&["/**"])),
    ]);
    assert_eq!(find(&rt, get("/users")), Some("read"));
    assert_eq!(find(&rt, get("/users").method(Method::HEAD)), Some("read"));
    assert_eq!(find(&rt, get("/users").method(Method::POST)), Some("write"));
    assert_eq!(
        find(&rt, get("/users").method(Method::DELETE)),
        Some("fallback")
    );
}

#[test]
fn headers_any_of_and_regex() {
    let rt = router(vec![
        ("apps", r(&["/x"]).header("X-Platform", "mobile|web")),
        (
            "beta",
            r(&["/x"])
                .header("x-version", "~^v2(\\.[0-9]+)?$")
                .priority(1),
        ),
        ("plain", r(&["/x"])),
    ]);
    assert_eq!(
        find(&rt, get("/x").header("x-platform", "web")),
        Some("apps")
    );
    assert_eq!(
        find(&rt, get("/x").header("x-platform", "tv")),
        Some("plain")
    );
    assert_eq!(
        find(&rt, get("/x").header("x-version", "v2.1")),
        Some("beta")
    );
    assert_eq!(
        find(&rt, get("/x").header("x-version", "v21")),
        Some("plain")
    );
    assert_eq!(find(&rt, get("/x")), Some("plain"));
}

#[test]
fn query_values_are_decoded_and_matched() {
    let rt = router(vec![
        ("debug", r(&["/x"]).query("debug", "1|true")),
        ("named", r(&["/x"]).query("name", "a b").priority(1)),
        ("plain", r(&["/x"])),
    ]);
    assert_eq!(find(&rt, get("/x?debug=1")), Some("debug"));
    assert_eq!(find(&rt, get("/x?a=2&debug=true")), Some("debug"));
    assert_eq!(find(&rt, get("/x?debug=0")), Some("plain"));
    assert_eq!(find(&rt, get("/x?name=a%20b")), Some("named"));
    assert_eq!(find(&rt, get("/x?name=a+b")), Some("named"));
}

#[test]
fn declaration_order_breaks_the_last_tie() {
    let rt = router(vec![("first", r(&["/same"])), ("second", r(&["/same"]))]);
    assert_eq!(find(&rt, get("/same")), Some("first"));
}

#[test]
fn ten_thousand_routes_still_find_the_right_one() {
    let mut router = Router::default();
    let specs: Vec<(Vec<String>, Vec<String>)> = (0..10_000)
        .map(|i| {
            let hosts = if i % 2 == 0 {
                vec![format!("svc{i}.example.com")]
            } else {
                vec![]
            };
            (
                vec![format!("/svc{i}/v1/**"), format!("/items{i}/{{id}}")],
                hosts,
            )
        })
        .collect();
    for (i, (paths, hosts)) in specs.iter().enumerate() {
        let matcher = RouteMatcher::compile(RouteSpec {
            priority: 0,
            paths,
            hosts,
            methods: &[],
            headers: &[],
            query: &[],
            case_insensitive: false,
        })
        .unwrap();
        router.insert(format!("r{i}").into(), &matcher, i);
    }
    let headers = HeaderMap::new();
    let find = |host: Option<&str>, path: &str| {
        router
            .find(&RouteRequest {
                host,
                path,
                method: &Method::GET,
                headers: &headers,
                query: None,
            })
            .copied()
    };
    assert_eq!(find(None, "/svc9999/v1/users"), Some(9999));
    assert_eq!(
        find(Some("svc4242.example.com"), "/svc4242/v1/x"),
        Some(4242)
    );
    assert_eq!(
        find(None, "/svc4242/v1/x"),
        None,
        "that route needs its host"
    );
    assert_eq!(find(None, "/items77/5"), Some(77));
    assert_eq!(find(None, "/nothing"), None);
}

#[test]
fn removing_a_route_leaves_the_others_and_earlier_versions_untouched() {
    let specs = [("a", "/api/**"), ("b", "/api/users/{id}"), ("c", "/other")];
    let mut router = Router::default();
    let mut matchers = Vec::new();
    for (id, path) in specs {
        let paths = vec![path.to_string()];
        let matcher = RouteMatcher::compile(RouteSpec {
            priority: 0,
            paths: &paths,
            hosts: &[],
            methods: &[],
            headers: &[],
            query: &[],
            case_insensitive: false,
        })
        .unwrap();
        router.insert(id.into(), &matcher, id);
        matchers.push(matcher);
    }
    let before = router.clone();
    router.remove("b", &matchers[1]);
    assert_eq!(router.len(), 2);
    assert_eq!(find(&router, get("/api/users/7")), Some("a"));
    assert_eq!(find(&router, get("/other")), Some("c"));
    assert_eq!(
        find(&before, get("/api/users/7")),
        Some("b"),
        "the published version is unchanged"
    );
    router.remove("c", &matchers[2]);
    assert_eq!(find(&router, get("/other")), None);
}

#[test]
fn paths_match_case_sensitively_unless_a_route_says_otherwise() {
    let rt = router(vec![
        ("admin", r(&["/Admin/**"])),
        ("docs", r(&["/Docs/{page}"]).any_case()),
        ("fallback", r(&["/**"])),
    ]);
    assert_eq!(find(&rt, get("/Admin/x")), Some("admin"));
    assert_eq!(find(&rt, get("/admin/x")), Some("fallback"));
    assert_eq!(find(&rt, get("/ADMIN/x")), Some("fallback"));
    assert_eq!(find(&rt, get("/docs/Intro")), Some("docs"));
    assert_eq!(find(&rt, get("/DOCS/intro")), Some("docs"));
    assert_eq!(find(&rt, get("/Docs/a/b")), Some("fallback"));
    let mut rt = rt;
    let matcher = RouteMatcher::compile(RouteSpec {
        priority: 0,
        paths: &["/Docs/{page}".to_string()],
        hosts: &[],
        methods: &[],
        headers: &[],
        query: &[],
        case_insensitive: true,
    })
    .unwrap();
    rt.remove("docs", &matcher);
    assert_eq!(find(&rt, get("/docs/Intro")), Some("fallback"));
}
