//! The replies every handler shares: the JSON envelope of the HTTP API, a deferred request's
//! answer, and a WebSocket message decoded as a command (or answered as not one).

use crate::http::Response;
use crate::net::{ConnId, Ctx, Message, Reply};
use crate::proto::code;
use crate::proto::Failure;
use serde_json::{json, Value};

/// HTTP 401 in the shape mini-program front ends expect from a WeChat-style backend.
pub fn not_logged_in() -> Response {
    Response::json(
        401,
        &json!({ "errcode": 40001, "errmsg": "user not logged in" }),
    )
}

/// The reply of a request handed to a worker: answered later, or 503 when the queue was full.
pub fn later_or_busy(submitted: bool) -> Reply {
    if submitted {
        Reply::Later
    } else {
        Reply::Now(api_error(code::UNAVAILABLE, "server busy, retry"))
    }
}

/// A WebSocket message as a command; anything else is answered with `cmd` `error` (400) and
/// None (the connection lives on).
pub fn command_of<C>(
    ctx: &mut dyn Ctx<C>,
    conn: ConnId,
    message: Message<'_>,
) -> Option<crate::proto::Command> {
    decode_with(ctx, conn, message, crate::proto::parse_command)
}

/// As [`command_of`], with the chat endpoint's decoder (which also reads online_chat's frames).
pub fn chat_command_of<C>(
    ctx: &mut dyn Ctx<C>,
    conn: ConnId,
    message: Message<'_>,
) -> Option<crate::proto::Command> {
    decode_with(ctx, conn, message, crate::proto::parse_chat_command)
}

fn decode_with<C>(
    ctx: &mut dyn Ctx<C>,
    conn: ConnId,
    message: Message<'_>,
    parse: fn(&str) -> Result<crate::proto::Command, &'static str>,
) -> Option<crate::proto::Command> {
    let Message::Text(text) = message else {
        ctx.send_text(
            conn,
            &crate::proto::fail(
                "error",
                &None,
                code::BAD_REQUEST,
                "commands are JSON text frames",
            ),
        );
        return None;
    };
    match parse(text) {
        Ok(c) => Some(c),
        Err(why) => {
            ctx.send_text(
                conn,
                &crate::proto::fail("error", &None, code::BAD_REQUEST, why),
            );
            None
        }
    }
}

/// `{"code":c,"msg":m}` with HTTP status c.
pub fn api_error(c: u16, msg: &str) -> Response {
    Response::json(c, &json!({ "code": c, "msg": msg }))
}

/// `{"code":200,"msg":"ok","data":data}`.
pub fn api_ok(data: Value) -> Response {
    Response::json(200, &json!({ "code": 200, "msg": "ok", "data": data }))
}

/// A JSON body's field as a user id (a number, or a string of digits).
pub fn field_u64(body: &Value, name: &str) -> Result<u64, Failure> {
    body.get(name)
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| Failure::bad_request(format!("missing or bad \"{name}\"")))
}

pub fn field_list(body: &Value, name: &str) -> Result<Vec<u64>, Failure> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| Failure::bad_request(format!("\"{name}\" must list user ids")))
            })
            .collect(),
        _ => Err(Failure::bad_request(format!("\"{name}\" must be an array"))),
    }
}
