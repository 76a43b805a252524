//! The WeChat API client. Blocking (ureq with rustls), so it runs on worker threads only. Every
//! reply is WeChat's JSON: a non-zero `errcode` becomes [`WxError::Api`], anything that is not a
//! WeChat answer (connection refused, timeout, an HTML error page) becomes
//! [`WxError::Unreachable`]. App secrets go into request URLs/bodies only, never into errors.

use crate::config::WechatApp;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Largest WeChat reply read.
const MAX_REPLY: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WxError {
    /// WeChat answered with an error code.
    Api { errcode: i64, errmsg: String },
    /// No usable answer: the network, a timeout, or a reply that is not WeChat's JSON.
    Unreachable(String),
    /// The shared cache (access_token slot, refresh lock) failed.
    Cache(String),
}

impl fmt::Display for WxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WxError::Api { errcode, errmsg } => write!(f, "WeChat error {errcode}: {errmsg}"),
            WxError::Unreachable(why) => write!(f, "WeChat API unreachable: {why}"),
            WxError::Cache(why) => write!(f, "access_token cache unavailable: {why}"),
        }
    }
}

impl std::error::Error for WxError {}

/// What `jscode2session` returns. `session_key` must never leave the server.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct CodeSession {
    pub openid: String,
    pub session_key: String,
    #[serde(default)]
    pub unionid: Option<String>,
}

/// Debug without the session key.
impl fmt::Debug for CodeSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeSession")
            .field("openid", &self.openid)
            .field("unionid", &self.unionid)
            .finish_non_exhaustive()
    }
}

/// An access_token as WeChat issues it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct FreshToken {
    pub access_token: String,
    pub expires_in: u64,
}

pub struct Client {
    agent: ureq::Agent,
    observer: Option<Observer>,
}

/// The WeChat APIs wxchat calls (the order of `feed::metrics::WECHAT_APIS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    CodeToSession,
    AccessToken,
    CheckToken,
    QrcodeCreate,
    UserInfo,
    CustomSend,
    CustomTyping,
    MediaUpload,
}

impl Api {
    pub fn name(self) -> &'static str {
        crate::feed::metrics::WECHAT_APIS[self as usize]
    }
}

/// What one API call did (for metrics and the `wechat` info topic).
pub struct ApiCall<'a> {
    pub api: Api,
    pub app: &'a WechatApp,
    pub took: Duration,
    pub error: Option<&'a WxError>,
}

/// Told about every call, on the worker thread that made it.
pub type Observer = Box<dyn Fn(&ApiCall<'_>) + Send + Sync>;

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // WeChat reports errors in the JSON body; HTTP errors are read like any reply.
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            agent,
            observer: None,
        }
    }

    /// Reports every call to `observer`.
    pub fn observed_by(mut self, observer: Observer) -> Client {
        self.observer = Some(observer);
        self
    }

    fn observe<T>(
        &self,
        api: Api,
        app: &WechatApp,
        call: impl FnOnce() -> Result<T, WxError>,
    ) -> Result<T, WxError> {
        let started = std::time::Instant::now();
        let result = call();
        if let Some(observer) = &self.observer {
            observer(&ApiCall {
                api,
                app,
                took: started.elapsed(),
                error: result.as_ref().err(),
            });
        }
        result
    }

    /// Parses a WeChat reply: an error when `errcode` is non-zero, else `T`.
    fn parse<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, WxError> {
        let fields: ErrorFields = serde_json::from_str(body)
            .map_err(|_| WxError::Unreachable("the reply is not WeChat JSON".into()))?;
        if fields.errcode != 0 {
            return Err(WxError::Api {
                errcode: fields.errcode,
                errmsg: fields.errmsg,
            });
        }
        serde_json::from_str(body)
            .map_err(|e| WxError::Unreachable(format!("unexpected WeChat reply: {e}")))
    }

    fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<String, WxError> {
        let mut req = self.agent.get(url);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().map_err(|e| WxError::Unreachable(describe(&e)))?;
        resp.body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_string()
            .map_err(|e| WxError::Unreachable(describe(&e)))
    }

    /// `sns/jscode2session`: a `wx.login` code for the user's openid and session key. Not
    /// retried: a code is single-use.
    fn code_to_session_call(&self, app: &WechatApp, code: &str) -> Result<CodeSession, WxError> {
        let url = format!("{}/sns/jscode2session", app.api_base.trim_end_matches('/'));
        let body = self.get(
            &url,
            &[
                ("appid", &app.appid),
                ("secret", &app.secret),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ],
        )?;
        Self::parse(&body)
    }
}

impl Client {
    /// A new access_token: `cgi-bin/stable_token` (not invalidated by other fetches), or
    /// `cgi-bin/token` when the app is configured with `token_endpoint = "token"`. A `-1`
    /// (system busy) is retried once, as WeChat documents.
    fn access_token_call(&self, app: &WechatApp) -> Result<FreshToken, WxError> {
        let base = app.api_base.trim_end_matches('/');
        let fetch = || -> Result<FreshToken, WxError> {
            let body = if app.token_endpoint == "token" {
                self.get(
                    &format!("{base}/cgi-bin/token"),
                    &[
                        ("grant_type", "client_credential"),
                        ("appid", &app.appid),
                        ("secret", &app.secret),
                    ],
                )?
            } else {
                let payload = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": app.appid,
                    "secret": app.secret,
                    "force_refresh": false,
                });
                self.post_json(&format!("{base}/cgi-bin/stable_token"), &[], &payload)?
            };
            Self::parse(&body)
        };
        match fetch() {
            Err(WxError::Api { errcode: -1, .. }) => {
                std::thread::sleep(Duration::from_millis(200));
                fetch()
            }
            other => other,
        }
    }

    /// POSTs a JSON body (query parameters such as `access_token` in `query`).
    pub fn post_json(
        &self,
        url: &str,
        query: &[(&str, &str)],
        payload: &serde_json::Value,
    ) -> Result<String, WxError> {
        let mut req = self.agent.post(url);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req
            .header("Content-Type", "application/json")
            .send(payload.to_string())
            .map_err(|e| WxError::Unreachable(describe(&e)))?;
        resp.body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_string()
            .map_err(|e| WxError::Unreachable(describe(&e)))
    }

    /// A call that needs nothing but the token and returns only `errcode` (tests, health checks):
    /// `cgi-bin/get_api_domain_ip`.
    fn check_token_call(&self, app: &WechatApp, token: &str) -> Result<(), WxError> {
        let base = app.api_base.trim_end_matches('/');
        let body = self.get(
            &format!("{base}/cgi-bin/get_api_domain_ip"),
            &[("access_token", token)],
        )?;
        Self::parse::<serde_json::Value>(&body).map(|_| ())
    }
}

/// What `cgi-bin/qrcode/create` returns.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct QrCode {
    pub ticket: String,
    #[serde(default)]
    pub expire_seconds: u64,
    #[serde(default)]
    pub url: String,
}

/// The fields of `cgi-bin/user/info` wxchat uses (WeChat stopped returning nickname and avatar
/// in 2021).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    #[serde(default)]
    pub subscribe: i64,
    #[serde(default)]
    pub unionid: Option<String>,
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub headimgurl: Option<String>,
}

#[derive(Deserialize)]
struct MediaId {
    media_id: String,
}

impl Client {
    fn base(app: &WechatApp) -> &str {
        app.api_base.trim_end_matches('/')
    }

    /// `cgi-bin/qrcode/create`: a temporary `QR_STR_SCENE` code for `scene`.
    fn qrcode_create_call(
        &self,
        app: &WechatApp,
        token: &str,
        scene: &str,
        expire_seconds: u64,
    ) -> Result<QrCode, WxError> {
        let payload = serde_json::json!({
            "expire_seconds": expire_seconds,
            "action_name": "QR_STR_SCENE",
            "action_info": { "scene": { "scene_str": scene } },
        });
        let url = format!("{}/cgi-bin/qrcode/create", Self::base(app));
        Self::parse(&self.post_json(&url, &[("access_token", token)], &payload)?)
    }

    /// `cgi-bin/user/info` of a follower of an official account.
    fn user_info_call(
        &self,
        app: &WechatApp,
        token: &str,
        openid: &str,
    ) -> Result<UserInfo, WxError> {
        let url = format!("{}/cgi-bin/user/info", Self::base(app));
        Self::parse(&self.get(
            &url,
            &[
                ("access_token", token),
                ("openid", openid),
                ("lang", "zh_CN"),
            ],
        )?)
    }

    /// `cgi-bin/message/custom/send` with a ready payload (`touser`, `msgtype`, ...).
    fn custom_send_call(
        &self,
        app: &WechatApp,
        token: &str,
        payload: &serde_json::Value,
    ) -> Result<(), WxError> {
        let url = format!("{}/cgi-bin/message/custom/send", Self::base(app));
        Self::parse::<serde_json::Value>(&self.post_json(
            &url,
            &[("access_token", token)],
            payload,
        )?)
        .map(|_| ())
    }

    /// `cgi-bin/message/custom/typing`: `Typing` or `CancelTyping`.
    fn custom_typing_call(
        &self,
        app: &WechatApp,
        token: &str,
        openid: &str,
        typing: bool,
    ) -> Result<(), WxError> {
        let payload = serde_json::json!({
            "touser": openid,
            "command": if typing { "Typing" } else { "CancelTyping" },
        });
        let url = format!("{}/cgi-bin/message/custom/typing", Self::base(app));
        Self::parse::<serde_json::Value>(&self.post_json(
            &url,
            &[("access_token", token)],
            &payload,
        )?)
        .map(|_| ())
    }

    /// `cgi-bin/media/upload?type=<kind>`: a temporary media id (3 days) for `data`, sent as
    /// the multipart field `media`.
    fn media_upload_call(
        &self,
        app: &WechatApp,
        token: &str,
        kind: &str,
        file_name: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<String, WxError> {
        let mut boundary = [0u8; 12];
        getrandom::getrandom(&mut boundary).map_err(|e| WxError::Unreachable(e.to_string()))?;
        let boundary: String = boundary.iter().map(|b| format!("{b:02x}")).collect();
        let boundary = format!("wxchat{boundary}");
        let mut body = Vec::with_capacity(data.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/cgi-bin/media/upload", Self::base(app));
        let mut resp = self
            .agent
            .post(&url)
            .query("access_token", token)
            .query("type", kind)
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..])
            .map_err(|e| WxError::Unreachable(describe(&e)))?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_string()
            .map_err(|e| WxError::Unreachable(describe(&e)))?;
        Self::parse::<MediaId>(&text).map(|m| m.media_id)
    }
}

/// The public calls: each is observed (metrics, `wechat` topic), then made by its `_call`.
impl Client {
    /// `sns/jscode2session`: a `wx.login` code for the user's openid and session key. Not
    /// retried: a code is single-use.
    pub fn code_to_session(&self, app: &WechatApp, code: &str) -> Result<CodeSession, WxError> {
        self.observe(Api::CodeToSession, app, || {
            self.code_to_session_call(app, code)
        })
    }

    /// A new access_token (see `access_token_call`).
    pub fn access_token(&self, app: &WechatApp) -> Result<FreshToken, WxError> {
        self.observe(Api::AccessToken, app, || self.access_token_call(app))
    }

    /// `cgi-bin/get_api_domain_ip`: checks a token.
    pub fn check_token(&self, app: &WechatApp, token: &str) -> Result<(), WxError> {
        self.observe(Api::CheckToken, app, || self.check_token_call(app, token))
    }

    /// `cgi-bin/qrcode/create`: a temporary `QR_STR_SCENE` code for `scene`.
    pub fn qrcode_create(
        &self,
        app: &WechatApp,
        token: &str,
        scene: &str,
        expire_seconds: u64,
    ) -> Result<QrCode, WxError> {
        self.observe(Api::QrcodeCreate, app, || {
            self.qrcode_create_call(app, token, scene, expire_seconds)
        })
    }

    /// `cgi-bin/user/info` of a follower of an official account.
    pub fn user_info(
        &self,
        app: &WechatApp,
        token: &str,
        openid: &str,
    ) -> Result<UserInfo, WxError> {
        self.observe(Api::UserInfo, app, || {
            self.user_info_call(app, token, openid)
        })
    }

    /// `cgi-bin/message/custom/send` with a ready payload.
    pub fn custom_send(
        &self,
        app: &WechatApp,
        token: &str,
        payload: &serde_json::Value,
    ) -> Result<(), WxError> {
        self.observe(Api::CustomSend, app, || {
            self.custom_send_call(app, token, payload)
        })
    }

    /// `cgi-bin/message/custom/typing`.
    pub fn custom_typing(
        &self,
        app: &WechatApp,
        token: &str,
        openid: &str,
        typing: bool,
    ) -> Result<(), WxError> {
        self.observe(Api::CustomTyping, app, || {
            self.custom_typing_call(app, token, openid, typing)
        })
    }

    /// `cgi-bin/media/upload?type=<kind>`: a temporary media id.
    pub fn media_upload(
        &self,
        app: &WechatApp,
        token: &str,
        kind: &str,
        file_name: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<String, WxError> {
        self.observe(Api::MediaUpload, app, || {
            self.media_upload_call(app, token, kind, file_name, content_type, data)
        })
    }
}

/// An error message without the request URL (it carries the app secret).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BodyExceedsLimit(_) => "reply too large".into(),
        other => {
            // Other variants do not carry the URL, but be safe: cut anything after '?'.
            let s = other.to_string();
            s.split('?').next().unwrap_or("").to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_values_or_typed_errors() {
        let ok: CodeSession = Client::parse(r#"{"openid":"o1","session_key":"k=="}"#).unwrap();
        assert_eq!((ok.openid.as_str(), ok.unionid.as_deref()), ("o1", None));
        assert!(
            !format!("{ok:?}").contains("k=="),
            "Debug hides the session key"
        );
        let e = Client::parse::<CodeSession>(r#"{"errcode":40029,"errmsg":"invalid code"}"#);
        assert_eq!(
            e,
            Err(WxError::Api {
                errcode: 40029,
                errmsg: "invalid code".into()
            })
        );
        assert!(matches!(
            Client::parse::<CodeSession>("<html>502</html>"),
            Err(WxError::Unreachable(_))
        ));
        assert!(matches!(
            Client::parse::<CodeSession>(r#"{"errcode":0}"#),
            Err(WxError::Unreachable(_))
        ));
    }
}
