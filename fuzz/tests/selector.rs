//! Fuzz harness for label and field selectors (`labelSelector=`,
//! `fieldSelector=`), which any client sends on lists and watches.

use berth_control::selector::Selector;
use bolero::generator::TypeGenerator;
use serde_json::json;

/// A piece of selector text.
#[derive(Debug, Clone, TypeGenerator)]
enum Token {
    Key(u8),
    Value(u8),
    Op(u8),
    Text(String),
}

const KEYS: &[&str] = &[
    "app",
    "tier",
    "a.b/c",
    "kubernetes.io/hostname",
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "",
    "-",
    "a/b/c",
];
const VALUES: &[&str] = &[
    "web", "", "x-1", "(a,b)", "(a, b,)", "()", "Running", "node-1",
];
const OPS: &[&str] = &[
    "=", "==", "!=", "!", " in ", " notin ", ",", "(", ")", " ", "in(", "notin(",
];

fn render(tokens: &[Token]) -> String {
    let pick = |words: &[&str], i: u8| words[usize::from(i) % words.len()].to_owned();
    tokens
        .iter()
        .map(|t| match t {
            Token::Key(i) => pick(KEYS, *i),
            Token::Value(i) => pick(VALUES, *i),
            Token::Op(i) => pick(OPS, *i),
            Token::Text(s) => s.clone(),
        })
        .collect()
}

/// Any selector text: never a panic; a parsed selector means the same
/// with a trailing comma, and matching objects cannot fail.
#[test]
fn selector() {
    let pod = json!({
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running"},
    });
    bolero::check!()
        .with_type::<(bool, Vec<Token>)>()
        .for_each(|(fields, tokens)| {
            let text = render(tokens);
            let parse = |t: &str| {
                if *fields {
                    Selector::fields(t)
                } else {
                    Selector::labels(t)
                }
            };
            let Ok(selector) = parse(&text) else {
                return;
            };
            assert_eq!(
                parse(&format!("{text},")).ok(),
                Some(selector.clone()),
                "{text:?}"
            );
            if *fields {
                selector.matches_fields(&pod);
            } else {
                selector.matches_labels(&pod);
            }
        });
}
