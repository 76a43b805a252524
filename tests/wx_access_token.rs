//! The access_token service against the fake WeChat API: single flight (20 concurrent callers, or
//! two processes sharing Redis, cause one fetch), caching, and refresh-and-retry-once on 40001.

mod common;
use common::fake_wechat::{FakeWechat, APPID, SECRET};
use common::services::TestRedis;
use std::sync::Arc;
use std::time::Duration;
use wxchat::config::WechatApp;
use wxchat::store::cache::{MemoryCache, SharedCache};
use wxchat::store::redis::RedisKv;
use wxchat::wechat::access_token::AccessTokens;
use wxchat::wechat::api::{Client, WxError};

fn app(fake: &FakeWechat, endpoint: &str) -> WechatApp {
    WechatApp {
        name: "mp".into(),
        kind: "miniprogram".into(),
        appid: APPID.into(),
        secret: SECRET.into(),
        token: String::new(),
        aes_key: String::new(),
        api_base: fake.base(),
        token_endpoint: endpoint.into(),
        require_encryption: false,
    }
}

fn service(cache: Arc<dyn SharedCache>) -> Arc<AccessTokens> {
    Arc::new(AccessTokens::new(
        Arc::new(Client::new(Duration::from_secs(5))),
        cache,
        Duration::from_secs(10),
    ))
}

/// 20 callers at once, spread over `services`; returns the tokens they got.
fn concurrent_gets(services: &[Arc<AccessTokens>], app: &WechatApp) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let svc = services[i % services.len()].clone();
                s.spawn(move || svc.get(app).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn twenty_concurrent_callers_cause_one_fetch() {
    let fake = FakeWechat::start();
    fake.set_delay(Duration::from_millis(200)); // a slow fetch: everyone arrives during it
    let app = app(&fake, "stable");
    let svc = service(Arc::new(MemoryCache::new()));
    let tokens = concurrent_gets(std::slice::from_ref(&svc), &app);
    assert!(tokens.iter().all(|t| t == "TOKEN-1"), "{tokens:?}");
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 1);
    // Cached afterwards.
    assert_eq!(svc.get(&app).unwrap(), "TOKEN-1");
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 1);
}

#[test]
fn two_processes_sharing_redis_fetch_once() {
    let fake = FakeWechat::start();
    fake.set_delay(Duration::from_millis(200));
    let app = app(&fake, "stable");
    let redis = TestRedis::create();
    let kv = |_: u8| -> Arc<dyn SharedCache> {
        Arc::new(
            RedisKv::open(
                &redis.url,
                &redis.prefix,
                Duration::from_secs(2),
                Duration::from_secs(60),
                4,
            )
            .unwrap(),
        )
    };
    let services = [service(kv(1)), service(kv(2))];
    let tokens = concurrent_gets(&services, &app);
    assert!(tokens.iter().all(|t| t == "TOKEN-1"), "{tokens:?}");
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 1);
}

#[test]
fn a_token_error_refreshes_once_and_the_call_succeeds() {
    let fake = FakeWechat::start();
    let app = app(&fake, "stable");
    let svc = service(Arc::new(MemoryCache::new()));
    let client = Client::new(Duration::from_secs(5));
    let check = |t: &str| client.check_token(&app, t);
    svc.call(&app, check).unwrap();
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 1);
    fake.expire_token();
    // 40001 -> the cached token is dropped, a new one fetched, the call retried once.
    svc.call(&app, check).unwrap();
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 2);
    assert_eq!(fake.calls("/cgi-bin/get_api_domain_ip"), 3);
    svc.call(&app, check).unwrap();
    assert_eq!(
        fake.calls("/cgi-bin/stable_token"),
        2,
        "the new token is cached"
    );
    // A call that keeps failing is not retried forever.
    let always = |_: &str| -> Result<(), WxError> {
        Err(WxError::Api {
            errcode: 42001,
            errmsg: "expired".into(),
        })
    };
    assert!(svc.call(&app, always).is_err());
    assert_eq!(
        fake.calls("/cgi-bin/stable_token"),
        3,
        "one refresh, then the error"
    );
}

#[test]
fn the_classic_endpoint_and_a_wrong_secret() {
    let fake = FakeWechat::start();
    let svc = service(Arc::new(MemoryCache::new()));
    assert_eq!(svc.get(&app(&fake, "token")).unwrap(), "TOKEN-1");
    assert_eq!(fake.calls("/cgi-bin/token"), 1);
    let mut bad = app(&fake, "stable");
    bad.appid = "wx-other".into();
    match svc.get(&bad) {
        Err(WxError::Api { errcode: 40125, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn over_http_twenty_concurrent_requests_fetch_once_and_40001_refreshes() {
    use common::chat_client::server_api;
    use serde_json::json;
    let fake = FakeWechat::start();
    fake.set_delay(Duration::from_millis(200));
    let s = common::TestServer::start(&format!(
        "[api]\nkey = \"k\"\n[server]\nworkers = 8\n{}",
        fake.app_toml("mp")
    ));
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                sc.spawn(|| server_api(s.addr, "k", "wx_check", &json!({ "app": "mp" })).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|st| *st == 200), "{statuses:?}");
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 1);
    assert_eq!(fake.calls("/cgi-bin/get_api_domain_ip"), 20);

    fake.set_delay(Duration::ZERO);
    fake.expire_token();
    let r = server_api(s.addr, "k", "wx_check", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 2, "refreshed once");
    let r = server_api(s.addr, "k", "wx_check", &json!({ "app": "nope" }));
    assert_eq!(r.status, 404);
    assert!(!r.text().contains(SECRET));
}
