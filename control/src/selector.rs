//! Label and field selectors, as `labelSelector=` and `fieldSelector=`
//! query parameters carry them.

use serde_json::Value;

use crate::error::ApiError;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key=value` / `key==value`
    Equals(String, String),
    /// `key!=value` (also true when the key is absent)
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent)
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

/// A parsed selector: every requirement must hold. The empty selector
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a label selector (all operators).
    pub fn labels(text: &str) -> Result<Self, ApiError> {
        parse(text, true)
            .map_err(|m| ApiError::bad_request(format!("unable to parse requirement: {m}")))
    }

    /// Parses a field selector (`=`, `==`, `!=` only).
    pub fn fields(text: &str) -> Result<Self, ApiError> {
        parse(text, false)
            .map_err(|m| ApiError::bad_request(format!("invalid field selector: {m}")))
    }

    /// Whether an object's labels satisfy the selector.
    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches(|key| {
            labels
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
                .map(String::from)
        })
    }

    /// Whether an object's fields satisfy the selector (a dotted path such
    /// as `spec.nodeName`; a missing field reads as "").
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            Some(match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
        })
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

fn parse(text: &str, set_based: bool) -> Result<Selector, String> {
    let mut requirements = Vec::new();
    for part in split_top_level(text)? {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        requirements.push(parse_requirement(part, set_based)?);
    }
    Ok(Selector(requirements))
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced ')' in {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str, set_based: bool) -> Result<Requirement, String> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let value_ok = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let pair = |k: &str, v: &str| -> Result<(String, String), String> {
        let (k, v) = (k.trim(), v.trim());
        if !key_ok(k) {
            return Err(format!("invalid key {k:?} in {part:?}"));
        }
        if set_based && !value_ok(v) {
            return Err(format!("invalid value {v:?} in {part:?}"));
        }
        Ok((k.to_string(), v.to_string()))
    };
    if let Some((k, v)) = part.split_once("!=") {
        let (k, v) = pair(k, v)?;
        return Ok(Requirement::NotEquals(k, v));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        let (k, v) = pair(k, v)?;
        return Ok(Requirement::Equals(k, v));
    }
    if !set_based {
        return Err(format!("{part:?} is not KEY=VALUE or KEY!=VALUE"));
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = part.split_once(op) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected a (value, ...) list in {part:?}"))?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            let k = k.trim();
            if !key_ok(k) || values.iter().any(|v| !value_ok(v)) {
                return Err(format!("invalid requirement {part:?}"));
            }
            return Ok(if negate {
                Requirement::NotIn(k.into(), values)
            } else {
                Requirement::In(k.into(), values)
            });
        }
    }
    if let Some(k) = part.strip_prefix('!') {
        let k = k.trim();
        return if key_ok(k) {
            Ok(Requirement::DoesNotExist(k.into()))
        } else {
            Err(format!("invalid key {k:?}"))
        };
    }
    if key_ok(part) {
        Ok(Requirement::Exists(part.into()))
    } else {
        Err(format!("invalid requirement {part:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "web", "tier": "fe"}},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_operators() {
        let p = pod();
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web,tier=fe", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
        ] {
            assert_eq!(
                Selector::labels(sel).unwrap().matches_labels(&p),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let p = pod();
        for (sel, want) in [
            ("metadata.name=a", true),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName!=n1", false),
            ("spec.nodeName=", false),
            ("spec.missing=", true),
        ] {
            assert_eq!(
                Selector::fields(sel).unwrap().matches_fields(&p),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in ["app in web", "a b=c", "app in (x", "=x"] {
            assert_eq!(Selector::labels(bad).unwrap_err().code, 400, "{bad}");
        }
        assert!(Selector::fields("spec.nodeName in (a)").is_err());
    }
}
