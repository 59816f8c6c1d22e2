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
    let mut out = match &binding.body {
        BodyTarget::Whole if !is_blank(body) => decode_json(&input, body)?.encode_to_vec(),
        BodyTarget::Field(field) if !is_blank(body) => {
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
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
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
