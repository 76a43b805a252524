//! WeChat push bodies: XML or JSON in, a flat field map out; passive replies and encrypted
//! envelopes back in the format the push came in.
//!
//! WeChat's pushes are flat (`<xml><ToUserName>..</ToUserName><MsgType>..</MsgType>..</xml>` or
//! the same keys in a JSON object); the few nested parts (`ScanCodeInfo`, `SendPicsInfo`) are kept
//! as `Parent.Child` paths. The XML is read by quick-xml with no DTD: a `<!DOCTYPE` is refused,
//! and only the five predefined entities and character references are resolved, so no entity
//! can expand (billion laughs, external entities).

use serde_json::Value;

/// The most fields one push may carry (WeChat's have about a dozen).
const MAX_FIELDS: usize = 128;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Xml,
    Json,
}

/// A push's fields in document order (names are unique in practice; the first wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field that must be present and non-empty.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("missing field {name}"))
    }
}

/// The format of a body by its first non-blank byte.
pub fn detect(body: &[u8]) -> Option<Format> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'<') => Some(Format::Xml),
        Some(b'{') => Some(Format::Json),
        _ => None,
    }
}

/// Parses a push in either format.
pub fn parse(body: &[u8]) -> Result<(Format, Fields), String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    match detect(body) {
        Some(Format::Xml) => parse_xml(text).map(|f| (Format::Xml, f)),
        Some(Format::Json) => parse_json(text).map(|f| (Format::Json, f)),
        None => Err("the body is neither XML nor JSON".into()),
    }
}

pub fn parse_xml(text: &str) -> Result<Fields, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut value = String::new();
    let mut fields = Vec::new();
    let mut root_seen = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("bad XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                if path.is_empty() && root_seen {
                    return Err("bad XML: more than one root element".into());
                }
                root_seen = true;
                if path.len() >= MAX_DEPTH {
                    return Err("bad XML: nested too deep".into());
                }
                path.push(e.name().as_ref().to_string());
                value.clear();
            }
            Event::Empty(e) => {
                if path.is_empty() {
                    root_seen = true;
                    continue;
                }
                let mut key = path[1..].join(".");
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(e.name().as_ref());
                push_field(&mut fields, key, String::new())?;
            }
            Event::Text(t) => {
                if !path.is_empty() {
                    value.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if !path.is_empty() {
                    value.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                // Only predefined entities and character references: nothing can expand.
                let raw = format!("&{};", r.into_inner());
                let resolved = quick_xml::escape::unescape(&raw)
                    .map_err(|_| format!("bad XML: unknown entity {raw}"))?;
                if !path.is_empty() {
                    value.push_str(&resolved);
                }
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err("bad XML: unbalanced end tag".into());
                };
                // A leaf below the root: record it. (Whitespace between child elements of a
                // nested part is not a value.)
                if !path.is_empty() {
                    let mut key = path[1..].join(".");
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(&name);
                    let v = std::mem::take(&mut value);
                    if !(v.trim().is_empty()
                        && fields
                            .iter()
                            .any(|(k, _): &(String, String)| k.starts_with(&format!("{key}."))))
                    {
                        push_field(&mut fields, key, v)?;
                    }
                }
                value.clear();
            }
            Event::DocType(_) => return Err("bad XML: a DOCTYPE is not accepted".into()),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !root_seen || !path.is_empty() {
        return Err("bad XML: no complete root element".into());
    }
    Ok(Fields(fields))
}

fn push_field(
    fields: &mut Vec<(String, String)>,
    key: String,
    value: String,
) -> Result<(), String> {
    if fields.len() >= MAX_FIELDS {
        return Err("too many fields".into());
    }
    fields.push((key, value));
    Ok(())
}

pub fn parse_json(text: &str) -> Result<Fields, String> {
    let Value::Object(map) =
        serde_json::from_str::<Value>(text).map_err(|e| format!("bad JSON: {e}"))?
    else {
        return Err("bad JSON: not an object".into());
    };
    let mut fields = Vec::new();
    for (k, v) in map {
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            // Nested parts are kept as their JSON text.
            other => other.to_string(),
        };
        push_field(&mut fields, k, v)?;
    }
    Ok(Fields(fields))
}

/// A value as an XML text node: CDATA, split where the text itself contains `]]>`.
fn cdata(v: &str) -> String {
    format!("<![CDATA[{}]]>", v.replace("]]>", "]]]]><![CDATA[>"))
}

/// A reply or envelope built from (name, value) pairs; numbers stay numbers.
pub fn build(format: Format, fields: &[(&str, Value)]) -> String {
    match format {
        Format::Xml => {
            let mut s = String::from("<xml>");
            for (k, v) in fields {
                s.push('<');
                s.push_str(k);
                s.push('>');
                match v {
                    Value::Number(n) => s.push_str(&n.to_string()),
                    Value::String(t) => s.push_str(&cdata(t)),
                    other => s.push_str(&cdata(&other.to_string())),
                }
                s.push_str("</");
                s.push_str(k);
                s.push('>');
            }
            s.push_str("</xml>");
            s
        }
        Format::Json => {
            // Written in the given order (a serde_json map would sort the keys).
            let mut s = String::from("{");
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&Value::from(*k).to_string());
                s.push(':');
                s.push_str(&v.to_string());
            }
            s.push('}');
            s
        }
    }
}

/// A passive text reply to the user who sent `to`'s push.
pub fn text_reply(
    format: Format,
    to_user: &str,
    from_user: &str,
    created: i64,
    content: &str,
) -> String {
    build(
        format,
        &[
            ("ToUserName", Value::from(to_user)),
            ("FromUserName", Value::from(from_user)),
            ("CreateTime", Value::from(created)),
            ("MsgType", Value::from("text")),
            ("Content", Value::from(content)),
        ],
    )
}

/// The safe-mode reply envelope: the signature covers the reply's own timestamp and nonce.
pub fn encrypted_reply(
    format: Format,
    encrypt: &str,
    signature: &str,
    timestamp: i64,
    nonce: &str,
) -> String {
    build(
        format,
        &[
            ("Encrypt", Value::from(encrypt)),
            ("MsgSignature", Value::from(signature)),
            ("TimeStamp", Value::from(timestamp)),
            ("Nonce", Value::from(nonce)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_xml_with_cdata_entities_and_nested_parts() {
        let xml = "<?xml version=\"1.0\"?>\n<xml>\n <ToUserName><![CDATA[gh_1]]></ToUserName>\n \
                   <CreateTime>1409735668</CreateTime>\n <Content><![CDATA[a]]]]><![CDATA[>b]]> &amp; &#x4E2D;&lt;</Content>\n \
                   <ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult>1</ScanResult></ScanCodeInfo>\n \
                   <Empty/></xml>";
        let f = parse_xml(xml).unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_1"));
        assert_eq!(f.get("CreateTime"), Some("1409735668"));
        assert_eq!(f.get("Content"), Some("a]]>b & 中<"));
        assert_eq!(f.get("ScanCodeInfo.ScanType"), Some("qrcode"));
        assert_eq!(f.get("ScanCodeInfo.ScanResult"), Some("1"));
        assert_eq!(f.get("ScanCodeInfo"), None);
        assert_eq!(f.get("Empty"), Some(""));
    }

    #[test]
    fn hostile_xml_is_refused() {
        let bomb = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><xml><a>&lol2;</a></xml>";
        assert!(parse_xml(bomb).unwrap_err().contains("DOCTYPE"));
        let external = "<xml><a>&xxe;</a></xml>";
        assert!(parse_xml(external).unwrap_err().contains("unknown entity"));
        assert!(parse_xml("<xml><a>1</a>").is_err());
        assert!(parse_xml("<xml></xml><xml></xml>").is_err());
        assert!(parse_xml("<xml><a><b><c><d>1</d></c></b></a></xml>").is_err());
        assert!(parse_xml("").is_err());
        let many: String = (0..200).map(|i| format!("<f{i}>x</f{i}>")).collect();
        assert!(parse_xml(&format!("<xml>{many}</xml>")).is_err());
    }

    #[test]
    fn json_fields_and_format_detection() {
        let (format, f) = parse(
            br#" {"ToUserName":"gh_9","CreateTime":1714112445,"MsgType":"event","x":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(format, Format::Json);
        assert_eq!(f.get("CreateTime"), Some("1714112445"));
        assert_eq!(f.get("x"), Some(r#"{"a":1}"#));
        assert_eq!(f.require("Nope").unwrap_err(), "missing field Nope");
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"success").is_err());
        assert_eq!(detect(b"\n <xml/>"), Some(Format::Xml));
    }

    #[test]
    fn replies_round_trip_in_both_formats() {
        for format in [Format::Xml, Format::Json] {
            let r = text_reply(format, "o1", "gh_1", 7, "张三，登录成功！]]>");
            let (f2, fields) = parse(r.as_bytes()).unwrap();
            assert_eq!(f2, format);
            assert_eq!(fields.get("Content"), Some("张三，登录成功！]]>"));
            assert_eq!(fields.get("CreateTime"), Some("7"));
            let e = encrypted_reply(format, "ENC", "SIG", 1713424427, "415670741");
            let (_, fields) = parse(e.as_bytes()).unwrap();
            assert_eq!(fields.get("TimeStamp"), Some("1713424427"));
            assert_eq!(fields.get("Nonce"), Some("415670741"));
        }
        assert_eq!(
            encrypted_reply(Format::Json, "E", "S", 1, "2"),
            r#"{"Encrypt":"E","MsgSignature":"S","TimeStamp":1,"Nonce":"2"}"#
        );
    }
}
