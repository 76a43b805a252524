//! The client protocol on the wire: status codes, close codes, request parsing, reply and push
//! encoding, and the validation of message bodies per type. See protocol-spec.md section 2.

use crate::store::{StoreError, StoredMessage};
use serde_json::{json, Map, Value};
use std::fmt::Write;

/// Reply codes (the `code` field). 200 is success; the others mirror HTTP's meanings.
pub mod code {
    pub const OK: u16 = 200;
    /// Malformed command, missing or invalid field.
    pub const BAD_REQUEST: u16 = 400;
    /// Not authenticated, or a bad / expired token.
    pub const UNAUTHORIZED: u16 = 401;
    /// Authenticated but not allowed: not a friend, not a member, not the owner.
    pub const FORBIDDEN: u16 = 403;
    /// No such user, group, conversation or message.
    pub const NOT_FOUND: u16 = 404;
    /// The request contradicts the current state (already friends, recall window passed...).
    pub const CONFLICT: u16 = 409;
    /// The consultation's time is used up (extend it through the server API).
    pub const GONE: u16 = 410;
    /// A body over its size limit.
    pub const TOO_LARGE: u16 = 413;
    /// A message type the destination cannot carry (WeChat customer service: voice, video...).
    pub const UNSUPPORTED_TYPE: u16 = 415;
    /// Over `[chat] max_msgs_per_sec`.
    pub const RATE_LIMITED: u16 = 429;
    /// A bug on our side.
    pub const INTERNAL: u16 = 500;
    /// WeChat refused a call or could not be reached.
    pub const BAD_GATEWAY: u16 = 502;
    /// Storage down or the server too busy: retry later (with the same client_msg_id).
    pub const UNAVAILABLE: u16 = 503;
}

/// Close codes of the chat endpoint (RFC 6455 private range).
pub mod close {
    /// Authentication failed: bad or expired token.
    pub const AUTH_FAILED: u16 = 4001;
    /// Not authenticated within `[chat] auth_timeout_s`.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// Kicked through the server API.
    pub const KICKED: u16 = 4003;
    /// A visitor's connection after the visitor logged in as a registered user.
    pub const CONVERTED: u16 = 4004;
    /// Admin subscribers: more unread than `[admin] subscriber_buffer_bytes`.
    pub const TOO_SLOW: u16 = 4005;
}

/// The code a store failure is reported with.
pub fn store_code(e: &StoreError) -> u16 {
    match e {
        StoreError::Unavailable(_) => code::UNAVAILABLE,
        StoreError::NotFound(_) => code::NOT_FOUND,
        StoreError::Conflict(_) => code::CONFLICT,
    }
}

/// Why a request failed: the `code` of the reply (the HTTP status on the HTTP API) and its
/// `msg`. Every handler, chat command, login and API reports failure with this one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub u16, pub String);

impl Failure {
    /// 400: the request itself is wrong.
    pub fn bad_request(msg: impl Into<String>) -> Failure {
        Failure(code::BAD_REQUEST, msg.into())
    }

    /// 503: the worker or persister queue is full; the client retries.
    pub fn busy() -> Failure {
        Failure(code::UNAVAILABLE, "server busy, retry".into())
    }

    pub fn code(&self) -> u16 {
        self.0
    }

    pub fn msg(&self) -> &str {
        &self.1
    }
}

impl From<&StoreError> for Failure {
    fn from(e: &StoreError) -> Failure {
        Failure(store_code(e), e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::from(&e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// A parsed command: its name, request id (echoed verbatim) and fields.
#[derive(Debug)]
pub struct Command {
    pub cmd: String,
    pub req_id: Option<Value>,
    pub fields: Map<String, Value>,
}

/// Parses one text frame. Err: not a command at all (answered with `cmd: "error"`).
pub fn parse_command(text: &str) -> Result<Command, &'static str> {
    decode_command(text, false)
}

/// A chat frame: a command ([`parse_command`]), or online_chat's send frame, which names no
/// `cmd`: `{"chat_type":0,"to_id":10000,"access_token":"..","msg_type":0,"msg":".."}`. An
/// object with no `cmd` that has `chat_type`, `to_id`, `msg_type` and `msg` is a `send`.
pub fn parse_chat_command(text: &str) -> Result<Command, &'static str> {
    decode_command(text, true)
}

fn decode_command(text: &str, online_chat_send: bool) -> Result<Command, &'static str> {
    let value: Value = serde_json::from_str(text).map_err(|_| "not valid JSON")?;
    command_of_value(value, online_chat_send)
}

/// A command already decoded as JSON (one forwarded between nodes), checked as
/// [`parse_command`] checks a frame.
pub fn command_from_value(value: Value) -> Result<Command, &'static str> {
    command_of_value(value, false)
}

fn command_of_value(value: Value, online_chat_send: bool) -> Result<Command, &'static str> {
    let Value::Object(mut fields) = value else {
        return Err("a command must be a JSON object");
    };
    let cmd = match fields.remove("cmd") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => s,
        None if online_chat_send && ONLINE_CHAT_SEND.iter().all(|k| fields.contains_key(*k)) => {
            "send".to_string()
        }
        _ => return Err("missing \"cmd\""),
    };
    let req_id = req_id_of(fields.remove("req_id"))?;
    Ok(Command {
        cmd,
        req_id,
        fields,
    })
}

/// The fields that make a frame without `cmd` online_chat's send.
const ONLINE_CHAT_SEND: &[&str] = &["chat_type", "to_id", "msg_type", "msg"];

/// `req_id` as both decoders read it: absent or null is none; a string or a number is echoed.
fn req_id_of(v: Option<Value>) -> Result<Option<Value>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(Some(v)),
        Some(_) => Err("\"req_id\" must be a string or a number"),
    }
}

/// A send's `client_msg_id` as both decoders read it: absent or null is none; a string of 1-64
/// bytes, or a number (as its text).
pub fn client_msg_id_of(v: Option<Value>) -> Result<Option<String>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err("client_msg_id must be a string of 1-64 bytes"),
    }
}

/// The fields of a `send`.
#[derive(Debug, PartialEq)]
pub struct SendArgs {
    pub chat_type: u64,
    pub to_id: u64,
    pub msg_type: u64,
    pub client_msg_id: Option<String>,
    /// The `msg` field (Null when absent), validated per `msg_type` by `validate_body`.
    pub msg: Value,
}

/// A `send` as its fields, for the hot path: the general decoder first builds a map of every
/// field (a third of a send's decoding time went to that map), this reads the seven fields a send
/// has straight from the text, each in one pass.
#[derive(serde::Deserialize)]
struct SendFrame<'a> {
    cmd: &'a str,
    req_id: Option<Value>,
    chat_type: Option<Uint>,
    to_id: Option<Uint>,
    msg_type: Option<Uint>,
    client_msg_id: Option<Value>,
    msg: Option<Value>,
    /// online_chat's per-frame token: such a frame takes the general path, which checks it.
    access_token: Option<serde::de::IgnoredAny>,
}

/// A non-negative integer as `Command::u64` reads one: a JSON integer, or a string of digits.
/// Anything else fails the typed decode (and the general decoder reports it).
struct Uint(u64);

impl<'de> serde::Deserialize<'de> for Uint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Uint, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Uint;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Uint, E> {
                Ok(Uint(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Uint, E> {
                v.parse().map(Uint).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `send` in its plain shape: `(req_id, fields)`, read with the same rules as the general
/// decoder (`Command`) applies. None for anything else: another command, a send with a field
/// that is missing or not what it should be, duplicated keys, JSON escapes in `cmd`. The general
/// decoder then answers those, with its own error messages, so this path never decides an error.
pub fn parse_send(text: &str) -> Option<(Option<Value>, SendArgs)> {
    let f: SendFrame = serde_json::from_str(text).ok()?;
    if f.cmd != "send" || f.access_token.is_some() {
        return None;
    }
    Some((
        req_id_of(f.req_id).ok()?,
        SendArgs {
            chat_type: f.chat_type?.0,
            to_id: f.to_id?.0,
            msg_type: f.msg_type?.0,
            client_msg_id: client_msg_id_of(f.client_msg_id).ok()?,
            msg: f.msg.unwrap_or(Value::Null),
        },
    ))
}

impl Command {
    pub fn u64(&self, name: &str) -> Result<u64, String> {
        match self.fields.get(name) {
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| format!("\"{name}\" must be a non-negative integer")),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| format!("\"{name}\" must be a non-negative integer")),
            _ => Err(format!("missing \"{name}\"")),
        }
    }

    pub fn u64_or(&self, name: &str, default: u64) -> Result<u64, String> {
        if self.fields.get(name).is_none_or(Value::is_null) {
            Ok(default)
        } else {
            self.u64(name)
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, String> {
        match self.fields.get(name) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(format!("missing \"{name}\"")),
        }
    }

    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    pub fn u64_list(&self, name: &str) -> Result<Vec<u64>, String> {
        match self.fields.get(name) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| format!("\"{name}\" must list user ids"))
                })
                .collect(),
            None | Some(Value::Null) => Ok(Vec::new()),
            _ => Err(format!("\"{name}\" must be an array")),
        }
    }
}

/// `{"cmd":..,"req_id":..,"code":200,"data":<data>}` with `data` already JSON.
pub fn ok_raw(cmd: &str, req_id: &Option<Value>, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 64);
    s.push_str("{\"cmd\":");
    push_json_str(&mut s, cmd);
    if let Some(id) = req_id {
        s.push_str(",\"req_id\":");
        // A string or a number (parse_command refuses anything else); Display writes JSON.
        let _ = write!(s, "{id}");
    }
    s.push_str(",\"code\":200,\"data\":");
    s.push_str(data);
    s.push('}');
    s
}

pub fn ok(cmd: &str, req_id: &Option<Value>, data: &Value) -> String {
    ok_raw(cmd, req_id, &data.to_string())
}

/// `{"cmd":..,"req_id":..,"code":<code>,"msg":<msg>}`.
pub fn fail(cmd: &str, req_id: &Option<Value>, code: u16, msg: &str) -> String {
    let mut v = json!({ "cmd": cmd, "code": code, "msg": msg });
    if let Some(id) = req_id {
        v["req_id"] = id.clone();
    }
    v.to_string()
}

/// A server push: `{"cmd":<cmd>,"data":<data>}`.
pub fn push(cmd: &str, data: &Value) -> String {
    json!({ "cmd": cmd, "data": data }).to_string()
}

/// A stored message as JSON (its body embedded as stored, not re-encoded).
pub fn message_json(m: &StoredMessage) -> String {
    let mut s = String::with_capacity(m.body.len() + 160);
    write_message_json(&mut s, m);
    s
}

/// Appends a stored message as JSON, written straight into `s` (once per message on the hot
/// path: no intermediate strings).
fn write_message_json(s: &mut String, m: &StoredMessage) {
    s.push_str("{\"msg_id\":");
    push_u64(s, m.msg_id);
    s.push_str(",\"conv_id\":");
    push_json_str(s, &m.conv_id);
    s.push_str(",\"seq\":");
    push_u64(s, m.seq);
    s.push_str(",\"chat_type\":");
    push_u64(s, m.chat_type.into());
    s.push_str(",\"from_id\":");
    push_u64(s, m.from_id);
    s.push_str(",\"to_id\":");
    push_u64(s, m.to_id);
    s.push_str(",\"msg_type\":");
    push_u64(s, m.msg_type.into());
    s.push_str(",\"msg\":");
    s.push_str(&m.body);
    s.push_str(",\"time\":");
    push_i64(s, m.created_at);
    s.push('}');
}

/// A JSON array of messages.
pub fn messages_json(ms: &[StoredMessage]) -> String {
    let mut s = String::with_capacity(2 + ms.iter().map(|m| m.body.len() + 161).sum::<usize>());
    s.push('[');
    for (i, m) in ms.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_message_json(&mut s, m);
    }
    s.push(']');
    s
}

/// The push every recipient of a new message gets, serialised once per message.
pub fn message_push(m: &StoredMessage) -> String {
    let mut s = String::with_capacity(m.body.len() + 184);
    s.push_str("{\"cmd\":\"message\",\"data\":");
    write_message_json(&mut s, m);
    s.push('}');
    s
}

/// The data of a `send` ack: `{"conv_id","duplicate","msg_id","seq","time"}` (the order
/// serde_json's map gave it before it was written by hand).
pub fn ack_json(m: &StoredMessage, duplicate: bool) -> String {
    let mut s = String::with_capacity(m.conv_id.len() + 96);
    s.push_str("{\"conv_id\":");
    push_json_str(&mut s, &m.conv_id);
    s.push_str(if duplicate {
        ",\"duplicate\":true,\"msg_id\":"
    } else {
        ",\"duplicate\":false,\"msg_id\":"
    });
    push_u64(&mut s, m.msg_id);
    s.push_str(",\"seq\":");
    push_u64(&mut s, m.seq);
    s.push_str(",\"time\":");
    push_i64(&mut s, m.created_at);
    s.push('}');
    s
}

/// Appends `n` in decimal: what `write!` gives, without the formatting machinery, which was a
/// tenth of the reactor's time in a flat-out p2p run (several numbers per push and per ack).
/// `itoa` (the digits serde_json writes with) fills a stack buffer two digits at a time.
fn push_u64(s: &mut String, n: u64) {
    s.push_str(itoa::Buffer::new().format(n));
}

fn push_i64(s: &mut String, n: i64) {
    s.push_str(itoa::Buffer::new().format(n));
}

/// Appends `v` as a JSON string, escaped exactly as serde_json escapes (`"`, `\`, and control
/// characters: the short forms where JSON has them, else `\u00xx`; everything else, non-ASCII
/// included, as it is), so stored bodies do not change form. By hand because going through
/// `Value`'s `Display` cost a copy and the formatting machinery for every text message.
pub fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    let mut plain = 0;
    for (at, b) in v.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `at` is an ASCII byte: a char boundary.
        s.push_str(&v[plain..at]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            s.push_str("\\u00");
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            s.push_str(short);
        }
        plain = at + 1;
    }
    s.push_str(&v[plain..]);
    s.push('"');
}

/// `v` as a JSON string (see `push_json_str`).
pub fn json_string(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    push_json_str(&mut s, v);
    s
}

/// Chat types (online_chat's numbering).
pub mod chat_type {
    pub const FRIEND: u8 = 0;
    pub const GROUP: u8 = 1;
    pub const SERVICE: u8 = 2;
    pub const CONSULT: u8 = 3;
}

/// Message types.
pub mod msg_type {
    pub const TEXT: u8 = 0;
    pub const IMAGE: u8 = 1;
    pub const VOICE: u8 = 2;
    pub const VIDEO: u8 = 3;
    pub const RICH_TEXT: u8 = 4;
    pub const FILE: u8 = 5;
    /// A link card: `{"title","description"?,"url","thumb_url"?}`.
    pub const LINK: u8 = 6;
    /// A mini-program page card: `{"title","pagepath","thumb_media_id"?,"thumb_url"?,"appid"?}`.
    pub const MINIPROGRAM_PAGE: u8 = 7;
    /// A recall event (server-generated): `msg` = {"msg_id", "seq"} of the recalled message.
    pub const RECALL: u8 = 100;
    /// A WeChat event in a service conversation (server-generated): `{"event", ...}`.
    pub const EVENT: u8 = 101;
}

/// The conversation between two users, whoever writes first.
pub fn friend_conv(a: u64, b: u64) -> String {
    conv_name("p_", a.min(b), Some(a.max(b)))
}

pub fn group_conv(gid: u64) -> String {
    conv_name("g_", gid, None)
}

/// A customer's service conversation (with whichever agents serve them).
pub fn service_conv(customer: u64) -> String {
    conv_name("s_", customer, None)
}

/// A timed consultation's conversation.
pub fn consult_conv(id: u64) -> String {
    conv_name("c_", id, None)
}

/// `prefix` + `a` (+ `_` + `b`), allocated once at its final size. `format!` here, with the
/// reallocations it made as the string grew, was a seventh of the reactor's time in a flat-out
/// p2p run: every send and every push names its conversation.
fn conv_name(prefix: &str, a: u64, b: Option<u64>) -> String {
    let (mut da, mut db) = (itoa::Buffer::new(), itoa::Buffer::new());
    let a = da.format(a);
    let b = b.map(|b| db.format(b));
    let mut s = String::with_capacity(prefix.len() + a.len() + b.map_or(0, |b| 1 + b.len()));
    s.push_str(prefix);
    s.push_str(a);
    if let Some(b) = b {
        s.push('_');
        s.push_str(b);
    }
    s
}

/// `digits` as a number if it is written the one way the server writes numbers: decimal digits
/// only, no sign, no leading zero (except "0" itself), no overflow. A conversation has exactly
/// one name, so `p_07_9` or `g_+3` must not reach the same conversation as `p_7_9` or `g_3`.
fn canonical_u64(digits: &str) -> Option<u64> {
    let bytes = digits.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    if well_formed {
        digits.parse().ok()
    } else {
        None
    }
}

/// What a conversation id refers to.
#[derive(Debug, PartialEq, Eq)]
pub enum ConvRef {
    Friend(u64, u64),
    Group(u64),
    /// The customer's uid.
    Service(u64),
    /// The consultation's id.
    Consult(u64),
}

pub fn parse_conv(conv_id: &str) -> Option<ConvRef> {
    let (kind, rest) = (conv_id.get(..2)?, conv_id.get(2..)?);
    match kind {
        "p_" => {
            let (a, b) = rest.split_once('_')?;
            let (a, b) = (canonical_u64(a)?, canonical_u64(b)?);
            (a <= b).then_some(ConvRef::Friend(a, b))
        }
        "g_" => canonical_u64(rest).map(ConvRef::Group),
        "s_" => canonical_u64(rest)
            .filter(|&c| c != 0)
            .map(ConvRef::Service),
        "c_" => canonical_u64(rest)
            .filter(|&c| c != 0)
            .map(ConvRef::Consult),
        _ => None,
    }
}

/// Limits applied to message bodies.
pub struct BodyLimits {
    pub max_text_bytes: usize,
}

/// Validates `msg` for `msg_type` and returns the normalised body as JSON text (only known
/// fields survive; rich text is sanitised).
pub fn validate_body(msg_type: u8, msg: &Value, limits: &BodyLimits) -> Result<String, Failure> {
    let bad = |m: &str| Err(Failure(code::BAD_REQUEST, m.to_string()));
    match msg_type {
        msg_type::TEXT => {
            let Some(t) = msg.as_str() else {
                return bad("a text message's \"msg\" is a string");
            };
            if t.trim().is_empty() {
                return bad("empty text");
            }
            if t.len() > limits.max_text_bytes {
                return Err(Failure(
                    code::TOO_LARGE,
                    format!("text over {} bytes", limits.max_text_bytes),
                ));
            }
            Ok(json_string(t))
        }
        msg_type::RICH_TEXT => {
            let Some(t) = msg.as_str() else {
                return bad("a rich-text message's \"msg\" is an HTML string");
            };
            if t.len() > limits.max_text_bytes {
                return Err(Failure(
                    code::TOO_LARGE,
                    format!("rich text over {} bytes", limits.max_text_bytes),
                ));
            }
            let clean = ammonia::clean(t);
            if clean.trim().is_empty() {
                return bad("empty rich text");
            }
            Ok(json_string(&clean))
        }
        msg_type::IMAGE | msg_type::VOICE | msg_type::VIDEO | msg_type::FILE => {
            // online_chat's form: `msg` is the URL itself, and the metadata that only the object
            // form carries (a voice's duration, a file's name and size) is optional.
            let from_url;
            let (obj, plain) = match msg {
                Value::Object(o) => (o, false),
                Value::String(url) => {
                    from_url = Map::from_iter([("url".to_string(), Value::from(url.as_str()))]);
                    (&from_url, true)
                }
                _ => {
                    return bad("a media message's \"msg\" is its URL or an object with a \"url\"")
                }
            };
            let url = match obj.get("url").and_then(Value::as_str) {
                Some(u) if valid_url(u) => u,
                _ => return bad("\"url\" must be an http(s) URL or a /files/ path"),
            };
            let mut out = Map::new();
            out.insert("url".into(), Value::from(url));
            let (required, optional): (&[&str], &[&str]) = match msg_type {
                msg_type::IMAGE => (&[], &["size", "width", "height"]),
                msg_type::VOICE => (&["duration"], &["size"]),
                msg_type::VIDEO => (&[], &["size", "duration", "width", "height"]),
                _ => (&["size"], &[]),
            };
            for name in required.iter().chain(optional) {
                match obj.get(*name) {
                    Some(v) if v.as_u64().is_some() => {
                        out.insert((*name).into(), v.clone());
                    }
                    Some(Value::Null) | None if plain || !required.contains(name) => {}
                    _ => return bad(&format!("\"{name}\" must be a non-negative integer")),
                }
            }
            for name in ["mime", "name", "thumb_url"] {
                match obj.get(name) {
                    Some(Value::String(s)) if s.len() <= 512 => {
                        out.insert(name.into(), Value::from(s.as_str()));
                    }
                    Some(Value::Null) | None => {}
                    _ => return bad(&format!("\"{name}\" must be a string of at most 512 bytes")),
                }
            }
            if msg_type == msg_type::FILE && !plain && !out.contains_key("name") {
                return bad("a file message needs \"name\"");
            }
            Ok(Value::Object(out).to_string())
        }
        msg_type::LINK | msg_type::MINIPROGRAM_PAGE => {
            let Some(obj) = msg.as_object() else {
                return bad("a card's \"msg\" is an object");
            };
            let (required, optional): (&[&str], &[&str]) = if msg_type == msg_type::LINK {
                (&["title", "url"], &["description", "thumb_url"])
            } else {
                (
                    &["title", "pagepath"],
                    &["thumb_media_id", "thumb_url", "appid"],
                )
            };
            let mut out = Map::new();
            for name in required.iter().chain(optional) {
                match obj.get(*name) {
                    Some(Value::String(v)) if !v.is_empty() && v.len() <= 1024 => {
                        let is_url = matches!(*name, "url" | "thumb_url");
                        if is_url && !valid_url(v) {
                            return bad(&format!(
                                "\"{name}\" must be an http(s) URL or a /files/ path"
                            ));
                        }
                        out.insert((*name).into(), Value::from(v.as_str()));
                    }
                    Some(Value::Null) | None if !required.contains(name) => {}
                    _ => {
                        return bad(&format!(
                            "\"{name}\" must be a non-empty string of at most 1024 bytes"
                        ))
                    }
                }
            }
            Ok(Value::Object(out).to_string())
        }
        _ => bad("unknown msg_type"),
    }
}

fn valid_url(u: &str) -> bool {
    u.len() <= 2048
        && (u.starts_with("https://") || u.starts_with("http://") || u.starts_with("/files/"))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored bodies and pushes keep serde_json's form: every ASCII character, alone and
    /// between others, and text beyond ASCII.
    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.extend((0u8..0x80).map(|b| format!("a{}b\u{e9}", char::from(b))));
        cases.extend(
            [
                "",
                "你好, \"世界\"\n",
                "\u{7f}\u{2028}\u{1F600}\\",
                "\u{0}\u{1f}x",
            ]
            .map(String::from),
        );
        for v in &cases {
            assert_eq!(json_string(v), serde_json::to_string(v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for n in [0, -1, 7, -10, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let mut s = String::new();
            push_i64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    const L: BodyLimits = BodyLimits { max_text_bytes: 10 };

    fn stored(conv_id: &str, body: &str) -> StoredMessage {
        StoredMessage {
            msg_id: 9_007_199_254_740_993,
            conv_id: conv_id.into(),
            seq: 42,
            chat_type: 1,
            from_id: 7,
            to_id: u64::MAX,
            msg_type: 3,
            body: body.into(),
            created_at: -5,
        }
    }

    /// The general decoder's reading of a send's fields (what `chat::send_args` does, without
    /// the visitor check), to hold the typed decode to.
    fn general_send(text: &str) -> Option<(Option<Value>, SendArgs)> {
        let c = parse_command(text).ok()?;
        if c.cmd != "send" {
            return None;
        }
        let client_msg_id = client_msg_id_of(c.fields.get("client_msg_id").cloned()).ok()?;
        let args = SendArgs {
            chat_type: c.u64("chat_type").ok()?,
            to_id: c.u64("to_id").ok()?,
            msg_type: c.u64("msg_type").ok()?,
            client_msg_id,
            msg: c.fields.get("msg").cloned().unwrap_or(Value::Null),
        };
        Some((c.req_id, args))
    }

    /// Whenever the typed decode takes a frame, it reads it as the general decoder does; the
    /// frames it leaves (to the general decoder and its error messages) are the odd ones.
    #[test]
    fn the_typed_send_decode_agrees_with_the_general_one() {
        let taken = [
            r#"{"cmd":"send","req_id":1,"chat_type":0,"to_id":2,"msg_type":0,"msg":"hi","client_msg_id":"c-1"}"#,
            r#"{"req_id":"r\"1","chat_type":"1","to_id":"20","msg_type":"3","msg":{"url":"u","w":[1,2]},"cmd":"send"}"#,
            r#"{"cmd":"send","chat_type":2,"to_id":0,"msg_type":0,"msg":"明天见 \u00e9","client_msg_id":12345678901234567890}"#,
            r#"{"cmd":"send","req_id":null,"chat_type":0,"to_id":2,"msg_type":0,"client_msg_id":null,"extra":[1]}"#,
            r#"{"cmd":"send","chat_type":0,"to_id":18446744073709551615,"msg_type":300,"msg":null}"#,
            r#" { "cmd" : "send" , "chat_type" : 0 , "to_id" : 2 , "msg_type" : 0 , "req_id" : 1.5 } "#,
        ];
        for text in taken {
            let fast = parse_send(text);
            assert!(fast.is_some(), "the typed decode takes {text}");
            assert_eq!(fast, general_send(text), "{text}");
        }
        let left = [
            r#"{"cmd":"sync","conv_id":"p_1_2"}"#,
            r#"{"cmd":"s\u0065nd","chat_type":0,"to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","chat_type":0,"chat_type":1,"to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","chat_type":-1,"to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","chat_type":1.0,"to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","chat_type":"0x1","to_id":2,"msg_type":0}"#,
            r#"{"cmd":"send","chat_type":0,"to_id":2,"msg_type":0,"client_msg_id":""}"#,
            r#"{"cmd":"send","chat_type":0,"to_id":2,"msg_type":0,"client_msg_id":true}"#,
            r#"{"cmd":"send","chat_type":0,"to_id":2,"msg_type":0,"req_id":{"a":1}}"#,
            r#"{"cmd":"send","chat_type":0,"to_id":2,"msg_type":0,"msg":"x""#,
            r#"["send"]"#,
        ];
        let long_id = format!(
            r#"{{"cmd":"send","chat_type":0,"to_id":2,"msg_type":0,"client_msg_id":"{}"}}"#,
            "x".repeat(65)
        );
        for text in left.iter().copied().chain([long_id.as_str()]) {
            assert_eq!(
                parse_send(text),
                None,
                "left to the general decoder: {text}"
            );
        }
    }

    /// The hand-written encoders say exactly what serde_json says, escapes included.
    #[test]
    fn hand_written_message_ack_and_reply_json_match_serde_json() {
        for conv in ["p_1_2", "g_\"x\\y\u{1}", "会话_\u{7f}", ""] {
            let m = stored(conv, r#"{"content":"hi \"there\""}"#);
            let expected = json!({
                "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq,
                "chat_type": m.chat_type, "from_id": m.from_id, "to_id": m.to_id,
                "msg_type": m.msg_type, "msg": {"content": "hi \"there\""},
                "time": m.created_at,
            });
            let got: Value = serde_json::from_str(&message_json(&m)).unwrap();
            assert_eq!(got, expected);
            let push: Value = serde_json::from_str(&message_push(&m)).unwrap();
            assert_eq!(push, json!({"cmd": "message", "data": expected}));
            let list: Value =
                serde_json::from_str(&messages_json(&[m.clone(), m.clone()])).unwrap();
            assert_eq!(list, json!([expected, expected]));
            for duplicate in [false, true] {
                let ack = json!({ "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq,
                                  "time": m.created_at, "duplicate": duplicate });
                // Byte for byte what serde_json's map printed, key order included.
                assert_eq!(ack_json(&m, duplicate), ack.to_string());
            }
            let mut s = String::new();
            push_json_str(&mut s, conv);
            assert_eq!(s, Value::from(conv).to_string());
        }
        assert_eq!(messages_json(&[]), "[]");
        for id in [None, Some(json!(7)), Some(json!("r-\"1\""))] {
            let mut expected = json!({"cmd": "se\"nd", "code": 200, "data": {"a": 1}});
            if let Some(id) = &id {
                expected["req_id"] = id.clone();
            }
            let got: Value = serde_json::from_str(&ok_raw("se\"nd", &id, r#"{"a":1}"#)).unwrap();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn commands_parse_and_replies_echo_req_id() {
        let c = parse_command(r#"{"cmd":"send","req_id":7,"to_id":"12"}"#).unwrap();
        assert_eq!(c.cmd, "send");
        assert_eq!(c.u64("to_id").unwrap(), 12);
        assert_eq!(
            ok("send", &c.req_id, &json!({"a":1})),
            r#"{"cmd":"send","req_id":7,"code":200,"data":{"a":1}}"#
        );
        let f: Value = serde_json::from_str(&fail("send", &c.req_id, 403, "no")).unwrap();
        assert_eq!(f, json!({"cmd":"send","req_id":7,"code":403,"msg":"no"}));
        assert!(parse_command("nope").is_err());
        assert!(parse_command("[1]").is_err());
        assert!(parse_command(r#"{"x":1}"#).is_err());
        assert!(parse_command(r#"{"cmd":"a","req_id":{}}"#).is_err());
    }

    #[test]
    fn conversation_ids() {
        assert_eq!(friend_conv(9, 7), "p_7_9");
        assert_eq!(parse_conv("p_7_9"), Some(ConvRef::Friend(7, 9)));
        assert_eq!(parse_conv("p_9_7"), None);
        assert_eq!(parse_conv("p_07_9"), None);
        assert_eq!(parse_conv("g_3"), Some(ConvRef::Group(3)));
        assert_eq!(parse_conv("x"), None);
        assert_eq!(parse_conv("s_12"), Some(ConvRef::Service(12)));
        assert_eq!(parse_conv("c_7"), Some(ConvRef::Consult(7)));
        assert_eq!(parse_conv("c_0"), None);
        assert_eq!(parse_conv("c_07"), None);
        assert_eq!(parse_conv("s_0"), None);
        assert_eq!(parse_conv("s_012"), None);
        // Other spellings of the same numbers name no conversation.
        for odd in [
            "p_7_09",
            "p_+7_9",
            "p_7_+9",
            "p__9",
            "p_7_",
            "p_7",
            "p_7_9_",
            "p_7_9_1",
            "p_7 _9",
            "g_",
            "g_03",
            "g_+3",
            "g_-3",
            "g_3 ",
            "g_0x3",
            "s_",
            "s_+1",
            "c_",
            "c_ 7",
            "P_7_9",
            "g_18446744073709551616",
            "p_1_18446744073709551616",
            "é_1",
            "pé",
            "",
        ] {
            assert_eq!(parse_conv(odd), None, "{odd}");
        }
        assert_eq!(parse_conv("p_0_0"), Some(ConvRef::Friend(0, 0)));
        assert_eq!(parse_conv("g_0"), Some(ConvRef::Group(0)));
        assert_eq!(
            parse_conv("p_1_18446744073709551615"),
            Some(ConvRef::Friend(1, u64::MAX))
        );
    }

    #[test]
    fn conversation_names_are_spelled_as_before_and_parse_back() {
        let edges = [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &a in &edges {
            for &b in &edges {
                let name = friend_conv(a, b);
                assert_eq!(name, format!("p_{}_{}", a.min(b), a.max(b)));
                assert_eq!(name.capacity(), name.len());
                assert_eq!(parse_conv(&name), Some(ConvRef::Friend(a.min(b), a.max(b))));
            }
            assert_eq!(group_conv(a), format!("g_{a}"));
            assert_eq!(parse_conv(&group_conv(a)), Some(ConvRef::Group(a)));
            assert_eq!(service_conv(a), format!("s_{a}"));
            assert_eq!(consult_conv(a), format!("c_{a}"));
            if a != 0 {
                assert_eq!(parse_conv(&service_conv(a)), Some(ConvRef::Service(a)));
                assert_eq!(parse_conv(&consult_conv(a)), Some(ConvRef::Consult(a)));
            }
        }
    }

    #[test]
    fn bodies_are_validated_per_type() {
        assert_eq!(validate_body(0, &json!("hi"), &L).unwrap(), "\"hi\"");
        assert_eq!(
            validate_body(0, &json!("01234567890"), &L).unwrap_err().0,
            413
        );
        assert_eq!(validate_body(0, &json!(" "), &L).unwrap_err().0, 400);
        assert_eq!(validate_body(0, &json!(5), &L).unwrap_err().0, 400);
        let rich = BodyLimits {
            max_text_bytes: 1000,
        };
        let clean = validate_body(4, &json!("<b>x</b><script>alert(1)</script>"), &rich).unwrap();
        assert!(
            clean.contains("<b>x</b>") && !clean.contains("script"),
            "{clean}"
        );
        let img =
            validate_body(1, &json!({"url":"https://a/b.png","width":3,"evil":1}), &L).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&img).unwrap(),
            json!({"url":"https://a/b.png","width":3})
        );
        assert_eq!(
            validate_body(1, &json!({"url":"javascript:x"}), &L)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            validate_body(2, &json!({"url":"/files/x"}), &L)
                .unwrap_err()
                .0,
            400,
            "voice needs duration"
        );
        assert!(validate_body(2, &json!({"url":"/files/x","duration":3}), &L).is_ok());
        assert_eq!(
            validate_body(5, &json!({"url":"/files/x","size":3}), &L)
                .unwrap_err()
                .0,
            400,
            "file needs name"
        );
        assert!(validate_body(5, &json!({"url":"/files/x","size":3,"name":"a.pdf"}), &L).is_ok());
        assert!(validate_body(3, &json!({"url":"http://v/x.mp4"}), &L).is_ok());
        assert_eq!(validate_body(9, &json!("x"), &L).unwrap_err().0, 400);
        let link = validate_body(6, &json!({"title":"t","url":"https://x/y","z":1}), &L).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&link).unwrap(),
            json!({"title":"t","url":"https://x/y"})
        );
        assert_eq!(
            validate_body(6, &json!({"title":"t","url":"ftp://x"}), &L)
                .unwrap_err()
                .0,
            400
        );
        assert!(validate_body(7, &json!({"title":"t","pagepath":"pages/a"}), &L).is_ok());
        assert_eq!(
            validate_body(7, &json!({"title":"t"}), &L).unwrap_err().0,
            400
        );
        assert_eq!(
            validate_body(101, &json!({}), &L).unwrap_err().0,
            400,
            "events are server-made"
        );
    }
}
