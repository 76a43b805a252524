//! Real MySQL and Redis for tests. Each test gets its own database (`wxchat_t_<pid>_<n>_<rand>`)
//! or key prefix and removes it when dropped. Addresses come from `WXCHAT_TEST_MYSQL_URL` (a URL
//! of a user that may create databases; default root on 127.0.0.1:3306) and
//! `WXCHAT_TEST_REDIS_URL` (default 127.0.0.1:6379). A missing service fails the test with a
//! message saying which one and how to start it: `scripts/test` starts installed services.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn mysql_admin_url() -> String {
    std::env::var("WXCHAT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string())
}

pub fn redis_url() -> String {
    std::env::var("WXCHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(kind: &str) -> String {
    let mut r = [0u8; 3];
    getrandom::getrandom(&mut r).expect("random");
    format!(
        "wxchat_t{kind}_{}_{}_{:02x}{:02x}{:02x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        r[0],
        r[1],
        r[2]
    )
}

/// The URL with its database path replaced.
fn with_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => {
            let base = &url[..after_scheme + slash];
            let query = url[after_scheme + slash..]
                .find('?')
                .map_or("", |q| &url[after_scheme + slash + q..]);
            format!("{base}/{db}{query}")
        }
        None => format!("{url}/{db}"),
    }
}

fn admin() -> mysql::Conn {
    let url = mysql_admin_url();
    let opts = mysql::Opts::from_url(&url).expect("WXCHAT_TEST_MYSQL_URL is not a mysql:// URL");
    let opts =
        mysql::OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(Duration::from_secs(5)));
    mysql::Conn::new(opts).unwrap_or_else(|e| {
        panic!(
            "MySQL/MariaDB is needed for this test and is not reachable at {url}: {e}\n\
             Start it (scripts/test does when it is installed) or set WXCHAT_TEST_MYSQL_URL."
        )
    })
}

/// A fresh, empty database, dropped with this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        use mysql::prelude::Queryable;
        let name = unique("");
        let mut conn = admin();
        conn.query_drop(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .expect("create the test database");
        TestDb {
            url: with_database(&mysql_admin_url(), &name),
            name,
        }
    }

    /// `[store]` configuration for a server on this database.
    pub fn store_toml(&self) -> String {
        format!(
            "[store]\nbackend = \"mysql\"\nmysql_url = {:?}\nmysql_timeout_s = 3\n",
            self.url
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        if let Ok(opts) = mysql::Opts::from_url(&mysql_admin_url()) {
            if let Ok(mut c) = mysql::Conn::new(opts) {
                let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
            }
        }
    }
}

/// A key prefix of its own on the test Redis; its keys are deleted with this value.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn create() -> TestRedis {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("WXCHAT_TEST_REDIS_URL");
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!(
                    "Redis is needed for this test and is not reachable at {url}: {e}\n\
                     Start it (scripts/test does when it is installed) or set WXCHAT_TEST_REDIS_URL."
                )
            });
        let _: String = redis::cmd("PING").query(&mut c).expect("redis PING");
        TestRedis {
            url,
            prefix: format!("{}:", unique("")),
        }
    }

    pub fn toml(&self) -> String {
        format!(
            "[redis]\nurl = {:?}\nprefix = {:?}\ntimeout_ms = 1000\n",
            self.url, self.prefix
        )
    }

    /// Keys under this prefix (SCAN).
    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(500)
                .query(&mut c)
                .expect("scan");
            out.extend(keys);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        if let Ok(client) = redis::Client::open(self.url.as_str()) {
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(5)) {
                let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query(&mut c);
            }
        }
    }
}
