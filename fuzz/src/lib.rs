//! What Berth's fuzz harnesses (`tests/`) share: a vocabulary of edits
//! that turn a valid document into nearby, mostly invalid ones.
//!
//! Random bytes almost never get past a JSON parser, so each harness
//! starts from a valid document (a fixture) and applies edits drawn by the
//! engine: set or remove a value at a path made of the field names the
//! parser under test knows, then optionally damage the encoded bytes. The
//! same harnesses run as random property tests under `cargo test` and
//! coverage-guided under `cargo xtask fuzz`, where the engine's bytes
//! drive the choices.

use bolero::generator::TypeGenerator;
use serde_json::{Map, Value};

/// A step of a path into a document.
#[derive(Debug, Clone, TypeGenerator)]
pub enum Step {
    /// A field name from the harness's vocabulary (index modulo its length).
    Known(u8),
    /// Any field name.
    Other(String),
    /// An array element (modulo the length, or one past the end).
    Index(u8),
}

/// A value to write.
#[derive(Debug, Clone, TypeGenerator)]
pub enum Scalar {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A small number, where most limits are.
    Small(i16),
    /// Any integer.
    Int(i64),
    /// A float (NaN and infinities are written as `null` by JSON).
    Float(f64),
    /// A string from the harness's vocabulary.
    Known(u8),
    /// Any string.
    Text(String),
    /// One character repeated: long names, long values.
    Long(char, u16),
    /// `{}`.
    Object,
    /// `[]`.
    Array,
}

/// One edit of a document.
#[derive(Debug, Clone, TypeGenerator)]
pub enum Edit {
    /// Writes `value` at `path`, making the containers on the way.
    Set {
        /// Where.
        path: Vec<Step>,
        /// What.
        value: Scalar,
    },
    /// Removes what `path` names, if it exists.
    Remove {
        /// Where.
        path: Vec<Step>,
    },
}

/// Damage to the encoded document.
#[derive(Debug, Clone, TypeGenerator)]
pub enum Damage {
    /// Cut it at this byte (modulo its length).
    Truncate(u16),
    /// Replace one byte (position modulo its length).
    Byte(u16, u8),
    /// Insert bytes at a position (modulo its length).
    Insert(u16, Vec<u8>),
}

/// What a harness draws: edits, then maybe damage.
#[derive(Debug, Clone, TypeGenerator)]
pub struct Mutation {
    /// Applied in order.
    pub edits: Vec<Edit>,
    /// Applied to the encoded result.
    pub damage: Option<Damage>,
}

/// The words a harness's edits are made of: field names its parser knows
/// and string values it treats specially.
#[derive(Debug, Clone, Copy)]
pub struct Vocabulary {
    /// Field names.
    pub keys: &'static [&'static str],
    /// String values.
    pub strings: &'static [&'static str],
}

fn pick<'a>(words: &[&'a str], i: u8) -> &'a str {
    if words.is_empty() {
        ""
    } else {
        words[usize::from(i) % words.len()]
    }
}

impl Scalar {
    /// The JSON value this stands for.
    pub fn to_value(&self, vocabulary: &Vocabulary) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Small(n) => Value::from(*n),
            Scalar::Int(n) => Value::from(*n),
            Scalar::Float(f) => Value::from(*f),
            Scalar::Known(i) => Value::from(pick(vocabulary.strings, *i)),
            Scalar::Text(s) => Value::from(s.as_str()),
            Scalar::Long(c, n) => Value::from(c.to_string().repeat(usize::from(*n))),
            Scalar::Object => Value::Object(Map::new()),
            Scalar::Array => Value::Array(Vec::new()),
        }
    }
}

impl Edit {
    /// Applies the edit to `doc`.
    pub fn apply(&self, doc: &mut Value, vocabulary: &Vocabulary) {
        match self {
            Edit::Set { path, value } => {
                let slot = walk(doc, path, vocabulary);
                *slot = value.to_value(vocabulary);
            }
            Edit::Remove { path } => {
                let Some((last, parent)) = path.split_last() else {
                    return;
                };
                let parent = walk(doc, parent, vocabulary);
                match (last, parent) {
                    (Step::Index(i), Value::Array(items)) if !items.is_empty() => {
                        items.remove(usize::from(*i) % items.len());
                    }
                    (Step::Known(i), Value::Object(map)) => {
                        map.remove(pick(vocabulary.keys, *i));
                    }
                    (Step::Other(key), Value::Object(map)) => {
                        map.remove(key);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Follows `path` from `doc`, turning what is in the way into the object
/// or array the next step needs.
fn walk<'a>(mut doc: &'a mut Value, path: &[Step], vocabulary: &Vocabulary) -> &'a mut Value {
    for step in path {
        doc = match step {
            Step::Index(i) => {
                if !doc.is_array() {
                    *doc = Value::Array(Vec::new());
                }
                let Value::Array(items) = doc else {
                    unreachable!("made an array above")
                };
                let at = usize::from(*i) % (items.len() + 1);
                if at == items.len() {
                    items.push(Value::Null);
                }
                &mut items[at]
            }
            Step::Known(_) | Step::Other(_) => {
                let key = match step {
                    Step::Known(i) => pick(vocabulary.keys, *i).to_owned(),
                    Step::Other(s) => s.clone(),
                    Step::Index(_) => unreachable!("handled above"),
                };
                if !doc.is_object() {
                    *doc = Value::Object(Map::new());
                }
                let Value::Object(map) = doc else {
                    unreachable!("made an object above")
                };
                map.entry(key).or_insert(Value::Null)
            }
        };
    }
    doc
}

impl Damage {
    /// Applies the damage to `bytes`.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |n: u16, len: usize| usize::from(n) % (len + 1);
        match self {
            Damage::Truncate(n) => bytes.truncate(at(*n, bytes.len())),
            Damage::Byte(n, b) => {
                if !bytes.is_empty() {
                    let i = usize::from(*n) % bytes.len();
                    bytes[i] = *b;
                }
            }
            Damage::Insert(n, more) => {
                let i = at(*n, bytes.len());
                bytes.splice(i..i, more.iter().copied());
            }
        }
    }
}

impl Mutation {
    /// Applies the edits to a copy of `base`, then the damage to its
    /// encoding; returns the edited document and the bytes to parse.
    pub fn apply(&self, base: &Value, vocabulary: &Vocabulary) -> (Value, Vec<u8>) {
        let mut doc = base.clone();
        for edit in &self.edits {
            edit.apply(&mut doc, vocabulary);
        }
        let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
        if let Some(damage) = &self.damage {
            damage.apply(&mut bytes);
        }
        (doc, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WORDS: Vocabulary = Vocabulary {
        keys: &["spec", "ports"],
        strings: &["TCP"],
    };

    #[test]
    fn set_makes_the_containers_on_its_path() {
        let mut doc = json!({"spec": 3});
        Edit::Set {
            path: vec![Step::Known(0), Step::Known(1), Step::Index(0)],
            value: Scalar::Known(0),
        }
        .apply(&mut doc, &WORDS);
        assert_eq!(doc, json!({"spec": {"ports": ["TCP"]}}));
    }

    #[test]
    fn remove_takes_out_what_the_path_names() {
        let mut doc = json!({"spec": {"ports": [1, 2]}});
        Edit::Remove {
            path: vec![Step::Known(0), Step::Known(1), Step::Index(3)],
        }
        .apply(&mut doc, &WORDS);
        assert_eq!(doc, json!({"spec": {"ports": [1]}}));
    }

    #[test]
    fn damage_stays_in_bounds() {
        let mut bytes = b"{}".to_vec();
        Damage::Insert(7, b"x".to_vec()).apply(&mut bytes);
        Damage::Byte(9, b'y').apply(&mut bytes);
        Damage::Truncate(1).apply(&mut bytes);
        assert_eq!(bytes, b"y");
    }
}
