//! The REST face of a set of gRPC services: every `google.api.http` binding (from the
//! methods' annotations and the route's `rules`) resolved against the descriptors once, when
//! the route compiles, and matched per request by HTTP method and path.

use super::rule::{check_rule, BindingError, HttpRule};
use super::template::PathTemplate;
use http::Method;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor, SerializeOptions};

/// Where the request body goes.
#[derive(Debug, Clone)]
pub enum BodyTarget {
    /// No body: every field not in the path comes from the query.
    None,
    /// `body: "*"`: the whole request message.
    Whole,
    /// `body: "field"`: that field; the query fills the rest.
    Field(FieldDescriptor),
}

/// One HTTP method and path template bound to one gRPC method.
#[derive(Debug, Clone)]
pub struct Binding {
    pub http_method: Method,
    pub template: PathTemplate,
    /// The field each path variable sets, in the template's order.
    pub variables: Vec<Vec<FieldDescriptor>>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC call's path.
    pub grpc_path: String,
    pub body: BodyTarget,
    /// The response field answered instead of the whole message.
    pub response_body: Option<FieldDescriptor>,
}

impl Binding {
    /// The method streams its answer: it is written as a JSON array as it comes.
    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// Every binding of one route.
#[derive(Debug, Default)]
pub struct Bindings {
    /// Most specific first, so the first match is the best.
    bindings: Vec<Binding>,
}

/// What a request's method and path find.
pub enum Found<'a> {
    Binding(&'a Binding, Vec<String>),
    /// The path is bound, but not for this HTTP method.
    OtherMethod,
    NoBinding,
}

impl Bindings {
    /// Resolves the route's `grpc_transcode` against `pool`; each error names the field at
    /// fault (a service, a rule's selector, a method's annotation).
    pub fn resolve(
        services: &[String],
        rules: &[HttpRule],
        pool: &DescriptorPool,
    ) -> Result<Bindings, Vec<BindingError>> {
        let mut errors = Vec::new();
        let names = services;
        let mut services = Vec::new();
        if names.is_empty() {
            services.extend(pool.services());
        }
        for (i, name) in names.iter().enumerate() {
            match pool.get_service_by_name(name) {
                Some(service) => services.push(service),
                None => errors.push(BindingError::new(
                    format!("grpc_transcode.services[{i}]"),
                    format!("`{name}` is not a service of the descriptors"),
                )),
            }
        }
        let http = pool.get_extension_by_name("google.api.http");
        let mut bindings = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let field = format!("grpc_transcode.rules[{i}]");
            let method = services
                .iter()
                .flat_map(|s| s.methods())
                .find(|m| m.full_name() == rule.selector);
            match method {
                Some(method) => bind(&field, rule, &method, &mut bindings, &mut errors),
                None => errors.push(BindingError::new(
                    format!("{field}.selector"),
                    format!(
                        "`{}` is not a method of the transcoded services",
                        rule.selector
                    ),
                )),
            }
        }
        for method in services.iter().flat_map(|s| s.methods()) {
            let Some(http) = &http else { break };
            let options = method.options();
            if !options.has_extension(http) {
                continue;
            }
            let field = format!("{} (google.api.http)", method.full_name());
            match annotation(&options.get_extension(http)) {
                Ok(rule) => bind(&field, &rule, &method, &mut bindings, &mut errors),
                Err(e) => errors.push(BindingError::new(field, e)),
            }
        }
        for (i, later) in bindings.iter().enumerate() {
            let earlier = bindings[..i].iter().find(|b| {
                b.http_method == later.http_method && b.template.same_paths(&later.template)
            });
            // The same method bound the same way twice (a rule repeating an annotation) is
            // harmless: the first is found first.
            if let Some(earlier) = earlier.filter(|e| e.method != later.method) {
                errors.push(BindingError::new(
                    "grpc_transcode",
                    format!(
                        "{} {} is bound to both {} and {}",
                        later.http_method,
                        later.template,
                        earlier.method.full_name(),
                        later.method.full_name()
                    ),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if bindings.is_empty() {
            return Err(vec![BindingError::new(
                "grpc_transcode",
                "no method is bound: annotate methods with google.api.http or give `rules`",
            )]);
        }
        // Stable: among equally specific templates, rules come before annotations.
        bindings.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
        Ok(Bindings { bindings })
    }

    /// The binding for a request, with its path variables' values.
    pub fn find(&self, method: &Method, path: &str) -> Found<'_> {
        let mut other_method = false;
        for binding in &self.bindings {
            if let Some(values) = binding.template.matches(path) {
                if binding.http_method == *method {
                    return Found::Binding(binding, values);
                }
                other_method = true;
            }
        }
        if other_method {
            Found::OtherMethod
        } else {
            Found::NoBinding
        }
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

/// A method's `google.api.http` option, read into the rule syntax the route uses.
fn annotation(value: &prost_reflect::Value) -> Result<HttpRule, String> {
    let prost_reflect::Value::Message(rule) = value else {
        return Err("is not an HttpRule".into());
    };
    let options = SerializeOptions::new().use_proto_field_name(true);
    let json = rule
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?;
    serde_json::from_value(json).map_err(|e| format!("is not an HttpRule: {e}"))
}

/// Resolves one rule and its additional bindings for `method`.
fn bind(
    field: &str,
    rule: &HttpRule,
    method: &MethodDescriptor,
    out: &mut Vec<Binding>,
    errors: &mut Vec<BindingError>,
) {
    let mut problems = Vec::new();
    // The selector was matched already; an annotation has none.
    let rule_checked = HttpRule {
        selector: method.full_name().to_owned(),
        ..rule.clone()
    };
    check_rule(field, &rule_checked, 0, &mut problems);
    if !problems.is_empty() {
        errors.extend(problems);
        return;
    }
    let all = std::iter::once((field.to_owned(), rule)).chain(
        rule.additional_bindings
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("{field}.additional_bindings[{i}]"), r)),
    );
    for (field, rule) in all {
        match binding(rule, method) {
            Ok(b) => out.push(b),
            Err(e) => errors.push(BindingError::new(field, e)),
        }
    }
}

fn binding(rule: &HttpRule, method: &MethodDescriptor) -> Result<Binding, String> {
    if method.is_client_streaming() {
        return Err(format!(
            "`{}` takes a stream of requests, which a REST call cannot send",
            method.full_name()
        ));
    }
    let (http_method, path) = rule.pattern()?;
    let http_method = Method::from_bytes(http_method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{http_method}` is not an HTTP method"))?;
    let template = PathTemplate::parse(path).map_err(|e| e.to_string())?;
    let input = method.input();
    let mut variables = Vec::new();
    for variable in template.variables() {
        let fields = field_path(&input, &variable.field)
            .map_err(|e| format!("path variable `{variable}`: {e}"))?;
        let last = fields.last().expect("a field path has a field");
        if last.is_list() || last.is_map() || !is_scalar(&last.kind()) {
            return Err(format!(
                "path variable `{variable}` must name a single value, not a message or a list"
            ));
        }
        variables.push(fields);
    }
    let body =
        match rule.body.as_str() {
            "" => BodyTarget::None,
            "*" => BodyTarget::Whole,
            name => BodyTarget::Field(input.get_field_by_name(name).ok_or_else(|| {
                format!("body: `{name}` is not a field of {}", input.full_name())
            })?),
        };
    let output = method.output();
    let response_body = match rule.response_body.as_str() {
        "" => None,
        name => Some(output.get_field_by_name(name).ok_or_else(|| {
            format!(
                "response_body: `{name}` is not a field of {}",
                output.full_name()
            )
        })?),
    };
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    Ok(Binding {
        http_method,
        template,
        variables,
        method: method.clone(),
        grpc_path,
        body,
        response_body,
    })
}

/// The fields a dotted path walks through, from `message`.
pub fn field_path(
    message: &prost_reflect::MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::with_capacity(path.len());
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("`{name}` is not a field of {}", current.full_name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("`{name}` is not a message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Whether a field of this kind takes its value from one string of a path or query: the
/// scalars and enums, and the well-known types whose JSON form is a string or number.
pub fn is_scalar(kind: &Kind) -> bool {
    match kind {
        Kind::Message(m) => matches!(
            m.full_name(),
            "google.protobuf.Timestamp"
                | "google.protobuf.Duration"
                | "google.protobuf.FieldMask"
                | "google.protobuf.DoubleValue"
                | "google.protobuf.FloatValue"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt64Value"
                | "google.protobuf.Int32Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.BoolValue"
                | "google.protobuf.StringValue"
                | "google.protobuf.BytesValue"
        ),
        _ => true,
    }
}
