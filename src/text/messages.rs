//! Chat messages as callers send them (OpenAI-shaped JSON).

use serde::{Deserialize, Serialize};

/// One chat message, deserializable from OpenAI-shaped JSON. `content` may be a
/// string, null, or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default, deserialize_with = "content_from_json")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Default::default() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    pub fn tool(content: impl Into<String>) -> Self {
        Self::new("tool", content)
    }
}

/// `null` becomes "" (templates do `'</think>' in message.content`), a list of
/// text parts is concatenated.
fn content_from_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(String::new()),
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p.get("text").and_then(|t| t.as_str()) {
                    Some(t) if p.get("type").and_then(|t| t.as_str()).unwrap_or("text") == "text" => out.push_str(t),
                    _ => return Err(D::Error::custom("only text content parts are supported")),
                }
            }
            Ok(out)
        }
        _ => Err(D::Error::custom("content must be a string, null or a list of text parts")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_json_shapes() {
        let m: Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(m.content, "ab");
        let m: Message = serde_json::from_str(r#"{"role":"assistant","content":null,"tool_calls":[]}"#).unwrap();
        assert_eq!(m.content, "");
        let m: Message = serde_json::from_str(r#"{"role":"assistant"}"#).unwrap();
        assert_eq!(m.content, "");
        assert!(serde_json::from_str::<Message>(r#"{"role":"user","content":5}"#).is_err());
    }
}
