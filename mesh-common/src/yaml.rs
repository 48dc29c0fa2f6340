//! YAML (and JSON) the mesh does not control, read within named limits: manifests in local
//! mode and `mesh-operator check`, the agent's static state file.
//!
//! Every limit is checked while the input is read, so a hostile file costs time in
//! proportion to what was read up to the error (100 KB of `[` stops after 64 bytes), and the
//! error names the limit that was hit and where. The reader is `serde-saphyr` (kube uses it
//! too), told to read scalars as YAML 1.2 does (`yes`, `0755` and `1_000` stay strings, as
//! they did with the reader before it).

use serde::de::DeserializeOwned;

/// The largest file read (16 MiB): a manifest directory of 10,000 services is far below.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// Documents in one file.
pub const MAX_DOCUMENTS: usize = 10_000;
/// How deep mappings and sequences nest (block and flow). Kubernetes objects need about 15.
pub const MAX_DEPTH: usize = 64;
/// Parser events (scalars, collection starts and ends) in one file: a NetworkPolicy of
/// 10,000 ipBlock rules takes about 100,000, a file of 1,000 services with their
/// EndpointSlices about 200,000.
pub const MAX_EVENTS: usize = 4_000_000;
/// Aliases (`*name`) and anchors (`&name`) in one file; every alias is expanded, and the
/// expansion is bounded too (no billion laughs).
pub const MAX_ALIASES: usize = 1_000;
/// Values aliases may stand for, all aliases of one file together (each alias is replayed
/// whole): Kubernetes objects rarely use aliases at all.
pub const MAX_ALIAS_EXPANSION: usize = 100_000;
/// Bytes of all scalars of one file together.
pub const MAX_SCALAR_BYTES: usize = MAX_FILE_BYTES;

/// What is wrong with a YAML input: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", location.map(|(line, column)| format!(" (line {line}, column {column})")).unwrap_or_default())]
pub struct YamlError {
    pub message: String,
    /// Line and column (from 1), where known.
    pub location: Option<(u32, u32)>,
}

impl YamlError {
    fn plain(message: String) -> Self {
        Self { message, location: None }
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: MAX_ALIAS_EXPANSION },
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_events: MAX_EVENTS,
            max_nodes: MAX_EVENTS,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_recorded_anchor_events: MAX_ALIAS_EXPANSION,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
            max_reader_input_bytes: Some(MAX_FILE_BYTES),
            max_documents: MAX_DOCUMENTS,
        },
    }
}

/// The parser's error, with the limit named when one was hit.
fn error(err: &serde_saphyr::Error) -> YamlError {
    use serde_saphyr::budget::BudgetBreach;
    let location = err.location().map(|l| (l.line() as u32, l.column() as u32));
    let message = match err {
        serde_saphyr::Error::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => format!("nested deeper than {MAX_DEPTH} levels (the limit)"),
            BudgetBreach::Events { .. } | BudgetBreach::Nodes { .. } => {
                format!("more than {MAX_EVENTS} values in one file (the limit): split the file")
            }
            BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => {
                format!("more than {MAX_ALIASES} aliases or anchors in one file (the limit)")
            }
            BudgetBreach::ScalarBytes { .. } => {
                format!("more than {MAX_SCALAR_BYTES} bytes of values in one file (the limit)")
            }
            BudgetBreach::Documents { .. } => {
                format!("more than {MAX_DOCUMENTS} documents (the limit): split the file")
            }
            other => format!("a limit was hit: {other:?}"),
        },
        other => {
            let text = other.without_snippet().to_string();
            // The scanner's own nesting check (flow collections) reports a recursion limit.
            if text.contains("recursion limit") || text.contains("nesting") {
                format!("nested deeper than {MAX_DEPTH} levels (the limit): {text}")
            } else if text.contains("budget breached") || text.contains("replay") {
                format!(
                    "over a limit ({text}); the limits per file: {MAX_EVENTS} values, {MAX_ALIASES} aliases or anchors, {MAX_ALIAS_EXPANSION} values through aliases"
                )
            } else if let Some(at) = text.find(", set DuplicateKeyPolicy") {
                // The parser's advice is for programs; a user removes the second key.
                format!("not valid YAML: {}: remove one of them", &text[..at])
            } else {
                format!("not valid YAML: {text}")
            }
        }
    };
    // The parser names the place itself in most messages: give it once.
    let location = if message.contains(" line ") { None } else { location };
    YamlError { message, location }
}

/// Refuses a text over [`MAX_FILE_BYTES`].
fn check_size(text: &str) -> Result<(), YamlError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(YamlError::plain(format!(
            "larger than {MAX_FILE_BYTES} bytes (the limit): split it into several files"
        )));
    }
    Ok(())
}

/// Reads `path` as text, refusing (before reading it) a file over [`MAX_FILE_BYTES`].
pub fn read_file(path: &std::path::Path) -> Result<String, YamlError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|err| YamlError::plain(format!("cannot read it: {err}")))?;
    let mut text = String::new();
    // Read at most one byte more than allowed: a file that grows meanwhile is refused too.
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|err| YamlError::plain(format!("cannot read it: {err}")))?;
    check_size(&text)?;
    Ok(text)
}

/// The documents of `text` (empty ones left out), each as a `T`, or the first error: a
/// syntax error or a limit refuses the whole text (nothing in it can be trusted).
///
/// Read from the `&str` itself: serde-saphyr's `io::Read` path (chunked characters through a
/// boxed reader) took twice as long on the control-plane benchmark's 1,000 files.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    check_size(text)?;
    serde_saphyr::from_str_multiple_with_options::<T, Vec<T>>(text, options()).map_err(|err| error(&err))
}

/// One document of `text` as a `T`; an error is `(field, message)`, the field a path such as
/// `services[0].backends[1].pod` (or `(document)`).
pub fn document<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    check_size(text).map_err(|err| ("(document)".to_owned(), err.to_string()))?;
    let mut field = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            field = Some(path);
            err.into_inner()
        })
    })
    .map_err(|err| {
        let field = field.filter(|f| f != ".").unwrap_or_else(|| "(document)".into());
        (field, error(&err).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_after_reading_little_and_names_the_limit() {
        for hostile in ["[".repeat(100_000), "{a: ".repeat(100_000), "- ".repeat(100_000)] {
            let started = std::time::Instant::now();
            let err = documents::<serde_json::Value>(&hostile).expect_err("refused");
            assert!(err.message.contains(&format!("deeper than {MAX_DEPTH}")), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        }
    }

    #[test]
    fn aliases_are_bounded() {
        // A billion laughs: each level doubles the one before.
        let mut text = String::from("a0: &a0 [x, x]\n");
        for i in 1..40 {
            text += &format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1);
        }
        assert!(documents::<serde_json::Value>(&text).is_err(), "expanded a billion laughs");
    }

    #[test]
    fn documents_and_size_are_bounded() {
        let many = "a: 1\n---\n".repeat(MAX_DOCUMENTS + 5);
        let err = documents::<serde_json::Value>(&many).unwrap_err();
        assert!(err.message.contains("more than 10000 documents"), "{err}");
        assert_eq!(
            documents::<serde_json::Value>(&format!("{}a: 1\n", "a: 1\n---\n".repeat(MAX_DOCUMENTS - 1)))
                .unwrap()
                .len(),
            MAX_DOCUMENTS
        );
        let big = "#".repeat(MAX_FILE_BYTES + 1);
        assert!(documents::<serde_json::Value>(&big).unwrap_err().message.contains("larger than"));
    }

    #[test]
    fn scalars_read_as_yaml_1_2_and_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        struct Port {
            #[allow(dead_code)]
            name: String,
            #[allow(dead_code)]
            number: u16,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Doc {
            #[allow(dead_code)]
            ports: Vec<Port>,
        }
        let values = documents::<serde_json::Value>("a: yes\nb: 0755\nc: 1_000\nd: true\ne: 12\n").unwrap();
        let value = &values[0];
        assert_eq!(value["a"], "yes");
        assert_eq!(value["b"], "0755");
        assert_eq!(value["c"], "1_000");
        assert_eq!(value["d"], true);
        assert_eq!(value["e"], 12);
        let (field, message) =
            document::<Doc>("ports:\n  - {name: a, number: 1}\n  - {name: b, number: x}\n").unwrap_err();
        assert_eq!(field, "ports[1].number");
        assert!(message.contains("line 3"), "{message}");
    }
}
