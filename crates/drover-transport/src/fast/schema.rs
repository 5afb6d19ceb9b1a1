//! The fast path's compiled form of a JSON Schema ([`Node`]) and its `pattern`s.

use serde_json::Value;

pub(super) const NULL: u8 = 1;
pub(super) const BOOL: u8 = 2;
/// A number without a fractional part, read as an integer.
pub(super) const INTEGER: u8 = 4;
/// A number written with a fraction or exponent (read as `f64`); only `number` allows it here.
pub(super) const FRACTION: u8 = 8;
pub(super) const STRING: u8 = 16;
pub(super) const ARRAY: u8 = 32;
pub(super) const OBJECT: u8 = 64;
pub(super) const ANY_TYPE: u8 = 127;

/// Integers beyond this are left to the full path (their `f64` comparison would round).
pub(super) const EXACT_INTEGER: u64 = 1 << 53;
/// `$ref` chains deeper than this are not compiled (the full path handles them).
const MAX_REF_DEPTH: usize = 32;

/// What an object says about keys it does not list.
#[derive(Debug)]
pub(super) enum Additional {
    Any,
    Forbidden,
    Schema(Box<Node>),
}

/// One schema, compiled to the checks the fast path knows. Every field's default means "no
/// constraint".
#[derive(Debug)]
pub(super) struct Node {
    pub(super) types: u8,
    /// `const`, `enum` or a `oneOf` of distinct string constants: the instance is one of these.
    strings: Option<Vec<String>>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Pattern>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    pub(super) items: Option<Box<Node>>,
    pub(super) min_items: Option<usize>,
    pub(super) max_items: Option<usize>,
    pub(super) properties: Vec<(String, Node)>,
    /// Bit `i` set: `properties[i]` is required.
    pub(super) required: u64,
    pub(super) additional: Additional,
    pub(super) min_properties: Option<usize>,
    pub(super) max_properties: Option<usize>,
}

/// The schema `true`: anything (objects still may not repeat a key).
pub(super) static ANY: Node = Node {
    types: ANY_TYPE,
    strings: None,
    min_length: None,
    max_length: None,
    pattern: None,
    minimum: None,
    maximum: None,
    exclusive_minimum: None,
    exclusive_maximum: None,
    items: None,
    min_items: None,
    max_items: None,
    properties: Vec::new(),
    required: 0,
    additional: Additional::Any,
    min_properties: None,
    max_properties: None,
};

impl Node {
    pub(super) fn any() -> Self {
        Self {
            types: ANY_TYPE,
            strings: None,
            min_length: None,
            max_length: None,
            pattern: None,
            minimum: None,
            maximum: None,
            exclusive_minimum: None,
            exclusive_maximum: None,
            items: None,
            min_items: None,
            max_items: None,
            properties: Vec::new(),
            required: 0,
            additional: Additional::Any,
            min_properties: None,
            max_properties: None,
        }
    }

    pub(super) fn allows(&self, kind: u8) -> bool {
        // A string constant is never equal to a value of another kind.
        self.types & kind != 0 && (kind == STRING || self.strings.is_none())
    }

    pub(super) fn number_in_range(&self, x: f64) -> bool {
        self.minimum.is_none_or(|m| x >= m)
            && self.maximum.is_none_or(|m| x <= m)
            && self.exclusive_minimum.is_none_or(|m| x > m)
            && self.exclusive_maximum.is_none_or(|m| x < m)
    }

    pub(super) fn check_u64(&self, v: u64) -> bool {
        #[allow(clippy::cast_precision_loss)] // exact: v <= 2^53
        let exact = v <= EXACT_INTEGER && self.number_in_range(v as f64);
        self.allows(INTEGER) && exact
    }

    pub(super) fn check_i64(&self, v: i64) -> bool {
        #[allow(clippy::cast_precision_loss)] // exact: |v| <= 2^53
        let exact = v.unsigned_abs() <= EXACT_INTEGER && self.number_in_range(v as f64);
        self.allows(INTEGER) && exact
    }

    pub(super) fn check_f64(&self, v: f64) -> bool {
        // A JSON number with a fraction or exponent is an integer to JSON Schema when its
        // fraction is zero; that case (and every non-`number` type) is left to the full path.
        self.allows(FRACTION) && v.is_finite() && self.number_in_range(v)
    }

    /// True if this node is a string that must be exactly `s`: a message's `type`.
    pub(super) fn is_constant(&self, s: &str) -> bool {
        self.types == STRING
            && self.strings.as_deref().is_some_and(|c| c.len() == 1 && c[0] == s)
            && self.min_length.is_none()
            && self.max_length.is_none()
            && self.pattern.is_none()
    }

    pub(super) fn check_str(&self, s: &str) -> bool {
        if !self.allows(STRING) {
            return false;
        }
        if let Some(strings) = &self.strings
            && !strings.iter().any(|c| c == s)
        {
            return false;
        }
        // A string has at most as many characters as bytes and at least a quarter as many, so
        // characters are counted only when the byte length cannot decide.
        if let Some(max) = self.max_length
            && s.len() > max
            && s.chars().count() > max
        {
            return false;
        }
        if let Some(min) = self.min_length
            && (s.len() < min || (s.len() / 4 < min && s.chars().count() < min))
        {
            return false;
        }
        self.pattern.as_ref().is_none_or(|p| p.is_match(s))
    }

    pub(super) fn property(&self, key: &str) -> Option<usize> {
        // Length and first byte first: most names differ there, and then no call to `memcmp`.
        let first = key.as_bytes().first();
        self.properties.iter().position(|(name, _)| {
            name.len() == key.len() && name.as_bytes().first() == first && name == key
        })
    }
}

/// A `pattern`: the ECMA 262 pattern translated as the `jsonschema` crate translates it, then
/// either a run of ASCII character classes (what the protocol's identifier grammars are: each
/// class a fixed number of times, the last one a range of times), matched byte by byte, or
/// anything else, run by `regex`.
#[derive(Debug)]
enum Pattern {
    Classes(Vec<Piece>),
    Regex(regex::Regex),
}

/// One class of a [`Pattern::Classes`]: its ASCII bytes as a bit set, and how many times.
#[derive(Debug)]
struct Piece {
    set: u128,
    min: usize,
    max: Option<usize>,
}

impl Pattern {
    fn new(pattern: &str) -> Option<Self> {
        let translated = jsonschema_regex::to_rust_regex(pattern).ok()?;
        let classes =
            regex_syntax::Parser::new().parse(&translated).ok().and_then(|hir| Self::classes(&hir));
        match classes {
            Some(pieces) => Some(Self::Classes(pieces)),
            None => Some(Self::Regex(regex::Regex::new(&translated).ok()?)),
        }
    }

    /// `^` pieces `$`, every piece an ASCII-only class, all but the last a fixed count.
    fn classes(hir: &regex_syntax::hir::Hir) -> Option<Vec<Piece>> {
        use regex_syntax::hir::{Class, HirKind, Look};
        let HirKind::Concat(parts) = hir.kind() else { return None };
        let (first, rest) = parts.split_first()?;
        let (last, middle) = rest.split_last()?;
        if *first.kind() != HirKind::Look(Look::Start) || *last.kind() != HirKind::Look(Look::End) {
            return None;
        }
        let ascii_set = |hir: &regex_syntax::hir::Hir| -> Option<u128> {
            let HirKind::Class(Class::Unicode(class)) = hir.kind() else { return None };
            let mut set = 0u128;
            for range in class.ranges() {
                let (start, end) = (u32::from(range.start()), u32::from(range.end()));
                if end > 0x7f {
                    return None;
                }
                for byte in start..=end {
                    set |= 1 << byte;
                }
            }
            Some(set)
        };
        let mut pieces = Vec::new();
        for part in middle {
            let piece = match part.kind() {
                HirKind::Repetition(rep) if rep.greedy => Piece {
                    set: ascii_set(&rep.sub)?,
                    min: usize::try_from(rep.min).ok()?,
                    max: rep.max.map(usize::try_from).transpose().ok()?,
                },
                _ => Piece { set: ascii_set(part)?, min: 1, max: Some(1) },
            };
            pieces.push(piece);
        }
        let fixed =
            pieces.split_last().is_some_and(|(_, init)| init.iter().all(|p| p.max == Some(p.min)));
        fixed.then_some(pieces)
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Self::Regex(regex) => regex.is_match(s),
            Self::Classes(pieces) => {
                let in_set =
                    |set: u128, bytes: &[u8]| bytes.iter().all(|&b| b < 128 && set >> b & 1 == 1);
                let mut rest = s.as_bytes();
                let Some((last, init)) = pieces.split_last() else { return rest.is_empty() };
                for piece in init {
                    let Some((head, tail)) = rest.split_at_checked(piece.min) else { return false };
                    if !in_set(piece.set, head) {
                        return false;
                    }
                    rest = tail;
                }
                rest.len() >= last.min
                    && last.max.is_none_or(|max| rest.len() <= max)
                    && in_set(last.set, rest)
            }
        }
    }
}

/// Compiles the schemas of one document (a message schema with its `$defs`).
pub(super) struct Compiler<'a> {
    root: &'a Value,
}

/// Keywords that do not constrain an instance.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

fn usize_of(value: &Value) -> Option<usize> {
    value.as_u64().and_then(|v| usize::try_from(v).ok())
}

/// A schema bound as an `f64`, if it is one exactly.
fn bound_of(value: &Value) -> Option<f64> {
    let x = value.as_f64()?;
    match value.as_u64().or_else(|| value.as_i64().map(i64::unsigned_abs)) {
        Some(n) if n > EXACT_INTEGER => None,
        _ => Some(x),
    }
}

/// The string constants of a `oneOf` whose branches are each `{"type": "string", "const": s}`
/// (and annotations), all distinct, as schemars writes unit enums.
fn one_of_strings(branches: &Value) -> Option<Vec<String>> {
    let mut strings = Vec::new();
    for branch in branches.as_array()? {
        let mut constant = None;
        for (key, value) in branch.as_object()? {
            match key.as_str() {
                "const" => constant = Some(value.as_str()?.to_owned()),
                "type" if value == "string" => {}
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        let constant = constant?;
        if strings.contains(&constant) {
            return None;
        }
        strings.push(constant);
    }
    (!strings.is_empty()).then_some(strings)
}

impl<'a> Compiler<'a> {
    pub(super) fn new(root: &'a Value) -> Self {
        Self { root }
    }

    pub(super) fn node(&self, schema: &Value, depth: usize) -> Option<Node> {
        let schema = match schema {
            Value::Bool(true) => return Some(Node::any()),
            Value::Object(schema) => schema,
            _ => return None,
        };
        if let Some(reference) = schema.get("$ref") {
            // Only `{"$ref": ..}` plus annotations; the target replaces the node.
            if depth >= MAX_REF_DEPTH
                || schema.keys().any(|k| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return None;
            }
            let name = reference.as_str()?.strip_prefix("#/$defs/")?;
            let target = self.root.get("$defs")?.get(name)?;
            return self.node(target, depth + 1);
        }
        let mut node = Node::any();
        let mut required = Vec::new();
        for (key, value) in schema {
            match key.as_str() {
                "type" => {
                    let names: Vec<&str> = match value {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(list) => {
                            list.iter().map(Value::as_str).collect::<Option<_>>()?
                        }
                        _ => return None,
                    };
                    node.types = 0;
                    for name in names {
                        node.types |= match name {
                            "null" => NULL,
                            "boolean" => BOOL,
                            "integer" => INTEGER,
                            "number" => INTEGER | FRACTION,
                            "string" => STRING,
                            "array" => ARRAY,
                            "object" => OBJECT,
                            _ => return None,
                        };
                    }
                }
                "const" => node.strings = Some(vec![value.as_str()?.to_owned()]),
                "enum" => {
                    let strings: Vec<String> = value
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<_>>()?;
                    node.strings = Some(strings);
                }
                "oneOf" => node.strings = Some(one_of_strings(value)?),
                "minLength" => node.min_length = Some(usize_of(value)?),
                "maxLength" => node.max_length = Some(usize_of(value)?),
                "pattern" => {
                    node.pattern = Some(Pattern::new(value.as_str()?)?);
                }
                "minimum" => node.minimum = Some(bound_of(value)?),
                "maximum" => node.maximum = Some(bound_of(value)?),
                "exclusiveMinimum" => node.exclusive_minimum = Some(bound_of(value)?),
                "exclusiveMaximum" => node.exclusive_maximum = Some(bound_of(value)?),
                "items" => node.items = Some(Box::new(self.node(value, depth)?)),
                "minItems" => node.min_items = Some(usize_of(value)?),
                "maxItems" => node.max_items = Some(usize_of(value)?),
                "properties" => {
                    for (name, schema) in value.as_object()? {
                        node.properties.push((name.clone(), self.node(schema, depth)?));
                    }
                    if node.properties.len() > 64 {
                        return None;
                    }
                }
                "required" => {
                    required = value.as_array()?.iter().map(Value::as_str).collect::<Option<_>>()?
                }
                "additionalProperties" => {
                    node.additional = match value {
                        Value::Bool(true) => Additional::Any,
                        Value::Bool(false) => Additional::Forbidden,
                        schema => Additional::Schema(Box::new(self.node(schema, depth)?)),
                    }
                }
                "minProperties" => node.min_properties = Some(usize_of(value)?),
                "maxProperties" => node.max_properties = Some(usize_of(value)?),
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        for name in required {
            // A required name that no property lists is left to the full path.
            node.required |= 1 << node.property(name)?;
        }
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: &Value) -> Option<Node> {
        Compiler::new(schema).node(schema, 0)
    }

    #[test]
    fn unknown_keywords_are_left_to_the_full_path() {
        assert!(compile(&json!({"uniqueItems": true})).is_none());
        assert!(compile(&json!({"format": "uuid"})).is_none());
        assert!(compile(&json!({"oneOf": [{"type": "string"}, {"type": "integer"}]})).is_none());
        assert!(
            compile(&json!({"$ref": "#/$defs/X", "maxLength": 3, "$defs": {"X": {}}})).is_none()
        );
        assert!(compile(&json!({"required": ["a"]})).is_none());
        assert!(compile(&json!({"description": "x", "maxLength": 3})).is_some());
    }

    #[test]
    fn class_patterns_match_as_the_regex_does() {
        let patterns = [
            "^[A-Za-z0-9][A-Za-z0-9._-]*$",
            "^[A-Za-z_][A-Za-z0-9_]{0,127}$",
            "^[0-9a-f]{64}$",
            "^[a-z][a-z0-9-]*$",
            "^[0-9A-Za-z.+_-]+$",
            "^[A-Za-z0-9][A-Za-z0-9 ._-]*$",
        ];
        let inputs = [
            "",
            "a",
            "A",
            "-",
            "a-",
            "-a",
            "job-42",
            "a b",
            "a\n",
            "é",
            "aé",
            "a\u{0}",
            "0f",
            "_x",
            "x".repeat(128).as_str(),
            "x".repeat(129).as_str(),
            "ab.c+d_e-f",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefa",
        ]
        .map(str::to_owned);
        for pattern in patterns {
            let fast = Pattern::new(pattern).unwrap();
            assert!(matches!(fast, Pattern::Classes(_)), "{pattern} is not a run of classes");
            let regex =
                regex::Regex::new(&jsonschema_regex::to_rust_regex(pattern).unwrap()).unwrap();
            for input in &inputs {
                assert_eq!(fast.is_match(input), regex.is_match(input), "{pattern} on {input:?}");
            }
        }
        // Not a run of ASCII classes: left to the regex engine.
        for pattern in [r"^[^\s]+$", "^a*b*$", "^abc$", "[a-z]"] {
            assert!(matches!(Pattern::new(pattern).unwrap(), Pattern::Regex(_)), "{pattern}");
        }
        let not_space = Pattern::new(r"^[^\s]+$").unwrap();
        assert!(not_space.is_match("é-x") && !not_space.is_match("a b") && !not_space.is_match(""));
    }
}
