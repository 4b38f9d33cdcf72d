//! One compiled schema: whether an event's `data` matches it, and where and why not.
//!
//! Schemas are JSON Schema draft 2020-12, compiled once when registered (or when the host
//! starts) and kept compiled in the live registry: validating is the ingress hot path. Formats
//! (`date-time`, `email`, ...) are checked, not only annotated: a schema that names a format
//! means it. Only references within the schema itself resolve (no network, no files).

use serde_json::Value;

/// The `$schema` this host compiles; a schema may leave it out.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Problems reported per refused event: enough to fix the payload, bounded so that a
/// hostile one cannot make the answer large.
pub const MAX_VIOLATIONS: usize = 10;

/// A schema, compiled.
pub struct Compiled {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// Where an instance breaks its schema: the JSON pointer into the data and the rule, e.g.
/// `"/quantity": must be >= 1`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub pointer: String,
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\": {}", self.pointer, self.rule)
    }
}

/// Every violation, `; `-separated, for one-line messages.
pub fn describe(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(Violation::to_string).collect();
    parts.join("; ")
}

impl Compiled {
    /// Compile `schema`, or say why it is not a schema this host takes.
    pub fn new(schema: &Value) -> Result<Compiled, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a schema is a JSON object (or `true` / `false`)".into());
        }
        match schema.get("$schema").map(|s| s.as_str()) {
            None | Some(Some(DRAFT_2020_12)) => {}
            Some(Some(other)) => {
                return Err(format!(
                    "`$schema` is {other:?}: this host takes draft 2020-12 ({DRAFT_2020_12:?}, \
                     or leave `$schema` out)"
                ));
            }
            Some(None) => return Err("`$schema` must be a string".into()),
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(schema)
            .map_err(|err| format!("not a valid draft 2020-12 schema: {err}"))?;
        Ok(Compiled { validator })
    }

    /// `Ok` when `instance` matches; otherwise its first [`MAX_VIOLATIONS`] violations.
    pub fn check(&self, instance: &Value) -> Result<(), Vec<Violation>> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let violations: Vec<Violation> = self
            .validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS)
            .map(|error| Violation {
                pointer: error.instance_path().as_str().to_owned(),
                rule: rule(&error),
            })
            .collect();
        Err(violations)
    }
}

/// The rule an error breaks, in the short form the problem shows (`must be >= 1`); the
/// crate's own message where there is no shorter one.
fn rule(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    match error.kind() {
        Kind::Minimum { limit } => format!("must be >= {limit}"),
        Kind::Maximum { limit } => format!("must be <= {limit}"),
        Kind::ExclusiveMinimum { limit } => format!("must be > {limit}"),
        Kind::ExclusiveMaximum { limit } => format!("must be < {limit}"),
        Kind::MinLength { limit } => format!("must be at least {limit} characters long"),
        Kind::MaxLength { limit } => format!("must be at most {limit} characters long"),
        Kind::MinItems { limit } => format!("must have at least {limit} items"),
        Kind::MaxItems { limit } => format!("must have at most {limit} items"),
        Kind::Required { property } => format!("required property {property} is missing"),
        Kind::Enum { options } => format!("must be one of {options}"),
        Kind::Constant { expected_value } => format!("must be {expected_value}"),
        Kind::Pattern { pattern } => format!("must match the pattern {pattern:?}"),
        Kind::Format { format } => format!("must be a valid {format}"),
        Kind::AdditionalProperties { unexpected } => {
            format!("has properties the schema does not allow: {unexpected:?}")
        }
        Kind::Type { .. } => {
            let message = error.to_string();
            // "1 is not of type \"string\"": keep what follows "is not", it names the type.
            match message.rsplit_once(" is not of ") {
                Some((_, types)) => format!("must be of {types}"),
                None => message,
            }
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_schema() -> Value {
        json!({
            "$schema": DRAFT_2020_12,
            "type": "object",
            "required": ["sku", "quantity"],
            "properties": {
                "sku": {"type": "string", "minLength": 1},
                "quantity": {"type": "integer", "minimum": 1},
                "placed_at": {"type": "string", "format": "date-time"}
            }
        })
    }

    #[test]
    fn names_the_pointer_and_the_rule() {
        let compiled = Compiled::new(&order_schema()).unwrap();
        assert!(compiled.check(&json!({"sku": "s", "quantity": 2})).is_ok());
        let violations = compiled
            .check(&json!({"sku": "s", "quantity": 0}))
            .unwrap_err();
        assert_eq!(describe(&violations), "\"/quantity\": must be >= 1");
        let violations = compiled.check(&json!({"quantity": "2"})).unwrap_err();
        let text = describe(&violations);
        assert!(
            text.contains("\"\": required property \"sku\" is missing"),
            "{text}"
        );
        assert!(
            text.contains("\"/quantity\": must be of type \"integer\""),
            "{text}"
        );
    }

    #[test]
    fn checks_formats() {
        let compiled = Compiled::new(&order_schema()).unwrap();
        let violations = compiled
            .check(&json!({"sku": "s", "quantity": 1, "placed_at": "yesterday"}))
            .unwrap_err();
        assert_eq!(
            describe(&violations),
            "\"/placed_at\": must be a valid date-time"
        );
    }

    #[test]
    fn refuses_other_drafts_and_non_schemas() {
        let draft7 = json!({"$schema": "http://json-schema.org/draft-07/schema#"});
        assert!(
            Compiled::new(&draft7)
                .unwrap_err()
                .contains("draft 2020-12")
        );
        assert!(Compiled::new(&json!([1])).is_err());
        let bad = json!({"type": "objekt"});
        assert!(Compiled::new(&bad).unwrap_err().contains("not a valid"));
        let remote = json!({"$ref": "https://example.com/other.json"});
        assert!(Compiled::new(&remote).is_err());
    }

    #[test]
    fn bounds_the_violations_reported() {
        let schema = json!({"type": "array", "items": {"type": "string"}});
        let compiled = Compiled::new(&schema).unwrap();
        let many = Value::Array((0..100).map(|n| json!(n)).collect());
        assert_eq!(compiled.check(&many).unwrap_err().len(), MAX_VIOLATIONS);
    }
}
