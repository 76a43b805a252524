//! Issuing a token for a user: one path for doLogin, the server API's `user`, QR-code and demo
//! logins (WeChat mini-program login stores its identity first, then comes here too).

use crate::store::tokens::TokenStore;
use crate::store::{Profile, StoreError, UserStore};
use serde_json::{json, Value};

/// A token just issued: the reply's `data` (`{"uid","token","expires_in","is_new"}`), the user,
/// and whether the login changed their name or avatar (their contacts are then told).
pub struct Issued {
    pub data: Value,
    pub user: crate::store::User,
    pub profile_changed: bool,
}

/// Creates or updates the user with this business id and issues a token (doLogin and the
/// server API's `user`). The name and avatar are set apart from the upsert, so that a change
/// is known and can be pushed.
pub fn issue_token(
    users: &dyn UserStore,
    tokens: &dyn TokenStore,
    app_uid: &str,
    profile: &Profile,
    login: bool,
    ttl_s: u64,
) -> Result<Issued, StoreError> {
    let kind = Profile {
        user_type: profile.user_type,
        ..Profile::default()
    };
    let (mut user, created) = users.upsert_app_user(app_uid, &kind, login)?;
    let mut profile_changed = false;
    if profile.name.is_some() || profile.head_img.is_some() {
        if let Some((after, changed)) = users.update_profile(
            user.uid,
            profile.name.as_deref(),
            profile.head_img.as_deref(),
        )? {
            user = after;
            profile_changed = changed && !created;
        }
    }
    let token = crate::store::tokens::mint(tokens, user.uid, ttl_s)?;
    Ok(Issued {
        data: json!({ "uid": user.uid, "token": token, "expires_in": ttl_s, "is_new": created }),
        user,
        profile_changed,
    })
}

/// The server API's `user` by wxchat uid: sets the name and avatar given and issues a token.
/// NotFound when there is no such user.
pub fn issue_token_for_uid(
    users: &dyn UserStore,
    tokens: &dyn TokenStore,
    uid: u64,
    profile: &Profile,
    ttl_s: u64,
) -> Result<Issued, StoreError> {
    let (user, changed) = users
        .update_profile(uid, profile.name.as_deref(), profile.head_img.as_deref())?
        .ok_or(StoreError::NotFound("user"))?;
    let token = crate::store::tokens::mint(tokens, user.uid, ttl_s)?;
    Ok(Issued {
        data: json!({ "uid": user.uid, "token": token, "expires_in": ttl_s, "is_new": false }),
        user,
        profile_changed: changed,
    })
}

/// `name` and `head_img` as given (None when absent), checked by the shared profile rules.
pub fn profile_of(
    name: Option<&str>,
    head_img: Option<&str>,
    user_type: Option<i64>,
) -> Result<Profile, String> {
    Ok(Profile {
        name: name.map(crate::profile::name).transpose()?,
        head_img: head_img.map(crate::profile::head_img).transpose()?,
        user_type,
    })
}
