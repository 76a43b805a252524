//! What a `User-Agent` says about the device, for online_chat's `is_mobile` flag.

/// Phones, tablets and the WeChat in-app browser (`MicroMessenger`, also on desktop WeChat,
/// whose pages are laid out as mobile ones). A missing agent is not mobile.
pub fn is_mobile(user_agent: Option<&str>) -> bool {
    const MARKERS: &[&str] = &[
        "micromessenger",
        "mobile",
        "android",
        "iphone",
        "ipad",
        "ipod",
        "windows phone",
        "harmonyos",
        "tablet",
        "silk/",
        "kindle",
        "opera mini",
        "blackberry",
    ];
    let Some(ua) = user_agent else {
        return false;
    };
    let ua = ua.to_ascii_lowercase();
    MARKERS.iter().any(|m| ua.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_tablets_and_wechat_are_mobile() {
        for ua in [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0 Safari/537.36 MicroMessenger/7.0.20 NetType/WIFI WindowsWechat",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.40(0x1800282a) NetType/WIFI Language/zh_CN",
        ] {
            assert!(is_mobile(Some(ua)), "{ua}");
        }
        for ua in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
            "curl/8.5.0",
        ] {
            assert!(!is_mobile(Some(ua)), "{ua}");
        }
        assert!(!is_mobile(None));
    }
}
