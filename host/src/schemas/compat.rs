//! Whether a new JSON Schema version of an event type may join the earlier versions of its
//! family (`NAME.v1`, `NAME.v2`, ...) under the family's [`Compatibility`] mode.
//!
//! # What "compatible" means
//!
//! A change is checked for readers in one or both [`Direction`]s:
//!
//! - **Backward** (new readers read old data): every instance valid under the old schema is
//!   valid under the new one *once the new schema's defaults are filled in* by
//!   [`fill_defaults`], which the host does when it hands an old event to a newer reader
//!   without an upcaster. That is what lets a new required field with a `default` through.
//! - **Forward** (old readers read new data): every instance valid under the new schema is
//!   valid under the old one. No defaults are filled in.
//!
//! `backward`, `forward` and `full` (both) check the new schema against the latest earlier
//! version only (the highest version number); the `_transitive` modes check it against every
//! earlier version, so a reader of v1 is protected even when some step in between was
//! registered under another mode. `none` checks nothing.
//!
//! JSON Schema is not Avro: it is a language of constraints, and whether one schema accepts
//! everything another accepts cannot be decided in general (`pattern` inclusion, `anyOf`,
//! `not`, recursive `$ref`...). This module uses a **sound, conservative** rule set over a
//! structural subset of draft 2020-12: it never calls a change compatible when some instance
//! would break a reader, and it may call some compatible changes breaking (reported as
//! "cannot prove compatibility: ..."). When that happens the team registers an upcaster for
//! the new version, or sets the family's mode to `none`.
//!
//! # The rules
//!
//! Both directions ask the same question, `subset(narrow, wide)`: is every instance valid
//! under `narrow` valid under `wide`? Backward asks it with narrow = old, wide = new; forward
//! with narrow = new, wide = old. It is answered keyword by keyword of `wide`, recursing
//! through `properties`, `items` and `additionalProperties`; every unproven keyword is one
//! [`BreakingChange`] at the instance location it constrains.
//!
//! - **Boolean schemas.** `true`, `{}` and schemas of annotations only accept everything:
//!   nothing to check. `false` accepts nothing: a narrow `false` needs no check, a wide
//!   `false` breaks any narrow schema but `false`.
//! - **Annotations** are ignored: `title`, `description`, `default` (but see defaults below),
//!   `examples`, `$comment`, `$schema`, `$id`, `deprecated`, `readOnly`, `writeOnly`, `$anchor`.
//! - **`type`**: narrow's types must all be among wide's (`integer` counts as a `number`).
//! - **`enum` / `const`**: narrow must enumerate its values too, all of them among wide's
//!   (deep equality, where `1` and `1.0` are the same number).
//! - **Bounds** (`minimum`, `exclusiveMinimum`, `maximum`, `exclusiveMaximum`, `minLength`,
//!   `maxLength`, `minItems`, `maxItems`, `minProperties`, `maxProperties`): narrow must bound
//!   at least as tightly (a narrow `exclusiveMinimum: 0` implies a wide `minimum: 0`, not the
//!   reverse).
//! - **`multipleOf`**: narrow's must be a whole multiple of wide's (to within 1e-9).
//! - **`pattern`, `format`**: narrow must carry the identical value. `format` is treated as an
//!   assertion, although 2020-12 makes it an annotation by default: safe either way.
//! - **`uniqueItems: true`** in wide needs it in narrow.
//! - **`items`**: `subset(narrow.items, wide.items)` for every element (pointer `.../*`).
//! - **Objects**:
//!   - a field wide requires and narrow does not breaks: backward, "new required field without
//!     a default", unless the new schema declares a `default` for it; forward, "required
//!     field removed".
//!   - a field both declare: `subset` of the two field schemas.
//!   - a field only wide declares: fine if narrow forbids additional properties (narrow never
//!     has it), else narrow's `additionalProperties` must fit wide's field schema. So adding a
//!     typed field is backward compatible only when the old schema was closed
//!     (`additionalProperties: false`): an old event of an open schema may carry a field of
//!     that name with any value.
//!   - a field only narrow declares: breaks if wide forbids additional properties, must fit
//!     wide's `additionalProperties` schema if it has one. So adding a field to a closed old
//!     schema breaks forward compatibility. Closed or open is the author's trade-off.
//!   - if wide constrains additional properties, narrow's must fit.
//!   - `patternProperties` in narrow counts as allowing any additional property.
//! - **A narrow `enum`/`const`** also satisfies a wide keyword when each of its values does:
//!   `{"const": 3}` fits `{"type": "integer", "minimum": 0}`.
//! - **Every other keyword** (`$ref`, `$defs`, `allOf`, `anyOf`, `oneOf`, `not`, `if`,
//!   `patternProperties`, `prefixItems`, `dependentRequired`, unknown keywords...) in wide must
//!   be present in narrow with a deep-equal value, else "cannot prove compatibility". In narrow
//!   only, such a keyword only narrows narrow further: fine. The keywords whose meaning hangs
//!   on others are held tighter: `contains`, `minContains` and `maxContains` must agree as a
//!   group, `unevaluatedProperties`/`unevaluatedItems` need the whole schema object equal, a
//!   `$ref` must point to equal schemas in both documents (only local `#/...` pointers are
//!   followed, and not in documents with an embedded `$id`), `$dynamicRef` is never proven.
//!
//! ## Defaults (backward only)
//!
//! Wherever the host fills defaults (along `properties` and `items` from the root), the checks
//! take the filled-in instance: a field the new schema gives a `default` may be missing from old
//! events, so the default, with its own nested defaults filled in, must itself satisfy the
//! field's schema; `maxProperties` must leave room for the filled fields; `enum`/`const` values
//! are compared after filling; and a keyword this module cannot reason about (say an identical
//! `dependentRequired`) is not proven where filling can change what it sees.
//!
//! ## Assumptions
//!
//! Every schema is read as draft 2020-12, whatever its `$schema` says. A transitive backward
//! check fills the reader's defaults into the original event once; it says nothing of filling
//! through each version in between.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Number, Value};

/// How a family (all versions NAME.v1, NAME.v2, ... of one type) may evolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// New readers read the events of the latest earlier version.
    #[default]
    Backward,
    /// Readers of the latest earlier version read new events.
    Forward,
    /// Both [`Compatibility::Backward`] and [`Compatibility::Forward`].
    Full,
    /// New readers read the events of every earlier version.
    BackwardTransitive,
    /// Readers of every earlier version read new events.
    ForwardTransitive,
    /// Both, against every earlier version.
    FullTransitive,
    /// Anything goes: the team takes care of its readers (upcasters, coordinated deploys).
    None,
}

impl Compatibility {
    /// Every spelling, for config parsing and error messages.
    pub const CHOICES: &'static [(&'static str, Compatibility)] = &[
        ("backward", Compatibility::Backward),
        ("forward", Compatibility::Forward),
        ("full", Compatibility::Full),
        ("backward_transitive", Compatibility::BackwardTransitive),
        ("forward_transitive", Compatibility::ForwardTransitive),
        ("full_transitive", Compatibility::FullTransitive),
        ("none", Compatibility::None),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::BackwardTransitive => "backward_transitive",
            Compatibility::ForwardTransitive => "forward_transitive",
            Compatibility::FullTransitive => "full_transitive",
            Compatibility::None => "none",
        }
    }

    /// Whether a new version is checked against every earlier one rather than the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// The readers this mode protects.
    fn directions(self) -> &'static [Direction] {
        match self {
            Compatibility::Backward | Compatibility::BackwardTransitive => &[Direction::Backward],
            Compatibility::Forward | Compatibility::ForwardTransitive => &[Direction::Forward],
            Compatibility::Full | Compatibility::FullTransitive => {
                &[Direction::Backward, Direction::Forward]
            }
            Compatibility::None => &[],
        }
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = String;

    fn from_str(spelling: &str) -> Result<Self, Self::Err> {
        Compatibility::CHOICES
            .iter()
            .find(|(name, _)| *name == spelling)
            .map(|&(_, mode)| mode)
            .ok_or_else(|| {
                let names: Vec<String> = Compatibility::CHOICES
                    .iter()
                    .map(|(name, _)| format!("{name:?}"))
                    .collect();
                format!("expected one of {}, got {spelling:?}", names.join(", "))
            })
    }
}

/// Which readers a change is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// New readers read old data: every event valid under the old schema (with the new
    /// schema's defaults filled in, see [`fill_defaults`]) is valid under the new one.
    Backward,
    /// Old readers read new data: every event valid under the new schema is valid under the
    /// old one.
    Forward,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Backward => "backward",
            Direction::Forward => "forward",
        }
    }

    /// Where it sorts among a schema's breaking changes: backward first.
    fn rank(self) -> u8 {
        match self {
            Direction::Backward => 0,
            Direction::Forward => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a schema breaks readers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakingChange {
    /// The version the new schema was checked against.
    pub against: u32,
    pub direction: Direction,
    /// Where in the event's data, as a JSON pointer of the instance ("" for the root,
    /// "/quantity", "/items/*/sku"). `*` stands for every array element, or, under
    /// `additionalProperties`, for every property `properties` does not name.
    pub pointer: String,
    /// What breaks, in words, worded for the direction: changes are told from the old
    /// version to the new one ("minimum raised from 1 to 2", "enum values added that
    /// readers of v1 reject: 3").
    pub rule: String,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{} ({}): ", self.against, self.direction)?;
        if self.pointer.is_empty() {
            f.write_str("(root)")?;
        } else {
            write!(f, "{:?}", self.pointer)?;
        }
        write!(f, ": {}", self.rule)
    }
}

/// What `mode` says of registering `new` after `earlier` (every registered earlier version of
/// the family, as (version, schema), in any order). Non-transitive modes check only against
/// the highest earlier version; transitive ones against every earlier one; Backward checks
/// [`Direction::Backward`], Forward checks [`Direction::Forward`], Full both; None checks
/// nothing. Returns every breaking change found (empty = compatible), sorted by (against,
/// direction, pointer).
pub fn check(mode: Compatibility, earlier: &[(u32, &Value)], new: &Value) -> Vec<BreakingChange> {
    let directions = mode.directions();
    let against: Vec<&(u32, &Value)> = if mode.is_transitive() {
        earlier.iter().collect()
    } else {
        earlier
            .iter()
            .max_by_key(|(version, _)| *version)
            .into_iter()
            .collect()
    };
    let mut found = Vec::new();
    for &(version, old) in against {
        for &direction in directions {
            found.extend(changes(direction, version, old, new));
        }
    }
    sort_and_dedup(&mut found);
    found
}

/// The breaking changes for readers in `direction` between `old` (version `against`) and
/// `new`.
pub fn changes(
    direction: Direction,
    against: u32,
    old: &Value,
    new: &Value,
) -> Vec<BreakingChange> {
    let (narrow, wide) = match direction {
        Direction::Backward => (old, new),
        Direction::Forward => (new, old),
    };
    let mut checker = Checker {
        direction,
        against,
        narrow_root: narrow,
        wide_root: wide,
        refs_resolvable: !has_embedded_id(narrow, true) && !has_embedded_id(wide, true),
        found: Vec::new(),
    };
    // The host fills the new schema's defaults into old events: backward only.
    let filled = direction == Direction::Backward;
    checker.subset(narrow, wide, "", filled);
    let mut found = checker.found;
    sort_and_dedup(&mut found);
    found
}

/// Fill in, in place, the `default` of every property `schema` declares that `instance`
/// lacks: at every object level reached through `properties` (recursively into properties
/// the instance has, after filling) and into each element of arrays through `items`. Boolean
/// schemas and anything else fill nothing. The host applies this when it delivers an event of
/// version N to a reader of version N+1 whose schema is backward compatible (no upcaster):
/// that is what makes "a new required field with a default" backward compatible.
pub fn fill_defaults(schema: &Value, instance: &mut Value) {
    if let Value::Object(schema) = schema {
        fill_from(schema, instance);
    }
}

fn fill_from(schema: &Map<String, Value>, instance: &mut Value) {
    match instance {
        Value::Object(fields) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (name, property) in properties {
                if !fields.contains_key(name)
                    && let Some(default) = property.get("default")
                {
                    fields.insert(name.clone(), default.clone());
                }
            }
            for (name, property) in properties {
                if let Some(field) = fields.get_mut(name) {
                    fill_defaults(property, field);
                }
            }
        }
        Value::Array(elements) => {
            if let Some(items) = schema.get("items") {
                for element in elements {
                    fill_defaults(items, element);
                }
            }
        }
        _ => {}
    }
}

/// Keywords that say nothing about which instances are valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$schema",
    "$id",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$anchor",
];

/// Keywords the rules reason about one by one; any other is compared for equality.
const STRUCTURAL: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minProperties",
    "maxProperties",
];

/// `minContains: 0` switches `contains` off, so equal `contains` alone proves nothing.
const CONTAINS_GROUP: &[&str] = &["contains", "minContains", "maxContains"];

/// The keywords that decide, together, which properties an object may have.
const OBJECT_KEYWORDS: &[&str] = &["properties", "required", "additionalProperties"];

const TYPE_NAMES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// How far from a whole number a quotient may be and still count as one: `multipleOf: 0.1`
/// must accept 0.3, whose quotient is 2.9999999999999996 in floating point.
const MULTIPLE_TOLERANCE: f64 = 1e-9;

/// The schema `items` is compared as when narrow says nothing of elements.
static ANYTHING: Value = Value::Bool(true);

/// One `subset(narrow, wide)` question: the state shared by its recursion.
struct Checker<'a> {
    direction: Direction,
    against: u32,
    narrow_root: &'a Value,
    wide_root: &'a Value,
    /// `#/...` references resolve against the document root only when no subschema
    /// declares its own `$id` (which would start a new base).
    refs_resolvable: bool,
    found: Vec<BreakingChange>,
}

/// One schema object on each side, at one place in the instance.
struct Level<'s> {
    narrow: &'s Map<String, Value>,
    wide: &'s Map<String, Value>,
    pointer: &'s str,
    /// Whether the host fills the wide (new) schema's defaults into the instance here:
    /// backward only, and only along `properties` and `items`, where `fill_defaults` goes.
    filled: bool,
    /// The values narrow allows, when it enumerates them (`const`/`enum`), filled in when
    /// `filled`.
    values: Option<Vec<Value>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Lower,
    Upper,
}

/// What `additionalProperties` allows.
#[derive(Clone, Copy)]
enum Additional<'s> {
    Any,
    Nothing,
    Schema(&'s Value),
}

/// What one side's object keywords say.
struct ObjectRules<'s> {
    properties: Option<&'s Map<String, Value>>,
    required: BTreeSet<&'s str>,
    additional: Additional<'s>,
}

impl Checker<'_> {
    fn report(&mut self, pointer: &str, rule: String) {
        self.found.push(BreakingChange {
            against: self.against,
            direction: self.direction,
            pointer: pointer.to_owned(),
            rule,
        });
    }

    fn readers(&self) -> String {
        format!("readers of v{}", self.against)
    }

    /// Orders a (narrow, wide) pair as (old, new), which is how messages tell a change.
    fn old_new<T>(&self, narrow: T, wide: T) -> (T, T) {
        match self.direction {
            Direction::Backward => (narrow, wide),
            Direction::Forward => (wide, narrow),
        }
    }

    /// Reports, at `pointer`, every reason some instance valid under `narrow` is not valid
    /// under `wide`.
    fn subset(&mut self, narrow: &Value, wide: &Value, pointer: &str, filled: bool) {
        let wide = match wide {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                if *narrow != Value::Bool(false) {
                    let rule = match self.direction {
                        Direction::Backward => "no longer allowed (schema is false)".to_owned(),
                        Direction::Forward => {
                            format!(
                                "now allowed, but {} reject it (schema is false)",
                                self.readers()
                            )
                        }
                    };
                    self.report(pointer, rule);
                }
                return;
            }
            Value::Object(wide) => wide,
            _ => {
                self.report(
                    pointer,
                    "cannot prove compatibility: the schema is neither an object nor a boolean"
                        .to_owned(),
                );
                return;
            }
        };
        if only_annotations(wide) {
            return;
        }
        // A narrow schema that is not a schema at all is read as allowing anything: the
        // safe assumption.
        let anything = Map::new();
        let narrow = match narrow {
            Value::Bool(false) => return,
            Value::Object(narrow) => narrow,
            _ => &anything,
        };
        let values = enumerated_values(narrow).map(|mut values| {
            if filled {
                for value in &mut values {
                    fill_from(wide, value);
                }
            }
            values
        });
        let level = Level {
            narrow,
            wide,
            pointer,
            filled,
            values,
        };
        self.check_type(&level);
        self.check_enumeration(&level);
        self.check_numeric_bounds(&level);
        self.check_multiple_of(&level);
        self.check_counts(&level);
        self.check_identical(&level);
        self.check_unique_items(&level);
        self.check_items(&level);
        self.check_object(&level);
        self.check_other_keywords(&level);
    }

    fn check_type(&mut self, level: &Level<'_>) {
        let Some(wide_type) = level.wide.get("type") else {
            return;
        };
        let Some(wide_types) = parse_types(wide_type) else {
            self.require_equal(level, "type");
            return;
        };
        let narrow_type = level
            .narrow
            .get("type")
            .filter(|t| parse_types(t).is_some());
        let narrow_types = narrow_type.and_then(parse_types);
        if narrow_types.is_some_and(|types| types_within(&types, &wide_types))
            || excused(level, &["type"])
        {
            return;
        }
        let (old, new) = self.old_new(narrow_type, Some(wide_type));
        let rule = type_change(old, new);
        self.report(level.pointer, rule);
    }

    fn check_enumeration(&mut self, level: &Level<'_>) {
        for keyword in ["enum", "const"] {
            let Some(rule) = level.wide.get(keyword) else {
                continue;
            };
            let allowed: &[Value] = if keyword == "enum" {
                let Some(allowed) = rule.as_array() else {
                    self.require_equal(level, keyword);
                    continue;
                };
                allowed
            } else {
                std::slice::from_ref(rule)
            };
            let message = match &level.values {
                None => {
                    let listed = list_values(allowed.iter());
                    match self.direction {
                        Direction::Backward => format!("{keyword} added (allows only {listed})"),
                        Direction::Forward => {
                            format!("{keyword} removed ({} allow only {listed})", self.readers())
                        }
                    }
                }
                Some(values) => {
                    let rejected: Vec<&Value> = values
                        .iter()
                        .filter(|value| !allowed.iter().any(|a| json_equal(value, a)))
                        .collect();
                    if rejected.is_empty() {
                        continue;
                    }
                    let listed = list_values(rejected.into_iter());
                    match (self.direction, keyword) {
                        (Direction::Backward, "enum") => {
                            format!("enum values no longer allowed: {listed}")
                        }
                        (Direction::Backward, _) => {
                            format!("values no longer allowed (const is {rule}): {listed}")
                        }
                        (Direction::Forward, "enum") => {
                            format!("enum values added that {} reject: {listed}", self.readers())
                        }
                        (Direction::Forward, _) => format!(
                            "values added that {} reject (const is {rule}): {listed}",
                            self.readers()
                        ),
                    }
                }
            };
            self.report(level.pointer, message);
        }
    }

    fn check_numeric_bounds(&mut self, level: &Level<'_>) {
        const BOUNDS: [(&str, Side, bool); 4] = [
            ("minimum", Side::Lower, false),
            ("exclusiveMinimum", Side::Lower, true),
            ("maximum", Side::Upper, false),
            ("exclusiveMaximum", Side::Upper, true),
        ];
        for (keyword, side, exclusive) in BOUNDS {
            let Some(rule) = level.wide.get(keyword) else {
                continue;
            };
            let Some(limit) = rule.as_number() else {
                self.require_equal(level, keyword);
                continue;
            };
            let narrow_keywords = match side {
                Side::Lower => ["minimum", "exclusiveMinimum"],
                Side::Upper => ["maximum", "exclusiveMaximum"],
            };
            let proven = narrow_keywords.iter().any(|narrow_keyword| {
                let Some(bound) = level.narrow.get(*narrow_keyword).and_then(Value::as_number)
                else {
                    return false;
                };
                let narrow_exclusive = narrow_keyword.starts_with("exclusive");
                match (compare_numbers(bound, limit), side) {
                    (Some(Ordering::Greater), Side::Lower)
                    | (Some(Ordering::Less), Side::Upper) => true,
                    (Some(Ordering::Equal), _) => narrow_exclusive || !exclusive,
                    _ => false,
                }
            });
            if proven || excused(level, &[keyword]) {
                continue;
            }
            // Show narrow's bound of the same kind if it has one, else its other bound.
            let same_kind = if exclusive {
                narrow_keywords[1]
            } else {
                narrow_keywords[0]
            };
            let other_kind = if exclusive {
                narrow_keywords[0]
            } else {
                narrow_keywords[1]
            };
            let shown = [same_kind, other_kind]
                .into_iter()
                .find_map(|narrow_keyword| {
                    level
                        .narrow
                        .get(narrow_keyword)
                        .filter(|bound| bound.is_number())
                        .map(|bound| (narrow_keyword, bound))
                });
            let rule = self.setting_change(shown, (keyword, rule), true);
            self.report(level.pointer, rule);
        }
    }

    fn check_multiple_of(&mut self, level: &Level<'_>) {
        let Some(rule) = level.wide.get("multipleOf") else {
            return;
        };
        let Some(divisor) = positive_number(rule) else {
            self.require_equal(level, "multipleOf");
            return;
        };
        let narrow_value = level
            .narrow
            .get("multipleOf")
            .filter(|v| positive_number(v).is_some());
        let proven = narrow_value
            .and_then(positive_number)
            .is_some_and(|narrow_divisor| is_whole_multiple(narrow_divisor, divisor));
        if proven || excused(level, &["multipleOf"]) {
            return;
        }
        let shown = narrow_value.map(|value| ("multipleOf", value));
        let rule = self.setting_change(shown, ("multipleOf", rule), false);
        self.report(level.pointer, rule);
    }

    fn check_counts(&mut self, level: &Level<'_>) {
        const COUNTS: [(&str, Side); 6] = [
            ("minLength", Side::Lower),
            ("maxLength", Side::Upper),
            ("minItems", Side::Lower),
            ("maxItems", Side::Upper),
            ("minProperties", Side::Lower),
            ("maxProperties", Side::Upper),
        ];
        for (keyword, side) in COUNTS {
            let Some(rule) = level.wide.get(keyword) else {
                continue;
            };
            let Some(limit) = count(rule) else {
                self.require_equal(level, keyword);
                continue;
            };
            // Filling defaults adds fields: up to this many more than the old event had.
            let added = if keyword == "maxProperties" && level.filled {
                fillable_count(level)
            } else {
                0
            };
            let narrow_value = level.narrow.get(keyword).filter(|v| count(v).is_some());
            let narrow_count = narrow_value.and_then(count);
            let proven = narrow_count.is_some_and(|narrow_count| match side {
                Side::Lower => narrow_count >= limit,
                Side::Upper => narrow_count.saturating_add(added) <= limit,
            });
            if proven || excused(level, &[keyword]) {
                continue;
            }
            let rule = if added > 0 && narrow_count.is_some_and(|n| n <= limit) {
                format!(
                    "maxProperties {limit} may be exceeded once defaults are filled in (up to {added} more)"
                )
            } else {
                self.setting_change(narrow_value.map(|v| (keyword, v)), (keyword, rule), true)
            };
            self.report(level.pointer, rule);
        }
    }

    /// `pattern` and `format`: whether one regular expression or format contains another is
    /// beyond these rules, so only the identical one is proven.
    fn check_identical(&mut self, level: &Level<'_>) {
        for keyword in ["pattern", "format"] {
            let Some(rule) = level.wide.get(keyword) else {
                continue;
            };
            let narrow_value = level.narrow.get(keyword);
            if narrow_value.is_some_and(|value| json_equal(value, rule)) {
                continue;
            }
            let rule =
                self.setting_change(narrow_value.map(|v| (keyword, v)), (keyword, rule), false);
            self.report(level.pointer, rule);
        }
    }

    fn check_unique_items(&mut self, level: &Level<'_>) {
        let Some(rule) = level.wide.get("uniqueItems") else {
            return;
        };
        let Some(unique) = rule.as_bool() else {
            self.require_equal(level, "uniqueItems");
            return;
        };
        if !unique || excused(level, &["uniqueItems"]) {
            return;
        }
        let narrow_value = level.narrow.get("uniqueItems").filter(|v| v.is_boolean());
        if narrow_value != Some(&Value::Bool(true)) {
            let shown = narrow_value.map(|v| ("uniqueItems", v));
            let rule = self.setting_change(shown, ("uniqueItems", rule), false);
            self.report(level.pointer, rule);
            return;
        }
        // Filling defaults into distinct elements can make them equal.
        let items_filled = level
            .wide
            .get("items")
            .and_then(Value::as_object)
            .is_some_and(fills_anything);
        if level.filled && items_filled {
            self.report(
                level.pointer,
                "cannot prove compatibility: `uniqueItems` may reject arrays once defaults are filled into their items"
                    .to_owned(),
            );
        }
    }

    fn check_items(&mut self, level: &Level<'_>) {
        let Some(rule) = level.wide.get("items") else {
            return;
        };
        if !(rule.is_boolean() || rule.is_object()) {
            self.require_equal(level, "items");
            return;
        }
        let before = self.found.len();
        let narrow_items = self.narrow_items(level);
        let pointer = format!("{}/*", level.pointer);
        self.subset(narrow_items, rule, &pointer, level.filled);
        if self.found.len() > before && excused(level, &["items"]) {
            self.found.truncate(before);
        }
    }

    /// The schema every element of a narrow array satisfies. In 2020-12, `items` leaves the
    /// elements `prefixItems` covers alone, so unless both sides have the same `prefixItems`
    /// (and `items` so covers the same elements on both), narrow's `items` says nothing of
    /// every element.
    fn narrow_items<'s>(&self, level: &Level<'s>) -> &'s Value {
        let same_prefix = match (
            level.narrow.get("prefixItems"),
            level.wide.get("prefixItems"),
        ) {
            (None, _) => true,
            (Some(narrow), Some(wide)) => self.schemas_equal(narrow, wide),
            (Some(_), None) => false,
        };
        match level.narrow.get("items") {
            Some(items) if same_prefix && (items.is_boolean() || items.is_object()) => items,
            _ => &ANYTHING,
        }
    }

    fn check_object(&mut self, level: &Level<'_>) {
        let before = self.found.len();
        let wide = self.wide_object_rules(level);
        let narrow = narrow_object_rules(level.narrow);
        self.check_required(level, &wide, &narrow);
        self.check_wide_properties(level, &wide, &narrow);
        self.check_narrow_only_properties(level, &wide, &narrow);
        self.check_additional(level, &wide, &narrow);
        if level.filled {
            self.check_defaults(level, &wide, &narrow);
        }
        if self.found.len() > before && excused(level, OBJECT_KEYWORDS) {
            self.found.truncate(before);
        }
    }

    /// Wide's object keywords; a malformed one is reported unless narrow has the same, and
    /// then read as absent.
    fn wide_object_rules<'s>(&mut self, level: &Level<'s>) -> ObjectRules<'s> {
        let properties = match level.wide.get("properties") {
            None => None,
            Some(Value::Object(properties)) => Some(properties),
            Some(_) => {
                self.require_equal(level, "properties");
                None
            }
        };
        let required = parse_required(level.wide.get("required")).unwrap_or_else(|| {
            self.require_equal(level, "required");
            BTreeSet::new()
        });
        let additional =
            parse_additional(level.wide.get("additionalProperties")).unwrap_or_else(|| {
                self.require_equal(level, "additionalProperties");
                Additional::Any
            });
        ObjectRules {
            properties,
            required,
            additional,
        }
    }

    fn check_required(
        &mut self,
        level: &Level<'_>,
        wide: &ObjectRules<'_>,
        narrow: &ObjectRules<'_>,
    ) {
        for name in wide.required.difference(&narrow.required) {
            let has_default = wide
                .properties
                .and_then(|properties| properties.get(*name))
                .is_some_and(|schema| schema.get("default").is_some());
            let rule = match self.direction {
                Direction::Backward if has_default && level.filled => continue,
                Direction::Backward if has_default => {
                    "new required field whose default is not filled in here (only along `properties` and `items`)"
                        .to_owned()
                }
                Direction::Backward => "new required field without a default".to_owned(),
                Direction::Forward => format!("required field removed ({} require it)", self.readers()),
            };
            self.report(&child_pointer(level.pointer, name), rule);
        }
    }

    fn check_wide_properties(
        &mut self,
        level: &Level<'_>,
        wide: &ObjectRules<'_>,
        narrow: &ObjectRules<'_>,
    ) {
        let Some(properties) = wide.properties else {
            return;
        };
        for (name, wide_schema) in properties {
            let pointer = child_pointer(level.pointer, name);
            let narrow_schema = narrow
                .properties
                .and_then(|properties| properties.get(name));
            match (narrow_schema, narrow.additional) {
                (Some(narrow_schema), _) => {
                    self.subset(narrow_schema, wide_schema, &pointer, level.filled);
                }
                // Narrow never has the field.
                (None, Additional::Nothing) => {}
                (None, Additional::Schema(narrow_schema)) => {
                    self.subset(narrow_schema, wide_schema, &pointer, level.filled);
                }
                (None, Additional::Any) => {
                    if !accepts_everything(wide_schema) {
                        let rule = match self.direction {
                            Direction::Backward => format!(
                                "new field constrains data old events may carry (v{} allows any value for it)",
                                self.against
                            ),
                            Direction::Forward => format!(
                                "field no longer declared but still allowed, and {} constrain it",
                                self.readers()
                            ),
                        };
                        self.report(&pointer, rule);
                    }
                }
            }
        }
    }

    fn check_narrow_only_properties(
        &mut self,
        level: &Level<'_>,
        wide: &ObjectRules<'_>,
        narrow: &ObjectRules<'_>,
    ) {
        let Some(properties) = narrow.properties else {
            return;
        };
        for (name, narrow_schema) in properties {
            if wide
                .properties
                .is_some_and(|properties| properties.contains_key(name))
            {
                continue;
            }
            let pointer = child_pointer(level.pointer, name);
            match wide.additional {
                Additional::Any => {}
                Additional::Nothing => {
                    if *narrow_schema != Value::Bool(false) {
                        let rule = match self.direction {
                            Direction::Backward => {
                                "no longer allowed (additionalProperties is false)".to_owned()
                            }
                            Direction::Forward => format!(
                                "new field that {} reject (additionalProperties is false)",
                                self.readers()
                            ),
                        };
                        self.report(&pointer, rule);
                    }
                }
                // `fill_defaults` does not go through `additionalProperties`.
                Additional::Schema(wide_schema) => {
                    self.subset(narrow_schema, wide_schema, &pointer, false)
                }
            }
        }
    }

    /// The properties neither side names.
    fn check_additional(
        &mut self,
        level: &Level<'_>,
        wide: &ObjectRules<'_>,
        narrow: &ObjectRules<'_>,
    ) {
        let wide_schema = match wide.additional {
            Additional::Any => return,
            Additional::Nothing => None,
            Additional::Schema(schema) => Some(schema),
        };
        let rule = match (narrow.additional, wide_schema) {
            (Additional::Nothing, _) => return,
            (Additional::Schema(narrow_schema), Some(wide_schema)) => {
                let pointer = format!("{}/*", level.pointer);
                self.subset(narrow_schema, wide_schema, &pointer, false);
                return;
            }
            (_, None) => match self.direction {
                Direction::Backward => {
                    "additional properties no longer allowed (additionalProperties is false)"
                        .to_owned()
                }
                Direction::Forward => format!(
                    "additional properties allowed, which {} reject (additionalProperties is false)",
                    self.readers()
                ),
            },
            (Additional::Any, Some(_)) => match self.direction {
                Direction::Backward => {
                    "additional properties now constrained by `additionalProperties`".to_owned()
                }
                Direction::Forward => format!(
                    "additional properties no longer constrained, and {} constrain them",
                    self.readers()
                ),
            },
        };
        self.report(level.pointer, rule);
    }

    /// Backward, where defaults are filled: a field an old event may lack gets wide's
    /// default, which must then satisfy the field's schema.
    fn check_defaults(
        &mut self,
        level: &Level<'_>,
        wide: &ObjectRules<'_>,
        narrow: &ObjectRules<'_>,
    ) {
        let Some(properties) = wide.properties else {
            return;
        };
        for (name, schema) in properties {
            if narrow.required.contains(name.as_str()) {
                continue;
            }
            let Some(default) = schema.get("default") else {
                continue;
            };
            let mut filled = default.clone();
            fill_defaults(schema, &mut filled);
            let rule = match validate(schema, &filled) {
                Verdict::Valid => continue,
                Verdict::Invalid(reason) => {
                    format!("default {filled} does not satisfy the field's schema ({reason})")
                }
                Verdict::Unknown(keyword) => format!(
                    "cannot prove compatibility: default {filled} not checked against `{keyword}`"
                ),
            };
            self.report(&child_pointer(level.pointer, name), rule);
        }
    }

    fn check_other_keywords(&mut self, level: &Level<'_>) {
        let defaults_filled = level.filled && fills_anything(level.wide);
        for keyword in level.wide.keys() {
            let keyword = keyword.as_str();
            if ANNOTATIONS.contains(&keyword)
                || STRUCTURAL.contains(&keyword)
                || CONTAINS_GROUP.contains(&keyword)
            {
                continue;
            }
            let proven = match keyword {
                "$dynamicRef" | "$recursiveRef" => {
                    self.report(
                        level.pointer,
                        format!("cannot prove compatibility: `{keyword}` is not supported"),
                    );
                    false
                }
                "unevaluatedProperties" | "unevaluatedItems" => {
                    self.require_equal_level(level, keyword)
                }
                _ => self.require_equal(level, keyword),
            };
            if proven && defaults_filled {
                self.report(
                    level.pointer,
                    format!(
                        "cannot prove compatibility: `{keyword}` may reject the defaults filled in"
                    ),
                );
            }
        }
        self.check_contains(level, defaults_filled);
    }

    fn check_contains(&mut self, level: &Level<'_>, defaults_filled: bool) {
        if !CONTAINS_GROUP
            .iter()
            .any(|keyword| level.wide.contains_key(*keyword))
        {
            return;
        }
        let mut proven = true;
        for keyword in CONTAINS_GROUP {
            let (narrow, wide) = (level.narrow.get(*keyword), level.wide.get(*keyword));
            let agree = match (narrow, wide) {
                (None, None) => true,
                (Some(narrow), Some(wide)) => self.schemas_equal(narrow, wide),
                _ => false,
            };
            if !agree {
                proven = false;
                let rule = self.keyword_change(keyword, narrow.is_some(), wide.is_some());
                self.report(level.pointer, format!("cannot prove compatibility: {rule}"));
            }
        }
        if proven && defaults_filled {
            self.report(
                level.pointer,
                "cannot prove compatibility: `contains` may reject the defaults filled in"
                    .to_owned(),
            );
        }
    }

    /// Whether narrow has wide's `keyword` with an equal value; reports it when not.
    fn require_equal(&mut self, level: &Level<'_>, keyword: &str) -> bool {
        let Some(wide) = level.wide.get(keyword) else {
            return true;
        };
        let rule = match level.narrow.get(keyword) {
            Some(narrow) if keyword == "$ref" && json_equal(narrow, wide) => {
                let same_target = wide
                    .as_str()
                    .is_some_and(|reference| self.same_target(reference, &mut BTreeSet::new()));
                if same_target {
                    return true;
                }
                format!(
                    "`$ref` {wide} points to a different schema, or one this check cannot resolve"
                )
            }
            Some(narrow) if self.schemas_equal(narrow, wide) => return true,
            narrow => self.keyword_change(keyword, narrow.is_some(), true),
        };
        self.report(level.pointer, format!("cannot prove compatibility: {rule}"));
        false
    }

    /// For `unevaluatedProperties`/`unevaluatedItems`, whose meaning depends on every keyword
    /// beside them: proven only when the whole schema object is the same.
    fn require_equal_level(&mut self, level: &Level<'_>, keyword: &str) -> bool {
        if !level.narrow.contains_key(keyword) {
            return self.require_equal(level, keyword);
        }
        if self.objects_equal(level.narrow, level.wide, &mut BTreeSet::new()) {
            return true;
        }
        self.report(
            level.pointer,
            format!("cannot prove compatibility: `{keyword}` and the keywords beside it changed"),
        );
        false
    }

    /// "`anyOf` added/removed/changed", told from the old version to the new.
    fn keyword_change(&self, keyword: &str, in_narrow: bool, in_wide: bool) -> String {
        let (in_old, in_new) = self.old_new(in_narrow, in_wide);
        let what = match (in_old, in_new) {
            (true, true) => "changed",
            (false, _) => "added",
            (true, false) => "removed",
        };
        format!("`{keyword}` {what}")
    }

    /// "minimum raised from 1 to 2", "maxLength 5 added", "exclusiveMinimum 0 replaced by
    /// minimum 1", told from the old version to the new. `ordered` values rise and fall;
    /// others just change.
    fn setting_change(
        &self,
        narrow: Option<(&str, &Value)>,
        wide: (&str, &Value),
        ordered: bool,
    ) -> String {
        let Some(narrow) = narrow else {
            let (keyword, value) = wide;
            return match self.direction {
                Direction::Backward => format!("{keyword} {value} added"),
                Direction::Forward => format!("{keyword} {value} removed"),
            };
        };
        let ((old_keyword, old), (new_keyword, new)) = self.old_new(narrow, wide);
        if old_keyword != new_keyword {
            return format!("{old_keyword} {old} replaced by {new_keyword} {new}");
        }
        let order = match (old, new) {
            (Value::Number(old), Value::Number(new)) if ordered => compare_numbers(new, old),
            _ => None,
        };
        let verb = match order {
            Some(Ordering::Greater) => "raised",
            Some(Ordering::Less) => "lowered",
            _ => "changed",
        };
        format!("{new_keyword} {verb} from {old} to {new}")
    }

    /// Deep equality of a narrow and a wide (sub)schema, where a `$ref` also needs its
    /// targets in the two documents to be equal.
    fn schemas_equal(&self, narrow: &Value, wide: &Value) -> bool {
        self.equal_with_refs(narrow, wide, &mut BTreeSet::new())
    }

    /// `seen` holds the references already being compared, which makes recursive
    /// references terminate: assuming them equal while comparing their targets is sound,
    /// since every difference reachable from them is still found.
    fn equal_with_refs(&self, narrow: &Value, wide: &Value, seen: &mut BTreeSet<String>) -> bool {
        match (narrow, wide) {
            (Value::Object(narrow), Value::Object(wide)) => self.objects_equal(narrow, wide, seen),
            (Value::Array(narrow), Value::Array(wide)) => {
                narrow.len() == wide.len()
                    && narrow
                        .iter()
                        .zip(wide)
                        .all(|(n, w)| self.equal_with_refs(n, w, seen))
            }
            _ => json_equal(narrow, wide),
        }
    }

    fn objects_equal(
        &self,
        narrow: &Map<String, Value>,
        wide: &Map<String, Value>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        if narrow.len() != wide.len()
            || narrow.contains_key("$dynamicRef")
            || narrow.contains_key("$recursiveRef")
        {
            return false;
        }
        let members_equal = narrow.iter().all(|(key, n)| {
            wide.get(key)
                .is_some_and(|w| self.equal_with_refs(n, w, seen))
        });
        members_equal
            && match narrow.get("$ref") {
                Some(Value::String(reference)) => self.same_target(reference, seen),
                _ => true,
            }
    }

    fn same_target(&self, reference: &str, seen: &mut BTreeSet<String>) -> bool {
        if !seen.insert(reference.to_owned()) {
            return true;
        }
        match (
            self.resolve(self.narrow_root, reference),
            self.resolve(self.wide_root, reference),
        ) {
            (Some(narrow), Some(wide)) => self.equal_with_refs(narrow, wide, seen),
            _ => false,
        }
    }

    /// The target of a local `#` or `#/json/pointer` reference in `root`.
    fn resolve<'v>(&self, root: &'v Value, reference: &str) -> Option<&'v Value> {
        if !self.refs_resolvable {
            return None;
        }
        let fragment = reference.strip_prefix('#')?;
        if fragment.is_empty() {
            return Some(root);
        }
        // Percent-encoded pointers and `#anchor` references are not followed.
        if fragment.contains('%') || !fragment.starts_with('/') {
            return None;
        }
        root.pointer(fragment)
    }
}

/// Whether narrow enumerates its values (`const`/`enum`) and every one of them satisfies wide's
/// `keywords`: then those keywords hold whatever narrow's other keywords say.
fn excused(level: &Level<'_>, keywords: &[&str]) -> bool {
    level.values.as_ref().is_some_and(|values| {
        values.iter().all(|value| {
            keywords.iter().all(|keyword| {
                level.wide.get(*keyword).is_none_or(|rule| {
                    matches!(
                        keyword_verdict(level.wide, keyword, rule, value),
                        Verdict::Valid
                    )
                })
            })
        })
    })
}

fn narrow_object_rules(schema: &Map<String, Value>) -> ObjectRules<'_> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let properties_malformed = schema.get("properties").is_some_and(|p| !p.is_object());
    let mut additional =
        parse_additional(schema.get("additionalProperties")).unwrap_or(Additional::Any);
    // `patternProperties` admits names `additionalProperties` alone would refuse.
    if schema.contains_key("patternProperties") || properties_malformed {
        additional = Additional::Any;
    }
    ObjectRules {
        properties,
        required: parse_required(schema.get("required")).unwrap_or_default(),
        additional,
    }
}

/// `None` when `additionalProperties` is not a schema.
fn parse_additional(value: Option<&Value>) -> Option<Additional<'_>> {
    match value {
        None | Some(Value::Bool(true)) => Some(Additional::Any),
        Some(Value::Bool(false)) => Some(Additional::Nothing),
        Some(Value::Object(schema)) if only_annotations(schema) => Some(Additional::Any),
        Some(schema @ Value::Object(_)) => Some(Additional::Schema(schema)),
        Some(_) => None,
    }
}

/// `None` when `required` is not an array of strings.
fn parse_required(value: Option<&Value>) -> Option<BTreeSet<&str>> {
    match value {
        None => Some(BTreeSet::new()),
        Some(Value::Array(names)) => names.iter().map(Value::as_str).collect(),
        Some(_) => None,
    }
}

/// How many fields filling defaults may add to an instance here.
fn fillable_count(level: &Level<'_>) -> u64 {
    let Some(properties) = level.wide.get("properties").and_then(Value::as_object) else {
        return 0;
    };
    let required = parse_required(level.narrow.get("required")).unwrap_or_default();
    let fillable = properties
        .iter()
        .filter(|(name, schema)| {
            schema.get("default").is_some() && !required.contains(name.as_str())
        })
        .count();
    u64::try_from(fillable).unwrap_or(u64::MAX)
}

/// Whether `fill_defaults` with this schema can change some instance.
fn fills_anything(schema: &Map<String, Value>) -> bool {
    let through_properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|properties| {
            properties
                .values()
                .filter_map(Value::as_object)
                .any(|property| property.contains_key("default") || fills_anything(property))
        });
    let through_items = schema
        .get("items")
        .and_then(Value::as_object)
        .is_some_and(fills_anything);
    through_properties || through_items
}

fn only_annotations(schema: &Map<String, Value>) -> bool {
    schema
        .keys()
        .all(|keyword| ANNOTATIONS.contains(&keyword.as_str()))
}

fn accepts_everything(schema: &Value) -> bool {
    match schema {
        Value::Bool(accepts) => *accepts,
        Value::Object(schema) => only_annotations(schema),
        _ => false,
    }
}

/// The values a schema allows, when its `const` or `enum` lists them.
fn enumerated_values(schema: &Map<String, Value>) -> Option<Vec<Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value.clone()]);
    }
    schema.get("enum").and_then(Value::as_array).cloned()
}

/// Whether a subschema declares its own `$id`, which changes what `#/...` means inside it.
fn has_embedded_id(value: &Value, is_root: bool) -> bool {
    match value {
        Value::Object(members) => {
            (!is_root && members.contains_key("$id"))
                || members
                    .values()
                    .any(|member| has_embedded_id(member, false))
        }
        Value::Array(elements) => elements
            .iter()
            .any(|element| has_embedded_id(element, false)),
        _ => false,
    }
}

fn child_pointer(pointer: &str, name: &str) -> String {
    format!("{pointer}/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn sort_and_dedup(found: &mut Vec<BreakingChange>) {
    found.sort_by(|a, b| {
        (a.against, a.direction.rank(), &a.pointer).cmp(&(
            b.against,
            b.direction.rank(),
            &b.pointer,
        ))
    });
    let mut unique: Vec<BreakingChange> = Vec::with_capacity(found.len());
    for change in found.drain(..) {
        if !unique.contains(&change) {
            unique.push(change);
        }
    }
    *found = unique;
}

fn list_values<'v>(values: impl Iterator<Item = &'v Value>) -> String {
    let listed: Vec<String> = values.map(Value::to_string).collect();
    if listed.is_empty() {
        "nothing".to_owned()
    } else {
        listed.join(", ")
    }
}

/// `type` as a list of type names; `None` when it is not a valid `type`.
fn parse_types(value: &Value) -> Option<Vec<&str>> {
    let known = |name: &str| TYPE_NAMES.contains(&name);
    match value {
        Value::String(name) if known(name) => Some(vec![name.as_str()]),
        Value::Array(names) => names
            .iter()
            .map(|name| name.as_str().filter(|name| known(name)))
            .collect(),
        _ => None,
    }
}

fn types_within(inner: &[&str], outer: &[&str]) -> bool {
    inner
        .iter()
        .all(|name| outer.contains(name) || (*name == "integer" && outer.contains(&"number")))
}

/// "type narrowed from \"number\" to \"integer\"": `None` is no `type`, any value.
fn type_change(old: Option<&Value>, new: Option<&Value>) -> String {
    let (old_types, new_types) = (old.and_then(parse_types), new.and_then(parse_types));
    let within = |inner: &Option<Vec<&str>>, outer: &Option<Vec<&str>>| match (inner, outer) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(inner), Some(outer)) => types_within(inner, outer),
    };
    let verb = if within(&new_types, &old_types) {
        "narrowed"
    } else if within(&old_types, &new_types) {
        "widened"
    } else {
        "changed"
    };
    let shown = |t: Option<&Value>| t.map_or_else(|| "any".to_owned(), Value::to_string);
    format!("type {verb} from {} to {}", shown(old), shown(new))
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_number().is_some_and(is_integral),
        _ => false,
    }
}

/// In 2020-12, `1.0` is an integer.
fn is_integral(number: &Number) -> bool {
    number.is_i64() || number.is_u64() || number.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// A non-negative integer, the value of `minLength` and the like.
fn count(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(64))
            .map(|f| f as u64)
    })
}

fn positive_number(value: &Value) -> Option<f64> {
    value.as_f64().filter(|f| f.is_finite() && *f > 0.0)
}

/// Whether every multiple of `narrow_divisor` is a multiple of `divisor`.
fn is_whole_multiple(narrow_divisor: f64, divisor: f64) -> bool {
    let quotient = narrow_divisor / divisor;
    let whole = quotient.round();
    whole >= 1.0 && (quotient - whole).abs() < MULTIPLE_TOLERANCE
}

fn is_multiple(value: f64, divisor: f64) -> bool {
    let quotient = value / divisor;
    let whole = quotient.round();
    quotient.is_finite()
        && (quotient - whole).abs() < MULTIPLE_TOLERANCE
        && (whole != 0.0 || value == 0.0)
}

/// A number exactly as written: integers beyond 2^53 do not survive `f64`.
enum Exact {
    Integer(i128),
    Float(f64),
}

fn exact(number: &Number) -> Option<Exact> {
    if let Some(integer) = number.as_i64() {
        return Some(Exact::Integer(i128::from(integer)));
    }
    if let Some(integer) = number.as_u64() {
        return Some(Exact::Integer(i128::from(integer)));
    }
    number.as_f64().filter(|f| f.is_finite()).map(Exact::Float)
}

/// Exact comparison of two JSON numbers; `None` when one is not a finite number.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (exact(a)?, exact(b)?) {
        (Exact::Integer(a), Exact::Integer(b)) => Some(a.cmp(&b)),
        (Exact::Float(a), Exact::Float(b)) => a.partial_cmp(&b),
        (Exact::Integer(a), Exact::Float(b)) => Some(compare_integer_float(a, b)),
        (Exact::Float(a), Exact::Integer(b)) => Some(compare_integer_float(b, a).reverse()),
    }
}

fn compare_integer_float(integer: i128, float: f64) -> Ordering {
    let bound = 2f64.powi(127);
    if float >= bound {
        return Ordering::Less;
    }
    if float < -bound {
        return Ordering::Greater;
    }
    // In range, a whole `f64` converts to `i128` exactly.
    let floor = float.floor();
    match integer.cmp(&(floor as i128)) {
        Ordering::Equal if float > floor => Ordering::Less,
        order => order,
    }
}

/// JSON Schema's equality: numbers by value (`1` equals `1.0`), objects regardless of
/// member order.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| json_equal(a, b)))
        }
        _ => a == b,
    }
}

/// What validating one concrete value (an enumerated value, a default) against a schema
/// tells: the validation this module needs, over the same structural subset.
enum Verdict {
    Valid,
    Invalid(String),
    /// A keyword this module does not evaluate.
    Unknown(String),
}

/// Invalid if any is, else unknown if any is, else valid.
fn all_of(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut result = Verdict::Valid;
    for verdict in verdicts {
        match verdict {
            Verdict::Invalid(_) => return verdict,
            Verdict::Unknown(_) if matches!(result, Verdict::Valid) => result = verdict,
            _ => {}
        }
    }
    result
}

fn validate(schema: &Value, value: &Value) -> Verdict {
    match schema {
        Value::Bool(true) => Verdict::Valid,
        Value::Bool(false) => Verdict::Invalid("no value is allowed (schema is false)".to_owned()),
        Value::Object(schema) => all_of(
            schema
                .iter()
                .map(|(keyword, rule)| keyword_verdict(schema, keyword, rule, value)),
        ),
        _ => Verdict::Unknown("a non-schema".to_owned()),
    }
}

/// Whether `value` satisfies `keyword: rule` of `schema` (the object it belongs to, for
/// keywords that read their neighbours).
fn keyword_verdict(
    schema: &Map<String, Value>,
    keyword: &str,
    rule: &Value,
    value: &Value,
) -> Verdict {
    let unknown = || Verdict::Unknown(keyword.to_owned());
    let holds = |ok: bool, reason: &dyn Fn() -> String| {
        if ok {
            Verdict::Valid
        } else {
            Verdict::Invalid(reason())
        }
    };
    match keyword {
        _ if ANNOTATIONS.contains(&keyword) => Verdict::Valid,
        "type" => match parse_types(rule) {
            Some(types) => holds(types.iter().any(|name| has_type(value, name)), &|| {
                format!("{value} is not of type {rule}")
            }),
            None => unknown(),
        },
        "enum" => match rule.as_array() {
            Some(allowed) => holds(allowed.iter().any(|a| json_equal(a, value)), &|| {
                format!("{value} is not one of {rule}")
            }),
            None => unknown(),
        },
        "const" => holds(json_equal(rule, value), &|| {
            format!("{value} is not {rule}")
        }),
        "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum" => {
            bound_verdict(keyword, rule, value)
        }
        "multipleOf" => match (positive_number(rule), value.as_f64()) {
            (None, _) => unknown(),
            (Some(_), None) => Verdict::Valid,
            (Some(divisor), Some(number)) => holds(is_multiple(number, divisor), &|| {
                format!("{value} is not a multiple of {rule}")
            }),
        },
        "minLength" | "maxLength" => {
            count_verdict(keyword, rule, value.as_str().map(|s| s.chars().count()))
        }
        "minItems" | "maxItems" => count_verdict(keyword, rule, value.as_array().map(Vec::len)),
        "minProperties" | "maxProperties" => {
            count_verdict(keyword, rule, value.as_object().map(Map::len))
        }
        "uniqueItems" => match (rule.as_bool(), value.as_array()) {
            (None, _) => unknown(),
            (Some(false), _) | (_, None) => Verdict::Valid,
            (Some(true), Some(elements)) => {
                let repeated = elements
                    .iter()
                    .enumerate()
                    .any(|(i, a)| elements[i + 1..].iter().any(|b| json_equal(a, b)));
                holds(!repeated, &|| format!("{value} has repeated items"))
            }
        },
        "pattern" => match (rule.is_string(), value.is_string()) {
            (true, false) => Verdict::Valid,
            _ => unknown(),
        },
        "required" => match (parse_required(Some(rule)), value.as_object()) {
            (None, _) => unknown(),
            (Some(_), None) => Verdict::Valid,
            (Some(names), Some(fields)) => {
                let missing = names.iter().find(|name| !fields.contains_key(**name));
                holds(missing.is_none(), &|| {
                    format!(
                        "required field {:?} missing",
                        missing.copied().unwrap_or_default()
                    )
                })
            }
        },
        "properties" => match (rule.as_object(), value.as_object()) {
            (None, _) => unknown(),
            (Some(_), None) => Verdict::Valid,
            (Some(properties), Some(fields)) => {
                all_of(properties.iter().filter_map(|(name, property)| {
                    fields.get(name).map(|field| validate(property, field))
                }))
            }
        },
        "additionalProperties" => additional_verdict(schema, rule, value),
        "items" => match value.as_array() {
            None if rule.is_boolean() || rule.is_object() => Verdict::Valid,
            Some(elements)
                if (rule.is_boolean() || rule.is_object())
                    && !schema.contains_key("prefixItems") =>
            {
                all_of(elements.iter().map(|element| validate(rule, element)))
            }
            _ => unknown(),
        },
        // `format` may constrain any type (custom formats): never evaluated.
        _ => unknown(),
    }
}

fn bound_verdict(keyword: &str, rule: &Value, value: &Value) -> Verdict {
    let (Some(limit), number) = (rule.as_number(), value.as_number()) else {
        return Verdict::Unknown(keyword.to_owned());
    };
    let Some(number) = number else {
        return Verdict::Valid;
    };
    let Some(order) = compare_numbers(number, limit) else {
        return Verdict::Unknown(keyword.to_owned());
    };
    let ok = match keyword {
        "minimum" => order != Ordering::Less,
        "exclusiveMinimum" => order == Ordering::Greater,
        "maximum" => order != Ordering::Greater,
        _ => order == Ordering::Less,
    };
    if ok {
        Verdict::Valid
    } else {
        Verdict::Invalid(format!("{value} is out of {keyword} {rule}"))
    }
}

/// `actual` is the length or size of the value, `None` when the keyword does not apply.
fn count_verdict(keyword: &str, rule: &Value, actual: Option<usize>) -> Verdict {
    let Some(limit) = count(rule) else {
        return Verdict::Unknown(keyword.to_owned());
    };
    let Some(actual) = actual else {
        return Verdict::Valid;
    };
    let actual = u64::try_from(actual).unwrap_or(u64::MAX);
    let ok = if keyword.starts_with("min") {
        actual >= limit
    } else {
        actual <= limit
    };
    if ok {
        Verdict::Valid
    } else {
        Verdict::Invalid(format!("{keyword} is {limit}, found {actual}"))
    }
}

fn additional_verdict(schema: &Map<String, Value>, rule: &Value, value: &Value) -> Verdict {
    let unknown = || Verdict::Unknown("additionalProperties".to_owned());
    let declared = match schema.get("properties") {
        None => None,
        Some(Value::Object(properties)) => Some(properties),
        Some(_) => return unknown(),
    };
    if parse_additional(Some(rule)).is_none() || schema.contains_key("patternProperties") {
        return unknown();
    }
    let Some(fields) = value.as_object() else {
        return Verdict::Valid;
    };
    let mut additional = fields
        .iter()
        .filter(|(name, _)| declared.is_none_or(|declared| !declared.contains_key(*name)));
    if *rule == Value::Bool(false) {
        return match additional.next() {
            Some((name, _)) => Verdict::Invalid(format!("field {name:?} is not allowed")),
            None => Verdict::Valid,
        };
    }
    all_of(additional.map(|(_, field)| validate(rule, field)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Case {
        name: &'static str,
        mode: Compatibility,
        earlier: Vec<(u32, Value)>,
        new: Value,
        /// Each must appear in exactly one reported change; as many changes as these.
        expected: Vec<&'static str>,
    }

    fn case(
        name: &'static str,
        mode: Compatibility,
        earlier: Vec<(u32, Value)>,
        new: Value,
        expected: Vec<&'static str>,
    ) -> Case {
        Case {
            name,
            mode,
            earlier,
            new,
            expected,
        }
    }

    /// An object schema of `properties`, closed to any other field.
    fn closed(properties: Value) -> Value {
        json!({"type": "object", "properties": properties, "additionalProperties": false})
    }

    fn cases() -> Vec<Case> {
        use Compatibility::{
            Backward, BackwardTransitive, Forward, ForwardTransitive, Full, FullTransitive,
        };
        let none = Compatibility::None;
        let order = json!({"type": "object", "properties": {"q": {"type": "integer"}}});
        vec![
            // --- fields added, removed, required ---
            case(
                "identical schemas",
                Full,
                vec![(1, order.clone())],
                order.clone(),
                vec![],
            ),
            case(
                "optional field added to a closed schema: backward ok",
                Backward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                closed(json!({"a": {"type": "integer"}, "b": {"type": "string"}})),
                vec![],
            ),
            case(
                "optional field added to a closed schema: forward broken",
                Forward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                closed(json!({"a": {"type": "integer"}, "b": {"type": "string"}})),
                vec![
                    r#"v1 (forward): "/b": new field that readers of v1 reject (additionalProperties is false)"#,
                ],
            ),
            case(
                "optional field added to an open schema: forward ok",
                Forward,
                vec![(1, json!({"properties": {"a": {"type": "integer"}}}))],
                json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}),
                vec![],
            ),
            case(
                "typed optional field added to an open schema: backward unproven",
                Backward,
                vec![(1, json!({"properties": {"a": {"type": "integer"}}}))],
                json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}),
                vec![
                    r#""/b": new field constrains data old events may carry (v1 allows any value for it)"#,
                ],
            ),
            case(
                "unconstrained optional field added to an open schema: backward ok",
                Backward,
                vec![(1, json!({"properties": {"a": {"type": "integer"}}}))],
                json!({"properties": {"a": {"type": "integer"}, "b": {"description": "free text"}}}),
                vec![],
            ),
            case(
                "required field removed: backward ok",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]}),
                )],
                json!({"properties": {"a": {"type": "integer"}}, "required": ["a"]}),
                vec![],
            ),
            case(
                "required field removed: forward broken",
                Forward,
                vec![(
                    1,
                    json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]}),
                )],
                json!({"properties": {"a": {"type": "integer"}}, "required": ["a"]}),
                vec![
                    r#""/b": required field removed (readers of v1 require it)"#,
                    r#""/b": field no longer declared but still allowed, and readers of v1 constrain it"#,
                ],
            ),
            case(
                "required field made optional: forward broken",
                Forward,
                vec![(
                    1,
                    json!({"properties": {"a": {"type": "integer"}}, "required": ["a"]}),
                )],
                json!({"properties": {"a": {"type": "integer"}}}),
                vec![r#"v1 (forward): "/a": required field removed (readers of v1 require it)"#],
            ),
            case(
                "new required field without a default: backward broken",
                Backward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false}),
                vec![r#"v1 (backward): "/b": new required field without a default"#],
            ),
            case(
                "new required field with a default: backward ok",
                Backward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false}),
                vec![],
            ),
            case(
                "new required field with a default: forward broken",
                Forward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false}),
                vec![r#""/b": new field that readers of v1 reject"#],
            ),
            case(
                "a default that fails its own schema",
                Backward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": 5}}, "required": ["b"], "additionalProperties": false}),
                vec![
                    r#""/b": default 5 does not satisfy the field's schema (5 is not of type "string")"#,
                ],
            ),
            case(
                "nested defaults are filled in before the default is checked",
                Backward,
                vec![(1, closed(json!({})))],
                closed(
                    json!({"shipping": {"type": "object", "default": {}, "required": ["speed"], "properties": {"speed": {"enum": ["slow", "fast"], "default": "slow"}}}}),
                ),
                vec![],
            ),
            // --- types ---
            case(
                "integer widened to number: backward ok",
                Backward,
                vec![(1, order.clone())],
                json!({"type": "object", "properties": {"q": {"type": "number"}}}),
                vec![],
            ),
            case(
                "integer widened to number: forward broken",
                Forward,
                vec![(1, order.clone())],
                json!({"type": "object", "properties": {"q": {"type": "number"}}}),
                vec![r#"v1 (forward): "/q": type widened from "integer" to "number""#],
            ),
            case(
                "number narrowed to integer: backward broken",
                Backward,
                vec![(
                    1,
                    json!({"type": "object", "properties": {"q": {"type": "number"}}}),
                )],
                order.clone(),
                vec![r#"v1 (backward): "/q": type narrowed from "number" to "integer""#],
            ),
            case(
                "null no longer allowed",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"q": {"type": ["integer", "null"]}}}),
                )],
                json!({"properties": {"q": {"type": "integer"}}}),
                vec![r#""/q": type narrowed from ["integer","null"] to "integer""#],
            ),
            case(
                "type changed: full reports both directions",
                Full,
                vec![(1, order.clone())],
                json!({"type": "object", "properties": {"q": {"type": "string"}}}),
                vec![
                    r#"v1 (backward): "/q": type changed from "integer" to "string""#,
                    r#"v1 (forward): "/q": type changed from "integer" to "string""#,
                ],
            ),
            // --- enum and const ---
            case(
                "enum extended: backward ok",
                Backward,
                vec![(1, json!({"enum": ["a", "b"]}))],
                json!({"enum": ["a", "b", "c"]}),
                vec![],
            ),
            case(
                "enum extended: forward broken",
                Forward,
                vec![(1, json!({"enum": ["a", "b"]}))],
                json!({"enum": ["a", "b", "c"]}),
                vec![r#"(root): enum values added that readers of v1 reject: "c""#],
            ),
            case(
                "enum narrowed: backward broken",
                Backward,
                vec![(1, json!({"enum": ["a", "b", "c"]}))],
                json!({"enum": ["a", "b"]}),
                vec![r#"(root): enum values no longer allowed: "c""#],
            ),
            case(
                "enum added: backward broken",
                Backward,
                vec![(1, json!({"type": "string"}))],
                json!({"type": "string", "enum": ["a", "b"]}),
                vec![r#"enum added (allows only "a", "b")"#],
            ),
            case(
                "enum dropped: forward broken",
                Forward,
                vec![(1, json!({"type": "string", "enum": ["a", "b"]}))],
                json!({"type": "string"}),
                vec![r#"enum removed (readers of v1 allow only "a", "b")"#],
            ),
            case(
                "const widened to enum: backward ok",
                Backward,
                vec![(1, json!({"const": "a"}))],
                json!({"enum": ["a", "b"]}),
                vec![],
            ),
            case(
                "enum narrowed to const: backward broken",
                Backward,
                vec![(1, json!({"enum": ["a", "b"]}))],
                json!({"const": "a"}),
                vec![r#"values no longer allowed (const is "a"): "b""#],
            ),
            case(
                "a const satisfies type, minimum and multipleOf",
                Backward,
                vec![(1, json!({"const": 3}))],
                json!({"type": "integer", "minimum": 0, "multipleOf": 3}),
                vec![],
            ),
            case(
                "1.0 and 1 are the same enum value",
                Full,
                vec![(1, json!({"enum": [1.0, 2]}))],
                json!({"enum": [1, 2.0]}),
                vec![],
            ),
            // --- numeric bounds ---
            case(
                "minimum raised: backward broken",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"q": {"type": "integer", "minimum": 1}}}),
                )],
                json!({"properties": {"q": {"type": "integer", "minimum": 2}}}),
                vec![r#""/q": minimum raised from 1 to 2"#],
            ),
            case(
                "minimum lowered: backward ok",
                Backward,
                vec![(1, json!({"minimum": 2}))],
                json!({"minimum": 1}),
                vec![],
            ),
            case(
                "minimum lowered: forward broken",
                Forward,
                vec![(1, json!({"minimum": 2}))],
                json!({"minimum": 1}),
                vec!["(root): minimum lowered from 2 to 1"],
            ),
            case(
                "maximum added: backward broken",
                Backward,
                vec![(1, json!({"type": "integer"}))],
                json!({"type": "integer", "maximum": 10}),
                vec!["maximum 10 added"],
            ),
            case(
                "exclusiveMinimum 0 implies minimum 0",
                Backward,
                vec![(1, json!({"exclusiveMinimum": 0}))],
                json!({"minimum": 0}),
                vec![],
            ),
            case(
                "minimum 0 does not imply exclusiveMinimum 0",
                Backward,
                vec![(1, json!({"minimum": 0}))],
                json!({"exclusiveMinimum": 0}),
                vec!["minimum 0 replaced by exclusiveMinimum 0"],
            ),
            case(
                "exclusiveMaximum relaxed to maximum: forward broken",
                Forward,
                vec![(1, json!({"exclusiveMaximum": 10}))],
                json!({"maximum": 10}),
                vec!["exclusiveMaximum 10 replaced by maximum 10"],
            ),
            case(
                "multipleOf 4 implies multipleOf 2",
                Backward,
                vec![(1, json!({"multipleOf": 4}))],
                json!({"multipleOf": 2}),
                vec![],
            ),
            case(
                "multipleOf 2 does not imply multipleOf 4",
                Backward,
                vec![(1, json!({"multipleOf": 2}))],
                json!({"multipleOf": 4}),
                vec!["multipleOf changed from 2 to 4"],
            ),
            // --- strings, arrays, objects ---
            case(
                "maxLength lowered: backward broken",
                Backward,
                vec![(1, json!({"type": "string", "maxLength": 10}))],
                json!({"type": "string", "maxLength": 5}),
                vec!["maxLength lowered from 10 to 5"],
            ),
            case(
                "maxLength raised: backward ok",
                Backward,
                vec![(1, json!({"type": "string", "maxLength": 5}))],
                json!({"type": "string", "maxLength": 10}),
                vec![],
            ),
            case(
                "pattern changed",
                Backward,
                vec![(1, json!({"type": "string", "pattern": "^a"}))],
                json!({"type": "string", "pattern": "^b"}),
                vec![r#"pattern changed from "^a" to "^b""#],
            ),
            case(
                "format added: backward broken",
                Backward,
                vec![(1, json!({"properties": {"email": {"type": "string"}}}))],
                json!({"properties": {"email": {"type": "string", "format": "email"}}}),
                vec![r#""/email": format "email" added"#],
            ),
            case(
                "format dropped: forward broken",
                Forward,
                vec![(1, json!({"type": "string", "format": "email"}))],
                json!({"type": "string"}),
                vec![r#"format "email" removed"#],
            ),
            case(
                "minItems added",
                Backward,
                vec![(1, json!({"type": "array"}))],
                json!({"type": "array", "minItems": 1}),
                vec!["minItems 1 added"],
            ),
            case(
                "uniqueItems added: backward broken",
                Backward,
                vec![(1, json!({"type": "array"}))],
                json!({"type": "array", "uniqueItems": true}),
                vec!["uniqueItems true added"],
            ),
            case(
                "minProperties raised",
                Backward,
                vec![(1, json!({"type": "object", "minProperties": 1}))],
                json!({"type": "object", "minProperties": 2}),
                vec!["minProperties raised from 1 to 2"],
            ),
            case(
                "nested field change has its full pointer",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"customer": {"properties": {"address": {"properties": {"zip": {"type": "string", "maxLength": 10}}}}}}}),
                )],
                json!({"properties": {"customer": {"properties": {"address": {"properties": {"zip": {"type": "string", "maxLength": 5}}}}}}}),
                vec![r#"v1 (backward): "/customer/address/zip": maxLength lowered from 10 to 5"#],
            ),
            case(
                "array element change points at every element",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"items": {"type": "array", "items": {"properties": {"sku": {"type": "string"}}}}}}),
                )],
                json!({"properties": {"items": {"type": "array", "items": {"properties": {"sku": {"type": "integer"}}}}}}),
                vec![r#"v1 (backward): "/items/*/sku": type changed from "string" to "integer""#],
            ),
            case(
                "property names are escaped in pointers",
                Backward,
                vec![(1, json!({"properties": {"a/b~c": {"type": "number"}}}))],
                json!({"properties": {"a/b~c": {"type": "integer"}}}),
                vec![r#""/a~1b~0c": type narrowed"#],
            ),
            case(
                "additionalProperties false added: backward broken",
                Backward,
                vec![(
                    1,
                    json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                )],
                closed(json!({"a": {"type": "integer"}})),
                vec![
                    "v1 (backward): (root): additional properties no longer allowed (additionalProperties is false)",
                ],
            ),
            case(
                "additionalProperties false added: forward ok",
                Forward,
                vec![(
                    1,
                    json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                )],
                closed(json!({"a": {"type": "integer"}})),
                vec![],
            ),
            case(
                "additionalProperties false dropped: forward broken",
                Forward,
                vec![(1, closed(json!({"a": {"type": "integer"}})))],
                json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                vec![
                    "(root): additional properties allowed, which readers of v1 reject (additionalProperties is false)",
                ],
            ),
            case(
                "field dropped from a schema that becomes closed",
                Backward,
                vec![(
                    1,
                    closed(json!({"a": {"type": "integer"}, "b": {"type": "string"}})),
                )],
                closed(json!({"a": {"type": "integer"}})),
                vec![r#""/b": no longer allowed (additionalProperties is false)"#],
            ),
            case(
                "additionalProperties schema narrowed",
                Backward,
                vec![(1, json!({"additionalProperties": {"type": "number"}}))],
                json!({"additionalProperties": {"type": "integer"}}),
                vec![r#""/*": type narrowed from "number" to "integer""#],
            ),
            case(
                "patternProperties make a closed old schema open",
                Backward,
                vec![(
                    1,
                    json!({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": false}),
                )],
                json!({"additionalProperties": false}),
                vec!["(root): additional properties no longer allowed"],
            ),
            case(
                "prefixItems leave old elements unconstrained by items",
                Backward,
                vec![(
                    1,
                    json!({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}}),
                )],
                json!({"type": "array", "items": {"type": "integer"}}),
                vec![r#""/*": type narrowed from any to "integer""#],
            ),
            // --- boolean schemas ---
            case(
                "true to false: backward broken",
                Backward,
                vec![(1, json!(true))],
                json!(false),
                vec!["v1 (backward): (root): no longer allowed (schema is false)"],
            ),
            case(
                "false to anything: backward ok",
                Backward,
                vec![(1, json!(false))],
                json!({"type": "integer"}),
                vec![],
            ),
            case(
                "{} and true are the same",
                Full,
                vec![(1, json!({}))],
                json!(true),
                vec![],
            ),
            case(
                "forbidden field allowed: forward broken",
                Forward,
                vec![(1, json!({"properties": {"x": false}}))],
                json!({"properties": {"x": true}}),
                vec![r#""/x": now allowed, but readers of v1 reject it (schema is false)"#],
            ),
            // --- keywords beyond the structural subset ---
            case(
                "anyOf widened: cannot be proven",
                Backward,
                vec![(
                    1,
                    json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                )],
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
                vec!["cannot prove compatibility: `anyOf` changed"],
            ),
            case(
                "identical anyOf",
                Full,
                vec![(
                    1,
                    json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                )],
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                vec![],
            ),
            case(
                "anyOf added: backward unproven",
                Backward,
                vec![(1, json!({"type": "string"}))],
                json!({"type": "string", "anyOf": [{"maxLength": 3}, {"pattern": "^a"}]}),
                vec!["cannot prove compatibility: `anyOf` added"],
            ),
            case(
                "anyOf dropped: backward ok, it only narrowed the old schema",
                Backward,
                vec![(
                    1,
                    json!({"type": "string", "anyOf": [{"maxLength": 3}, {"pattern": "^a"}]}),
                )],
                json!({"type": "string"}),
                vec![],
            ),
            case(
                "anyOf dropped: forward unproven",
                Forward,
                vec![(
                    1,
                    json!({"type": "string", "anyOf": [{"maxLength": 3}, {"pattern": "^a"}]}),
                )],
                json!({"type": "string"}),
                vec!["cannot prove compatibility: `anyOf` removed"],
            ),
            case(
                "identical $ref to an unchanged definition",
                Full,
                vec![(
                    1,
                    json!({"properties": {"a": {"$ref": "#/$defs/money"}}, "$defs": {"money": {"type": "integer"}}}),
                )],
                json!({"properties": {"a": {"$ref": "#/$defs/money"}}, "$defs": {"money": {"type": "integer"}}}),
                vec![],
            ),
            case(
                "identical $ref to a changed definition",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {"$ref": "#/$defs/money"}}, "$defs": {"money": {"type": "integer"}}}),
                )],
                json!({"properties": {"a": {"$ref": "#/$defs/money"}}, "$defs": {"money": {"type": "string"}}}),
                vec![
                    "(root): cannot prove compatibility: `$defs` changed",
                    r##""/a": cannot prove compatibility: `$ref` "#/$defs/money" points to a different schema"##,
                ],
            ),
            case(
                "identical $ref into a changed property",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {"type": "integer"}, "b": {"$ref": "#/properties/a"}}}),
                )],
                json!({"properties": {"a": {"type": "number"}, "b": {"$ref": "#/properties/a"}}}),
                vec![r#""/b": cannot prove compatibility: `$ref`"#],
            ),
            case(
                "unevaluatedProperties reads its neighbours",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {}}, "unevaluatedProperties": false}),
                )],
                json!({"unevaluatedProperties": false}),
                vec![
                    "cannot prove compatibility: `unevaluatedProperties` and the keywords beside it changed",
                ],
            ),
            case(
                "minContains 0 dropped from an identical contains",
                Backward,
                vec![(1, json!({"contains": {"type": "string"}, "minContains": 0}))],
                json!({"contains": {"type": "string"}}),
                vec!["cannot prove compatibility: `minContains` removed"],
            ),
            // --- defaults filled in where other keywords look ---
            case(
                "maxProperties leaves no room for a filled default",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {}}, "maxProperties": 1, "additionalProperties": false}),
                )],
                json!({"properties": {"a": {}, "b": {"default": 1}}, "maxProperties": 1, "additionalProperties": false}),
                vec![
                    "(root): maxProperties 1 may be exceeded once defaults are filled in (up to 1 more)",
                ],
            ),
            case(
                "identical dependentRequired sees the filled default",
                Backward,
                vec![(
                    1,
                    json!({"properties": {"a": {"type": "string"}}, "dependentRequired": {"b": ["c"]}}),
                )],
                json!({"properties": {"a": {"type": "string"}, "b": {"default": 1}}, "dependentRequired": {"b": ["c"]}}),
                vec![
                    "cannot prove compatibility: `dependentRequired` may reject the defaults filled in",
                ],
            ),
            // --- transitive modes ---
            case(
                "backward checks only the latest version, given in any order",
                Backward,
                vec![
                    (2, json!({"type": "string"})),
                    (1, json!({"type": "integer"})),
                ],
                json!({"type": "string"}),
                vec![],
            ),
            case(
                "backward_transitive catches a break against v1",
                BackwardTransitive,
                vec![
                    (2, json!({"type": "string"})),
                    (1, json!({"type": "integer"})),
                ],
                json!({"type": "string"}),
                vec![r#"v1 (backward): (root): type changed from "integer" to "string""#],
            ),
            case(
                "backward_transitive: every step widens",
                BackwardTransitive,
                vec![
                    (1, json!({"type": "integer"})),
                    (2, json!({"type": "number"})),
                ],
                json!({"type": ["number", "null"]}),
                vec![],
            ),
            case(
                "backward_transitive: a default v2 gave and v3 takes away",
                BackwardTransitive,
                vec![
                    (1, closed(json!({"a": {"type": "integer"}}))),
                    (
                        2,
                        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false}),
                    ),
                ],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false}),
                vec![r#"v1 (backward): "/b": new required field without a default"#],
            ),
            case(
                "backward does not see the default taken away",
                Backward,
                vec![
                    (1, closed(json!({"a": {"type": "integer"}}))),
                    (
                        2,
                        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false}),
                    ),
                ],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false}),
                vec![],
            ),
            case(
                "forward checks only the latest version",
                Forward,
                vec![
                    (
                        1,
                        json!({"properties": {"x": {"type": "string"}}, "required": ["x"]}),
                    ),
                    (2, json!({"properties": {"x": {"type": "string"}}})),
                ],
                json!({"properties": {"x": {"type": "string"}}}),
                vec![],
            ),
            case(
                "forward_transitive: v1 readers still require x",
                ForwardTransitive,
                vec![
                    (
                        1,
                        json!({"properties": {"x": {"type": "string"}}, "required": ["x"]}),
                    ),
                    (2, json!({"properties": {"x": {"type": "string"}}})),
                ],
                json!({"properties": {"x": {"type": "string"}}}),
                vec![r#"v1 (forward): "/x": required field removed (readers of v1 require it)"#],
            ),
            case(
                "forward_transitive: every step narrows",
                ForwardTransitive,
                vec![
                    (1, json!({"type": "number"})),
                    (2, json!({"type": "integer"})),
                ],
                json!({"type": "integer", "minimum": 0}),
                vec![],
            ),
            case(
                "forward_transitive: v1 bound broken by v3",
                ForwardTransitive,
                vec![
                    (1, json!({"type": "integer", "maximum": 10})),
                    (2, json!({"type": "integer"})),
                ],
                json!({"type": "integer"}),
                vec!["v1 (forward): (root): maximum 10 removed"],
            ),
            case(
                "full checks only the latest version",
                Full,
                vec![
                    (1, json!({"type": "integer"})),
                    (2, json!({"type": "string"})),
                ],
                json!({"type": "string"}),
                vec![],
            ),
            case(
                "full_transitive reports v1 in both directions",
                FullTransitive,
                vec![
                    (1, json!({"type": "integer"})),
                    (2, json!({"type": "string"})),
                ],
                json!({"type": "string"}),
                vec![
                    r#"v1 (backward): (root): type changed from "integer" to "string""#,
                    r#"v1 (forward): (root): type changed from "integer" to "string""#,
                ],
            ),
            case(
                "full_transitive: a default taken away breaks v1 both ways",
                FullTransitive,
                vec![
                    (1, closed(json!({"a": {"type": "integer"}}))),
                    (
                        2,
                        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false}),
                    ),
                ],
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false}),
                vec![
                    r#"v1 (backward): "/b": new required field without a default"#,
                    r#"v1 (forward): "/b": new field that readers of v1 reject"#,
                ],
            ),
            case(
                "full_transitive: unchanged schemas",
                FullTransitive,
                vec![(1, order.clone()), (2, order.clone())],
                order.clone(),
                vec![],
            ),
            case(
                "no earlier version",
                FullTransitive,
                vec![],
                order.clone(),
                vec![],
            ),
            // --- none ---
            case(
                "none accepts a type change",
                none,
                vec![(1, order.clone())],
                json!({"type": "string"}),
                vec![],
            ),
            case(
                "none accepts an unprovable change",
                none,
                vec![(1, json!({"anyOf": [{"type": "string"}]}))],
                json!({"oneOf": [{"type": "integer"}]}),
                vec![],
            ),
            case(
                "none accepts true to false",
                none,
                vec![(1, json!(true)), (2, json!({}))],
                json!(false),
                vec![],
            ),
        ]
    }

    #[test]
    fn compatibility_table() {
        let cases = cases();
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        for mode in Compatibility::CHOICES.iter().map(|&(_, mode)| mode) {
            let count = cases.iter().filter(|case| case.mode == mode).count();
            assert!(count >= 3, "mode {mode} has {count} cases");
        }
        let mut failures = Vec::new();
        for case in &cases {
            let earlier: Vec<(u32, &Value)> = case.earlier.iter().map(|(v, s)| (*v, s)).collect();
            let found: Vec<String> = check(case.mode, &earlier, &case.new)
                .iter()
                .map(ToString::to_string)
                .collect();
            let each_matched_once = case.expected.iter().all(|wanted| {
                found
                    .iter()
                    .filter(|change| change.contains(wanted))
                    .count()
                    == 1
            });
            if found.len() != case.expected.len() || !each_matched_once {
                failures.push(format!(
                    "{} ({}):\n  expected {:#?}\n  found    {:#?}",
                    case.name, case.mode, case.expected, found
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn changes_are_sorted_by_version_direction_and_pointer() {
        let v1 = json!({"properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}});
        let v2 = json!({"properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}});
        let new = json!({"properties": {"b": {"type": "string"}, "a": {"type": "string"}}});
        let found = check(Compatibility::FullTransitive, &[(2, &v2), (1, &v1)], &new);
        let keys: Vec<(u32, Direction, &str)> = found
            .iter()
            .map(|change| (change.against, change.direction, change.pointer.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (1, Direction::Backward, "/a"),
                (1, Direction::Backward, "/b"),
                (1, Direction::Forward, "/a"),
                (1, Direction::Forward, "/b"),
                (2, Direction::Backward, "/a"),
                (2, Direction::Backward, "/b"),
                (2, Direction::Forward, "/a"),
                (2, Direction::Forward, "/b"),
            ]
        );
    }

    #[test]
    fn changes_checks_one_direction() {
        let old = json!({"type": "integer"});
        let new = json!({"type": "number"});
        assert!(changes(Direction::Backward, 4, &old, &new).is_empty());
        let forward = changes(Direction::Forward, 4, &old, &new);
        assert_eq!(
            forward,
            [BreakingChange {
                against: 4,
                direction: Direction::Forward,
                pointer: String::new(),
                rule: r#"type widened from "integer" to "number""#.to_owned(),
            }]
        );
    }

    #[test]
    fn fill_defaults_fills_nested_objects() {
        let schema = json!({"properties": {
            "a": {"default": 1},
            "b": {"properties": {"c": {"default": "x"}}},
            "d": {"default": {}, "properties": {"e": {"default": true}}},
            "f": {"properties": {"g": {"default": 2}}},
        }});
        let mut instance = json!({"b": {}});
        fill_defaults(&schema, &mut instance);
        // `f` has no default, so nothing creates it.
        assert_eq!(instance, json!({"a": 1, "b": {"c": "x"}, "d": {"e": true}}));
    }

    #[test]
    fn fill_defaults_fills_array_elements() {
        let schema =
            json!({"properties": {"lines": {"items": {"properties": {"qty": {"default": 1}}}}}});
        let mut instance = json!({"lines": [{}, {"qty": 5}, 3]});
        fill_defaults(&schema, &mut instance);
        assert_eq!(instance, json!({"lines": [{"qty": 1}, {"qty": 5}, 3]}));
    }

    #[test]
    fn fill_defaults_never_overwrites() {
        let schema = json!({"properties": {"a": {"default": 1}, "b": {"default": {"c": 1}}}});
        let mut instance = json!({"a": null, "b": {}});
        fill_defaults(&schema, &mut instance);
        assert_eq!(instance, json!({"a": null, "b": {}}));
    }

    #[test]
    fn fill_defaults_ignores_what_it_cannot_fill() {
        let schema = json!({"properties": {"a": {"default": 1}}});
        for original in [json!(5), json!("text"), json!([{}]), json!(null)] {
            let mut instance = original.clone();
            fill_defaults(&schema, &mut instance);
            assert_eq!(instance, original);
        }
        let mut instance = json!({});
        fill_defaults(&json!(true), &mut instance);
        fill_defaults(
            &json!({"items": [{"properties": {"a": {"default": 1}}}]}),
            &mut instance,
        );
        assert_eq!(instance, json!({}));
    }

    #[test]
    fn compatibility_parses_every_choice() {
        for &(name, mode) in Compatibility::CHOICES {
            assert_eq!(name.parse::<Compatibility>(), Ok(mode));
            assert_eq!(mode.as_str(), name);
            assert_eq!(mode.to_string(), name);
            assert_eq!(serde_json::to_value(mode).ok(), Some(json!(name)));
            assert_eq!(
                serde_json::from_value::<Compatibility>(json!(name)).ok(),
                Some(mode)
            );
            assert_eq!(mode.is_transitive(), name.ends_with("_transitive"));
        }
        assert_eq!(Compatibility::default(), Compatibility::Backward);
    }

    #[test]
    fn compatibility_rejects_other_spellings() {
        let expected = r#"expected one of "backward", "forward", "full", "backward_transitive", "forward_transitive", "full_transitive", "none", got "sideways""#;
        assert_eq!(
            "sideways".parse::<Compatibility>(),
            Err(expected.to_owned())
        );
        for spelling in ["Backward", "backward-transitive", "", " full"] {
            let error = spelling.parse::<Compatibility>().err().unwrap_or_default();
            assert!(
                error.starts_with(r#"expected one of "backward""#),
                "{error}"
            );
            assert!(error.ends_with(&format!("got {spelling:?}")), "{error}");
        }
    }

    #[test]
    fn breaking_change_display() {
        let change = BreakingChange {
            against: 3,
            direction: Direction::Forward,
            pointer: "/items/*/sku".to_owned(),
            rule: "minimum lowered from 2 to 1".to_owned(),
        };
        assert_eq!(
            change.to_string(),
            r#"v3 (forward): "/items/*/sku": minimum lowered from 2 to 1"#
        );
        let root = BreakingChange {
            against: 1,
            direction: Direction::Backward,
            pointer: String::new(),
            rule: "no longer allowed (schema is false)".to_owned(),
        };
        assert_eq!(
            root.to_string(),
            "v1 (backward): (root): no longer allowed (schema is false)"
        );
    }

    #[test]
    fn numbers_compare_exactly() {
        let n = |v: Value| v.as_number().cloned().unwrap_or_else(|| Number::from(0));
        assert_eq!(
            compare_numbers(&n(json!(1)), &n(json!(1.0))),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_numbers(&n(json!(1)), &n(json!(1.5))),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_numbers(&n(json!(-2)), &n(json!(-1.5))),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_numbers(
                &n(json!(9_007_199_254_740_993_u64)),
                &n(json!(9_007_199_254_740_992.0))
            ),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_numbers(&n(json!(u64::MAX)), &n(json!(-1))),
            Some(Ordering::Greater)
        );
    }
}
