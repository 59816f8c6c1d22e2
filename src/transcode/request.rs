//! A REST request turned into the protobuf bytes of a gRPC request message: the JSON body
//! (into the whole message or one field), the path variables, and the query parameters
//! into the fields left, as `google.api.http` lays down.
//!
//! Each part is decoded on its own and encoded; the parts are then concatenated, which
//! protobuf reads as a merge: a path variable wins over the same field in the body, as it
//! does in grpc-gateway.

use super::bindings::{field_path, is_scalar, Binding, BodyTarget};
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// The most JSON values a request body may hold. Each becomes a value of a dynamic message,
/// some hundreds of bytes in memory: this keeps a 4 MiB body of `null`s from costing the
/// gateway gigabytes.
pub const MAX_JSON_VALUES: usize = 100_000;
/// The deepest field path a query parameter may name (`a.b.c`): a message that contains
/// itself would otherwise let a parameter nest as deep as the head is long.
pub const MAX_FIELD_DEPTH: usize = 32;

/// Why a request does not fit its method: a 400 naming the field when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    pub message: String,
}

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest {
        message: message.into(),
    }
}

/// The request message's bytes for a call bound by `binding`.
pub fn encode(
    binding: &Binding,
    path_values: &[String],
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, BadRequest> {
    let input = binding.method.input();
    match &binding.body {
        BodyTarget::Whole if !is_blank(body) => survey(body, Shape::Message(input.clone()))?,
        BodyTarget::Field(field) if !is_blank(body) => survey(body, Shape::Field(field.clone()))?,
        _ => {}
    }
    let mut out = match &binding.body {
        BodyTarget::Whole if !is_blank(body) => decode_json(&input, body)?.encode_to_vec(),
        BodyTarget::Field(field) if !is_blank(body) => {
            // The survey saw one JSON value, so nothing can close this object early.
            // `{"field": BODY}`: the body read as that field, errors named under it.
            let mut wrapped = Vec::with_capacity(body.len() + field.name().len() + 5);
            wrapped.extend_from_slice(b"{\"");
            wrapped.extend_from_slice(field.name().as_bytes());
            wrapped.extend_from_slice(b"\":");
            wrapped.extend_from_slice(body);
            wrapped.push(b'}');
            decode_json(&input, &wrapped)?.encode_to_vec()
        }
        _ => Vec::new(),
    };
    let mut params = Map::new();
    for (fields, value) in binding.variables.iter().zip(path_values) {
        let name = dotted(fields);
        set(&mut params, fields, value, &name)?;
    }
    if let (Some(query), false) = (query, matches!(binding.body, BodyTarget::Whole)) {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (query_text(key)?, query_text(value)?);
            if key.split('.').count() > MAX_FIELD_DEPTH {
                return Err(bad(format!(
                    "query parameter `{}…`: deeper than {MAX_FIELD_DEPTH} fields",
                    &key[..key.len().min(64)]
                )));
            }
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let fields = field_path(&input, &path)
                .map_err(|e| bad(format!("query parameter `{key}`: {e}")))?;
            let bound = binding.variables.iter().any(|v| same(v, &fields))
                || matches!(&binding.body, BodyTarget::Field(f) if *f == fields[0]);
            if bound {
                return Err(bad(format!(
                    "query parameter `{key}`: the field is bound by the path or the body"
                )));
            }
            set(&mut params, &fields, &value, &key)?;
        }
    }
    if !params.is_empty() {
        let mut track = serde_path_to_error::Track::new();
        let params = DynamicMessage::deserialize(
            input.clone(),
            serde_path_to_error::Deserializer::new(Value::Object(params), &mut track),
        )
        .map_err(|e| named(&input, track, e))?;
        params.encode(&mut out).map_err(|e| bad(e.to_string()))?;
    }
    Ok(out)
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// A query string's name or value, `+` and percent escapes decoded; refused when the bytes
/// are not UTF-8, rather than two different values both reaching the method as U+FFFD.
fn query_text(raw: &str) -> Result<String, BadRequest> {
    if !raw.contains(['%', '+']) {
        return Ok(raw.to_owned());
    }
    let decoded = super::percent_decode(raw.as_bytes(), true, false);
    String::from_utf8(decoded).map_err(|_| bad("a query parameter is not UTF-8"))
}

/// Reads a body once before it is decoded: exactly one JSON value, at most
/// [`MAX_JSON_VALUES`] values in all, and no field twice in one object, whether by the same
/// key or by its proto and its JSON name (the proto3 JSON mapping refuses both; the decoder
/// would keep the last, so what a body plugin read first and what the method got would
/// differ). `shape` is what the body is read as: the request message, or one field of it.
fn survey(body: &[u8], shape: Shape) -> Result<(), BadRequest> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut count = 0;
    Survey {
        count: &mut count,
        shape,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| bad(format!("the body is not JSON that fits: {e}")))
}

/// What a JSON value stands for, as far as telling its fields apart goes.
#[derive(Clone)]
enum Shape {
    /// A message other than a well-known type: its keys name fields.
    Message(MessageDescriptor),
    /// A field's value: a list's elements or a map's values have the element's shape.
    Field(FieldDescriptor),
    /// Anything else (scalars, well-known types, a map's keys): keys are only compared.
    Opaque,
}

impl Shape {
    fn of_kind(kind: Kind) -> Shape {
        match kind {
            Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") => Shape::Message(m),
            _ => Shape::Opaque,
        }
    }

    /// The shape of an element of a list, or a value of a map or an object, when this is
    /// a field: a list's elements are the field's kind.
    fn element(&self) -> Shape {
        match self {
            Shape::Field(f) if f.is_map() => match f.kind() {
                Kind::Message(entry) => Shape::of_kind(entry.map_entry_value_field().kind()),
                _ => Shape::Opaque,
            },
            Shape::Field(f) => Shape::of_kind(f.kind()),
            _ => Shape::Opaque,
        }
    }
}

struct Survey<'a> {
    count: &'a mut usize,
    shape: Shape,
}

impl Survey<'_> {
    fn one<E: serde::de::Error>(&mut self) -> Result<(), E> {
        *self.count += 1;
        if *self.count > MAX_JSON_VALUES {
            return Err(E::custom(format!("more than {MAX_JSON_VALUES} values")));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Survey<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Survey<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.one()
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.one()
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.one()
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.one()
    }
    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.one()
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.one()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        let element = self.shape.element();
        while seq
            .next_element_seed(Survey {
                count: self.count,
                shape: element.clone(),
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        self.one()?;
        let shape = match &self.shape {
            // A field holding a message (not a map) is that message.
            Shape::Field(f) if !f.is_map() => Shape::of_kind(f.kind()),
            other => other.clone(),
        };
        let mut keys: HashSet<String> = HashSet::new();
        let mut fields: HashSet<u32> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let (value, field) = match &shape {
                Shape::Message(m) => {
                    let field = m
                        .get_field_by_json_name(&key)
                        .or_else(|| m.get_field_by_name(&key));
                    match field {
                        Some(f) => (Shape::Field(f.clone()), Some(f.number())),
                        // Unknown: the decoder names it.
                        None => (Shape::Opaque, None),
                    }
                }
                // A map field's object: its values have the map's value shape.
                Shape::Field(_) => (self.shape.element(), None),
                Shape::Opaque => (Shape::Opaque, None),
            };
            if field.is_some_and(|n| !fields.insert(n)) || !keys.insert(key.clone()) {
                return Err(A::Error::custom(format!("field `{key}` is given twice")));
            }
            map.next_value_seed(Survey {
                count: self.count,
                shape: value,
            })?;
        }
        Ok(())
    }
}

/// Reads JSON into a message of `desc`; the error names the field at fault.
pub fn decode_json(desc: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, BadRequest> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let options = DeserializeOptions::new();
    let message = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &options,
    )
    .and_then(|m| de.end().map(|()| m));
    message.map_err(|e| named(desc, track, e))
}

/// A decoding error, named by the field it stopped at.
fn named(
    desc: &MessageDescriptor,
    track: serde_path_to_error::Track,
    e: impl std::fmt::Display,
) -> BadRequest {
    let path = track.path().to_string();
    if path.is_empty() || path == "?" || path == "." {
        bad(format!("the body does not fit {}: {e}", desc.full_name()))
    } else {
        bad(format!("field `{path}`: {e}"))
    }
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    let names: Vec<&str> = fields.iter().map(FieldDescriptor::name).collect();
    names.join(".")
}

fn same(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Sets one value from a path or query string at `fields` in the JSON being built, typed
/// as the field's JSON form wants it; a repeated field gathers every value.
fn set(
    params: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    text: &str,
    name: &str,
) -> Result<(), BadRequest> {
    let (last, parents) = fields.split_last().expect("a field path has a field");
    if last.is_map() || !is_scalar(&last.kind()) {
        return Err(bad(format!(
            "`{name}` must name a single value, not a message or a map"
        )));
    }
    let value = typed(&last.kind(), text).ok_or_else(|| {
        bad(format!(
            "field `{name}`: `{text}` is not a {}",
            kind_name(&last.kind())
        ))
    })?;
    let mut object = params;
    for parent in parents {
        let entry = object
            .entry(parent.name())
            .or_insert_with(|| Value::Object(Map::new()));
        object = match entry {
            Value::Object(o) => o,
            _ => return Err(bad(format!("field `{name}` is set twice"))),
        };
    }
    if !last.is_list() && object.contains_key(last.name()) {
        // `?view=a&view=b`, or a field by its proto and its JSON name: a route matching
        // one value must not let the method see another.
        return Err(bad(format!("field `{name}` is set twice")));
    }
    if last.is_list() {
        match object
            .entry(last.name())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(values) => values.push(value),
            _ => return Err(bad(format!("field `{name}` is set twice"))),
        }
    } else {
        object.insert(last.name().to_owned(), value);
    }
    Ok(())
}

/// A string as the JSON value a field of `kind` takes: booleans and enum numbers need their
/// own JSON types; every other scalar takes its string form.
fn typed(kind: &Kind, text: &str) -> Option<Value> {
    match kind {
        Kind::Bool => text.parse().ok().map(Value::Bool),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => {
            text.parse().ok().map(Value::Bool)
        }
        Kind::Enum(e) => match text.parse::<i32>() {
            Ok(n) => Some(Value::from(n)),
            Err(_) => e.get_value_by_name(text).map(|_| Value::from(text)),
        },
        _ => Some(Value::from(text)),
    }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "boolean".into(),
        Kind::Enum(e) => format!("value of {}", e.full_name()),
        Kind::Message(m) => m.full_name().into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}
