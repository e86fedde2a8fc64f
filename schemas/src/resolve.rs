//! Avro schema resolution (writer schema → reader schema) that matches union branches by name.
//!
//! apache-avro's `Value::resolve` picks a reader union branch by the *shape* of the value: the
//! first branch whose fields the value can fill. With a union of records, a record written as
//! `PaymentRefunded { payment_id, reason }` can come back as an earlier branch
//! `PaymentCaptured { payment_id }`, silently. The Avro specification matches a writer's named
//! branch to the reader branch of the same (full) name, which is what this module does. Records
//! are resolved field by field (reader defaults for fields the writer lacks), arrays and maps
//! element by element; everything without a union or record inside is left to apache-avro.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema, SchemaKind};
use apache_avro::types::Value;

/// Named types of a schema, to follow `Schema::Ref`s.
pub(crate) struct Named<'s>(HashMap<Name, &'s Schema>);

impl<'s> Named<'s> {
    pub(crate) fn of(schema: &'s Schema) -> Result<Self, String> {
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        Ok(Named(resolved.get_names().clone()))
    }

    fn deref(&self, schema: &'s Schema) -> Result<&'s Schema, String> {
        match schema {
            Schema::Ref { name } => self
                .0
                .get(name)
                .copied()
                .ok_or_else(|| format!("reference to unknown type {}", name.fullname(None))),
            other => Ok(other),
        }
    }
}

/// Resolves `value`, decoded with `writer`, into `reader`.
pub(crate) fn resolve<'w, 'r>(
    value: Value,
    writer: &'w Schema,
    reader: &'r Schema,
    wn: &Named<'w>,
    rn: &Named<'r>,
) -> Result<Value, String> {
    let w = wn.deref(writer)?;
    let r = rn.deref(reader)?;
    match (value, w, r) {
        (Value::Union(i, inner), Schema::Union(wu), _) => {
            let branch = wu
                .variants()
                .get(i as usize)
                .ok_or_else(|| format!("union index {i} out of range of the writer schema"))?;
            resolve(*inner, branch, r, wn, rn)
        }
        (value, w, Schema::Union(ru)) => {
            let (j, branch) = reader_branch(w, ru.variants(), rn)?;
            Ok(Value::Union(
                j as u32,
                Box::new(resolve(value, w, branch, wn, rn)?),
            ))
        }
        (Value::Record(fields), Schema::Record(wr), Schema::Record(rr)) => {
            let mut written: HashMap<String, Value> = fields.into_iter().collect();
            let mut out = Vec::with_capacity(rr.fields.len());
            for rf in &rr.fields {
                let wf = wr
                    .fields
                    .iter()
                    .find(|wf| wf.name == rf.name || rf.aliases.contains(&wf.name));
                let v = match wf.and_then(|wf| written.remove(&wf.name).map(|v| (wf, v))) {
                    Some((wf, v)) => resolve(v, &wf.schema, &rf.schema, wn, rn)
                        .map_err(|e| format!("field `{}`: {e}", rf.name))?,
                    None => {
                        let default = rf.default.clone().ok_or_else(|| {
                            format!(
                                "field `{}` is missing from the writer schema and has no default",
                                rf.name
                            )
                        })?;
                        default_value(default, &rf.schema, rn)
                            .map_err(|e| format!("default of field `{}`: {e}", rf.name))?
                    }
                };
                out.push((rf.name.clone(), v));
            }
            Ok(Value::Record(out))
        }
        (Value::Array(items), Schema::Array(wa), Schema::Array(ra)) => items
            .into_iter()
            .map(|v| resolve(v, &wa.items, &ra.items, wn, rn))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        (Value::Map(entries), Schema::Map(wm), Schema::Map(rm)) => entries
            .into_iter()
            .map(|(k, v)| Ok((k, resolve(v, &wm.types, &rm.types, wn, rn)?)))
            .collect::<Result<_, String>>()
            .map(Value::Map),
        (value, _, r) => value.resolve(r).map_err(|e| short(&e.to_string())),
    }
}

/// The reader branch for a writer type: the same full name for named types, otherwise the first
/// branch of the same kind, otherwise the first branch apache-avro can promote into.
fn reader_branch<'r>(
    w: &Schema,
    branches: &'r [Schema],
    rn: &Named<'r>,
) -> Result<(usize, &'r Schema), String> {
    let derefed: Vec<&Schema> = branches
        .iter()
        .map(|b| rn.deref(b))
        .collect::<Result<_, _>>()?;
    if let Some(name) = w.name() {
        let full = name.fullname(None);
        return derefed
            .iter()
            .position(|b| b.name().map(|n| n.fullname(None)) == Some(full.clone()))
            .map(|j| (j, derefed[j]))
            .ok_or_else(|| format!("the reader's union has no branch named {full}"));
    }
    let kind = SchemaKind::from(w);
    if let Some(j) = derefed.iter().position(|b| SchemaKind::from(*b) == kind) {
        return Ok((j, derefed[j]));
    }
    let promoted = match kind {
        SchemaKind::Int => &[SchemaKind::Long, SchemaKind::Float, SchemaKind::Double][..],
        SchemaKind::Long => &[SchemaKind::Float, SchemaKind::Double][..],
        SchemaKind::Float => &[SchemaKind::Double][..],
        SchemaKind::String => &[SchemaKind::Bytes][..],
        SchemaKind::Bytes => &[SchemaKind::String][..],
        _ => &[][..],
    };
    derefed
        .iter()
        .position(|b| promoted.contains(&SchemaKind::from(*b)))
        .map(|j| (j, derefed[j]))
        .ok_or_else(|| format!("the reader's union has no branch for {kind:?}"))
}

/// A field default (JSON, as in the schema) as a value of the field's reader schema. A union's
/// default belongs to its first branch.
fn default_value(
    default: serde_json::Value,
    schema: &Schema,
    rn: &Named<'_>,
) -> Result<Value, String> {
    let schema = rn.deref(schema)?;
    match schema {
        Schema::Union(u) => {
            let first = u
                .variants()
                .first()
                .ok_or_else(|| "empty union".to_string())?;
            let v = default_value(default, first, rn)?;
            Ok(Value::Union(0, Box::new(v)))
        }
        other => Value::try_from(default)
            .and_then(|v| v.resolve(other))
            .map_err(|e| short(&e.to_string())),
    }
}

/// apache-avro's messages can embed whole schemas and values; keep errors readable (and free of
/// record contents) by cutting them.
fn short(message: &str) -> String {
    const MAX: usize = 300;
    match message.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}
