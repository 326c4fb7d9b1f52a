//! Outputs, read from the state document the Kubernetes backend keeps in
//! its Secret (gzipped JSON).

use std::collections::BTreeMap;

use super::job::OutputValue;

/// Why the outputs could not be read from a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot gunzip the state: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("the state is not JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// The root module's outputs of a state as the backend stores it.
pub fn from_state(raw: &[u8]) -> Result<BTreeMap<String, OutputValue>, StateError> {
    let json = gunzip(raw).map_err(StateError::Gzip)?;
    state_outputs(&json).map_err(StateError::Json)
}

/// The backend gzips the state (`encoding: gzip`); older states are plain.
pub fn gunzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut out)?;
    Ok(out)
}

/// Outputs of a state document (`{"outputs": {name: {value, sensitive}}}`).
fn state_outputs(state: &[u8]) -> Result<BTreeMap<String, OutputValue>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct State {
        #[serde(default)]
        outputs: serde_json::Map<String, serde_json::Value>,
    }
    let state: State = serde_json::from_slice(state)?;
    parse_outputs(&serde_json::Value::Object(state.outputs).to_string())
}

fn parse_outputs(raw: &str) -> Result<BTreeMap<String, OutputValue>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        sensitive: bool,
        value: serde_json::Value,
    }
    let raw: BTreeMap<String, Raw> = serde_json::from_str(raw)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let value = match v.value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (
                k,
                OutputValue {
                    value,
                    sensitive: v.sensitive,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_become_strings() {
        let got = parse_outputs(
            r#"{"url":{"sensitive":false,"type":"string","value":"postgres://x"},"port":{"sensitive":false,"type":"number","value":5432},"pw":{"sensitive":true,"type":"string","value":"s3cret"}}"#,
        )
        .unwrap();
        assert_eq!(got["port"].value, "5432");
        assert_eq!(got["url"].value, "postgres://x");
        assert!(got["pw"].sensitive);
    }

    #[test]
    fn outputs_come_from_the_gzipped_state() {
        use std::io::Write;
        let state = br#"{"version":4,"serial":3,"outputs":{"url":{"value":"postgres://x","type":"string","sensitive":true},"n":{"value":2,"type":"number"}},"resources":[]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(state).unwrap();
        let raw = gz.finish().unwrap();
        let outputs = from_state(&raw).unwrap();
        assert_eq!(
            outputs["url"],
            OutputValue {
                value: "postgres://x".into(),
                sensitive: true
            }
        );
        assert_eq!(outputs["n"].value, "2");
        assert!(from_state(br#"{"version":4}"#).unwrap().is_empty());
        assert!(from_state(b"not json").is_err());
    }
}
