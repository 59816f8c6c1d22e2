//! Global rules compiled: the plugins every route runs before its own (SPEC §12).

use crate::resource::GlobalRule;
use gatehouse_plugins::auth::Authenticator;
use gatehouse_plugins::rate_limit::shared::LimitStore;
use gatehouse_plugins::registry::Resources;
use gatehouse_plugins::Plugin;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A global rule as compiled, kept with its spec so an unchanged rule keeps its plugins
/// (and whatever state they hold) across reloads.
pub struct CompiledGlobalRule {
    pub spec: Arc<GlobalRule>,
    pub plugins: Arc<[Arc<dyn Plugin>]>,
}

/// The plugins of every global rule in force, by rule id and then as each rule lists them.
/// Built once per change of a global rule and shared by every route's chain; a route
/// compiled against another list is compiled again.
#[derive(Clone, Default)]
pub struct GlobalPlugins(Arc<[Arc<dyn Plugin>]>);

impl GlobalPlugins {
    pub fn collect(rules: &BTreeMap<String, CompiledGlobalRule>) -> GlobalPlugins {
        let plugins: Vec<Arc<dyn Plugin>> = rules
            .values()
            .flat_map(|rule| rule.plugins.iter().cloned())
            .collect();
        GlobalPlugins(plugins.into())
    }

    /// The same list: the one a route was compiled against is still in force.
    pub fn same(&self, other: &GlobalPlugins) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plugins as chain entries, to go first in a route's chain: the chain sorts by
    /// stage stably, so within a stage the global ones run before the route's own.
    pub fn entries(&self) -> impl Iterator<Item = Box<dyn Plugin>> + '_ {
        self.0
            .iter()
            .map(|plugin| Box::new(plugin.clone()) as Box<dyn Plugin>)
    }
}

impl std::fmt::Debug for GlobalPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}

/// What a global rule's plugins may use: the fleet's limit store. No auth policy or
/// upstream: a rule runs on every route, so it names none.
struct RuleResources<'a> {
    rule: &'a str,
}

impl Resources for RuleResources<'_> {
    fn auth_policy(&self, _id: &str) -> Option<Arc<Authenticator>> {
        None
    }

    fn global_rule(&self) -> Option<&str> {
        Some(self.rule)
    }

    fn limit_store(&self) -> Option<Arc<dyn LimitStore>> {
        crate::fleet::limits::shared_store()
    }
}

/// Builds a rule's plugins; the error names the entry at fault (`plugins[0].config.allow`).
pub fn build(rule: &GlobalRule) -> Result<Arc<[Arc<dyn Plugin>]>, String> {
    let resources = RuleResources { rule: &rule.id };
    let mut plugins = Vec::with_capacity(rule.plugins.len());
    for (at, plugin) in rule.plugins.iter().enumerate() {
        let built = plugin
            .build_with(at, &resources)
            .map_err(|(field, e)| format!("{field}: {e}"))?;
        plugins.push(Arc::from(built));
    }
    Ok(plugins.into())
}

#[cfg(test)]
mod tests {
    use crate::resource::{admit, parse_file};
    use crate::snapshot::Snapshot;
    use std::sync::Arc;

    const ROUTES: &str = r#"
kind: Route
id: a
match: { paths: ["/a"] }
direct_response: { status: 200 }
request_headers: { set: { X-A: "1" } }
plugins: [{ name: request_size_limit, config: { max_body: 10 } }]
---
kind: Route
id: b
match: { paths: ["/b"] }
direct_response: { status: 200 }
"#;

    fn next(previous: &Snapshot, files: &[(&str, &str)]) -> Snapshot {
        let docs: Vec<_> = files
            .iter()
            .flat_map(|(name, text)| parse_file((*name).into(), text))
            .collect();
        let (catalog, rejected) = admit(&docs, &previous.catalog);
        Snapshot::compile(catalog, rejected, previous, previous.revision + 1)
    }

    fn chain(s: &Snapshot, route: &str) -> Vec<&'static str> {
        s.routes[route].plugins.names().collect()
    }

    fn rule(id: &str, plugins: &str) -> String {
        format!("kind: GlobalRule\nid: {id}\nplugins: {plugins}\n")
    }

    #[test]
    fn global_plugins_run_first_on_every_route_and_rules_go_by_id() {
        let z = rule("z", "[{ name: cors, config: { allow_origins: ['*'] } }]");
        let a = rule(
            "a",
            "[{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }]",
        );
        let s = next(
            &Snapshot::empty(),
            &[("r.yaml", ROUTES), ("z.yaml", &z), ("a.yaml", &a)],
        );
        assert!(s.rejected.is_empty(), "{:?}", s.rejected);
        // Same stage (Admit): global ones first, rule `a` before rule `z`, then the route's.
        assert_eq!(
            chain(&s, "a"),
            [
                "ip_restriction",
                "cors",
                "request_size_limit",
                "header-rewrite"
            ]
        );
        assert_eq!(chain(&s, "b"), ["ip_restriction", "cors"]);
    }

    #[test]
    fn a_route_keeps_each_unchanged_plugin_across_a_change() {
        let two = ROUTES.replace(
            "plugins: [{ name: request_size_limit, config: { max_body: 10 } }]",
            "plugins: [{ name: request_size_limit, config: { max_body: 10 } }, \
             { name: cors, config: { allow_origins: ['*'] } }]",
        );
        let s1 = next(&Snapshot::empty(), &[("r.yaml", &two)]);
        assert!(s1.rejected.is_empty(), "{:?}", s1.rejected);
        // The route changes (a new path and a plugin first in the list): the size limit and
        // the cors plugin are the same instances, the new one is built.
        let changed = two.replace("/a\"", "/aa\"").replace(
            "plugins: [",
            "plugins: [{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }, ",
        );
        let s2 = next(&s1, &[("r.yaml", &changed)]);
        assert!(s2.rejected.is_empty(), "{:?}", s2.rejected);
        // Route `a`'s own plugins: its header rules, then its list.
        let (old, new) = (&s1.routes["a"].own, &s2.routes["a"].own);
        assert_eq!(new.len(), 4);
        assert!(Arc::ptr_eq(&old[0], &new[0]), "header rules unchanged");
        assert!(Arc::ptr_eq(&old[1], &new[2]));
        assert!(Arc::ptr_eq(&old[2], &new[3]));
        // A changed config is a new plugin.
        let limit = two.replace("max_body: 10", "max_body: 11");
        let s3 = next(&s1, &[("r.yaml", &limit)]);
        let (old, new) = (&s1.routes["a"].own, &s3.routes["a"].own);
        assert!(!Arc::ptr_eq(&old[1], &new[1]));
        assert!(Arc::ptr_eq(&old[2], &new[2]));
    }

    #[test]
    fn routes_are_compiled_again_only_when_a_global_rule_changes() {
        let g1 = rule(
            "g",
            "[{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }]",
        );
        let s1 = next(&Snapshot::empty(), &[("r.yaml", ROUTES), ("g.yaml", &g1)]);

        // Nothing global changed: every route keeps its compiled form.
        let b_only = ROUTES.replace("/b\"", "/bb\"");
        let s2 = next(&s1, &[("r.yaml", &b_only), ("g.yaml", &g1)]);
        assert!(Arc::ptr_eq(&s1.routes["a"], &s2.routes["a"]));
        assert!(!Arc::ptr_eq(&s1.routes["b"], &s2.routes["b"]));
        assert!(s2.global_plugins.same(&s1.global_plugins));

        // A global rule changed: every route is compiled again, with the new plugins.
        let g2 = rule("g", "[{ name: cors, config: { allow_origins: ['*'] } }]");
        let s3 = next(&s2, &[("r.yaml", &b_only), ("g.yaml", &g2)]);
        assert!(!Arc::ptr_eq(&s2.routes["a"], &s3.routes["a"]));
        assert_eq!(chain(&s3, "b"), ["cors"]);

        // Deleted: the routes lose it.
        let s4 = next(&s3, &[("r.yaml", &b_only)]);
        assert_eq!(chain(&s4, "b"), Vec::<&str>::new());
        assert!(s4.global_rules.is_empty());
    }

    #[test]
    fn a_bad_global_rule_is_rejected_alone_and_its_previous_version_stays() {
        let good = rule(
            "g",
            "[{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }]",
        );
        let s1 = next(&Snapshot::empty(), &[("r.yaml", ROUTES), ("g.yaml", &good)]);
        let bad = rule("g", "[{ name: ip_restriction, config: { deny: [nope] } }]");
        let s2 = next(&s1, &[("r.yaml", ROUTES), ("g.yaml", &bad)]);
        assert_eq!(s2.rejected.len(), 1, "{:?}", s2.rejected);
        assert!(s2.rejected[0]
            .error
            .starts_with("plugins[0].config.deny[0]"));
        assert!(Arc::ptr_eq(&s1.routes["a"], &s2.routes["a"]));
        assert_eq!(chain(&s2, "b"), ["ip_restriction"]);
    }

    #[test]
    fn a_rule_that_fails_to_build_keeps_the_previous_compiled_version() {
        let good = rule(
            "g",
            "[{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }]",
        );
        let s1 = next(&Snapshot::empty(), &[("r.yaml", ROUTES), ("g.yaml", &good)]);
        // Admitted as it is, as if the registry had accepted it, then refused when built.
        let refused = |id: &str| {
            let stored = &s1.catalog.global_rules["g"];
            let mut spec = (*stored.value).clone();
            spec.id = id.into();
            spec.plugins[0].name = "nope".into();
            let origin = stored.origin.clone();
            let value = Arc::new(spec);
            crate::resource::Stored { value, origin }
        };
        let mut catalog = s1.catalog.clone();
        catalog.global_rules.insert("g".into(), refused("g"));
        let s2 = Snapshot::compile(catalog, Vec::new(), &s1, 2);
        assert_eq!(s2.rejected.len(), 1, "{:?}", s2.rejected);
        assert!(s2.rejected[0].error.starts_with("plugins[0].name"));
        assert!(Arc::ptr_eq(
            &s2.catalog.global_rules["g"].value,
            &s1.catalog.global_rules["g"].value
        ));
        assert!(s2.global_plugins.same(&s1.global_plugins));
        assert!(Arc::ptr_eq(&s1.routes["a"], &s2.routes["a"]));

        // A new rule that fails to build is simply not in force.
        let mut catalog = s1.catalog.clone();
        catalog.global_rules.insert("h".into(), refused("h"));
        let s3 = Snapshot::compile(catalog, Vec::new(), &s1, 3);
        assert_eq!(s3.rejected.len(), 1);
        assert!(!s3.catalog.global_rules.contains_key("h"));
        assert!(s3.global_plugins.same(&s1.global_plugins));
    }
}
