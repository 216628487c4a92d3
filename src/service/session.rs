//! `larder.v1.SessionService`: validates each request, turns tokens into their hashes, and
//! makes one store call. Malformed tokens are answered like unknown ones, so a caller learns
//! nothing about which check failed.
//!
//! ListSessions answers a page at a time: at most `page_size` sessions and at most
//! [`SessionSettings::max_list_bytes`], lowered to fit the server's message limit (which
//! follows `cache.max_value`), so that an answer is never refused for its size. The page token
//! is the creation time and session id of the last session listed (base64, opaque to clients),
//! and the next page starts after it in the listing's order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};

use crate::error::{Error, echo};
use crate::pb;
use crate::pb::session_service_server::SessionService;
use crate::service::token::{self, SESSION_ID_LEN};
use crate::service::{at_most, not_empty};
use crate::store::Store;
use crate::store::{DataLimits, NewSession, SessionBounds, SessionRecord, SessionTarget};

/// Session defaults and bounds.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Idle TTL of a session created with `idle_ttl_ms = 0`.
    pub default_idle_ttl: Duration,
    /// Absolute TTL of a session created with `absolute_ttl_ms = 0`.
    pub default_absolute_ttl: Duration,
    /// Longest idle or absolute TTL a request may ask for.
    pub max_ttl: Duration,
    /// Longest user id, in bytes.
    pub max_user_id_bytes: usize,
    /// Longest device description, in bytes.
    pub max_device_info_bytes: usize,
    /// Longest client address, in bytes.
    pub max_ip_bytes: usize,
    /// Longest data key, in bytes.
    pub max_data_key_bytes: usize,
    /// Longest data value, in bytes.
    pub max_data_value_bytes: usize,
    /// Bounds on a session's whole data map.
    pub data: DataLimits,
    /// Most sessions one ListSessions answers with.
    pub max_list: usize,
    /// Most bytes one ListSessions answers with (16 MiB), lowered to fit the server's message
    /// limit when that is smaller.
    pub max_list_bytes: usize,
    /// Most sessions of one user; creating one more revokes the user's oldest.
    pub max_per_user: usize,
    /// Bound on the sessions table on disk (each session charged as `disk_charge` in the
    /// store says); past it CreateSession, and UpdateSession growing a session, answer
    /// `RESOURCE_EXHAUSTED`.
    pub max_disk_bytes: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            default_idle_ttl: Duration::from_secs(30 * 60),
            default_absolute_ttl: Duration::from_secs(30 * 24 * 3600),
            max_ttl: Duration::from_secs(365 * 24 * 3600),
            max_user_id_bytes: 256,
            max_device_info_bytes: 512,
            max_ip_bytes: 64,
            max_data_key_bytes: 256,
            max_data_value_bytes: 64 << 10,
            data: DataLimits {
                max_entries: 128,
                max_bytes: 256 << 10,
            },
            max_list: 1000,
            max_list_bytes: 16 << 20,
            // A person has a few devices; a shared or automated account a few dozen. Past a
            // hundred, sessions of one user are a client creating them in a loop (or an
            // attacker holding the password), and the oldest are the ones nobody uses.
            max_per_user: 100,
            // Sessions are not evictable, so this bound refuses logins when reached: it sits
            // far above what a small site holds (100,000 live sessions of about 1 KiB each
            // charge about 200 MiB) and far below what would fill the disk of a small VPS
            // beside the 4 GiB cache bound.
            max_disk_bytes: 1 << 30,
        }
    }
}

/// The SessionService implementation.
#[derive(Debug, Clone)]
pub(crate) struct SessionApi {
    store: Store,
    settings: SessionSettings,
    /// Most bytes of sessions one ListSessions page holds: `max_list_bytes`, or less to fit
    /// the message limit.
    list_bytes: usize,
}

/// Bytes of a ListSessions answer that are not sessions: its `truncated` flag, its page
/// token and the gRPC frame header, with room to spare.
const LIST_RESPONSE_FRAMING: usize = 1024;

impl SessionApi {
    /// A service over `store` with these defaults and bounds, whose answers must fit in
    /// `max_message_bytes` (the limit the server encodes messages with).
    pub(crate) fn new(store: Store, settings: SessionSettings, max_message_bytes: usize) -> Self {
        let list_bytes = settings
            .max_list_bytes
            .min(max_message_bytes.saturating_sub(LIST_RESPONSE_FRAMING));
        Self {
            store,
            settings,
            list_bytes,
        }
    }

    /// The bounds the store keeps the sessions table within.
    fn bounds(&self) -> SessionBounds {
        SessionBounds {
            max_per_user: self.settings.max_per_user,
            max_disk_bytes: self.settings.max_disk_bytes,
        }
    }

    fn user_id(&self, user_id: &str) -> Result<(), Error> {
        not_empty("user_id", user_id.len())?;
        at_most(
            "user_id",
            user_id.len(),
            self.settings.max_user_id_bytes,
            "bytes",
        )
    }

    /// A TTL from a request, or the default when 0.
    fn ttl(&self, field: &str, ttl_ms: u64, default: Duration) -> Result<u64, Error> {
        let max = self.settings.max_ttl.as_millis() as u64;
        at_most(field, ttl_ms, max, "ms")?;
        Ok(match ttl_ms {
            0 => (default.as_millis() as u64).clamp(1, max.max(1)),
            ttl => ttl,
        })
    }

    /// Checks each entry of a data map (keys in order, so the first bad one is reported the
    /// same way every time) and returns it ordered.
    fn data(
        &self,
        field: &str,
        data: HashMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Error> {
        at_most(field, data.len(), self.settings.data.max_entries, "entries")?;
        let data: BTreeMap<String, String> = data.into_iter().collect();
        let max_key = self.settings.max_data_key_bytes;
        let max_value = self.settings.max_data_value_bytes;
        for (k, v) in &data {
            let entry = || format!("{field}[{}]", echo(k));
            if k.is_empty() {
                return Err(Error::invalid(entry(), "keys must not be empty"));
            }
            if k.len() > max_key {
                return Err(Error::invalid(
                    entry(),
                    format!(
                        "the key is {} bytes, more than the limit of {max_key}",
                        k.len()
                    ),
                ));
            }
            if v.len() > max_value {
                return Err(Error::invalid(
                    entry(),
                    format!(
                        "the value is {} bytes, more than the limit of {max_value}",
                        v.len()
                    ),
                ));
            }
        }
        Ok(data)
    }
}

fn session(record: SessionRecord) -> pb::Session {
    pb::Session {
        idle_expires_at_ms: record.idle_expires_at_ms(),
        session_id: record.session_id,
        user_id: record.user_id,
        data: record
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        device_info: record.device_info,
        ip: record.ip,
        created_at_ms: record.created_at_ms,
        last_seen_at_ms: record.last_seen_at_ms,
        absolute_expires_at_ms: record.absolute_expires_at_ms,
        idle_ttl_ms: record.idle_ttl_ms,
    }
}

/// The token of the page after `last`: its creation time and session id.
fn page_token(last: &SessionRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", last.created_at_ms, last.session_id))
}

/// The cursor a page token stands for; `None` for the empty token (the first page).
fn page_cursor(token: &str) -> Result<Option<(u64, String)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_a_token = || {
        Error::invalid(
            "page_token",
            "is not a next_page_token of ListSessions (leave it empty for the first page)",
        )
    };
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(not_a_token)?;
    let (created, id) = text.split_once('.').ok_or_else(not_a_token)?;
    let created: u64 = created.parse().map_err(|_| not_a_token())?;
    if !token::is_session_id(id) {
        return Err(not_a_token());
    }
    Ok(Some((created, id.to_owned())))
}

fn session_id(field: &str, id: &str) -> Result<(), Error> {
    if !token::is_session_id(id) {
        return Err(Error::invalid(
            field,
            format!(
                "is not a session id ({SESSION_ID_LEN} characters: \"{}\" and url-safe base64)",
                token::SESSION_ID_PREFIX
            ),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let req = req.into_inner();
        self.user_id(&req.user_id)?;
        let data = self.data("data", req.data)?;
        self.settings.data.check("data", &data)?;
        at_most(
            "device_info",
            req.device_info.len(),
            self.settings.max_device_info_bytes,
            "bytes",
        )?;
        at_most("ip", req.ip.len(), self.settings.max_ip_bytes, "bytes")?;
        let idle_ttl_ms = self.ttl(
            "idle_ttl_ms",
            req.idle_ttl_ms,
            self.settings.default_idle_ttl,
        )?;
        let absolute_ttl_ms = self.ttl(
            "absolute_ttl_ms",
            req.absolute_ttl_ms,
            self.settings.default_absolute_ttl,
        )?;
        let (token, token_hash) = token::new_token()?;
        let record = self
            .store
            .create_session(
                NewSession {
                    token_hash,
                    session_id: token::new_session_id()?,
                    user_id: req.user_id,
                    data,
                    device_info: req.device_info,
                    ip: req.ip,
                    idle_ttl_ms,
                    absolute_ttl_ms,
                },
                self.bounds(),
            )
            .await?;
        Ok(Response::new(pb::CreateSessionResponse {
            token,
            session: Some(session(record)),
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let req = req.into_inner();
        let found = match token::token_hash(&req.token) {
            Some(hash) => self.store.get_session(&hash).await?,
            None => None,
        };
        Ok(Response::new(pb::GetSessionResponse {
            found: found.is_some(),
            session: found.map(session),
        }))
    }

    async fn update_session(
        &self,
        req: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        let req = req.into_inner();
        let set = self.data("set", req.set)?;
        at_most(
            "remove",
            req.remove.len(),
            self.settings.data.max_entries,
            "keys",
        )?;
        for (i, key) in req.remove.iter().enumerate() {
            let field = format!("remove[{i}]");
            not_empty(&field, key.len())?;
            at_most(&field, key.len(), self.settings.max_data_key_bytes, "bytes")?;
            if set.contains_key(key) {
                return Err(Error::invalid(
                    field,
                    "is also in set; a key is either set or removed",
                )
                .into());
            }
        }
        let found = match token::token_hash(&req.token) {
            Some(hash) => {
                self.store
                    .update_session(&hash, set, req.remove, self.settings.data, self.bounds())
                    .await?
            }
            None => None,
        };
        Ok(Response::new(pb::UpdateSessionResponse {
            found: found.is_some(),
            session: found.map(session),
        }))
    }

    async fn rotate_session(
        &self,
        req: Request<pb::RotateSessionRequest>,
    ) -> Result<Response<pb::RotateSessionResponse>, Status> {
        let req = req.into_inner();
        let Some(hash) = token::token_hash(&req.token) else {
            return Ok(Response::new(pb::RotateSessionResponse::default()));
        };
        let (token, new_hash) = token::new_token()?;
        Ok(Response::new(
            match self.store.rotate_session(&hash, new_hash).await? {
                Some(record) => pb::RotateSessionResponse {
                    found: true,
                    token,
                    session: Some(session(record)),
                },
                None => pb::RotateSessionResponse::default(),
            },
        ))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        use pb::revoke_session_request::Target;
        let target = match req.into_inner().target {
            None => {
                return Err(Error::invalid("target", "set token or session_id").into());
            }
            Some(Target::Token(t)) => match token::token_hash(&t) {
                Some(hash) => SessionTarget::Token(hash),
                None => return Ok(Response::new(pb::RevokeSessionResponse { revoked: false })),
            },
            Some(Target::SessionId(id)) => {
                session_id("session_id", &id)?;
                SessionTarget::Id(id)
            }
        };
        let revoked = self.store.revoke_session(target).await?;
        Ok(Response::new(pb::RevokeSessionResponse { revoked }))
    }

    async fn revoke_user_sessions(
        &self,
        req: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        let req = req.into_inner();
        self.user_id(&req.user_id)?;
        let except = match req.except_session_id {
            id if id.is_empty() => None,
            id => {
                session_id("except_session_id", &id)?;
                Some(id)
            }
        };
        let revoked = self
            .store
            .revoke_user_sessions(&req.user_id, except)
            .await?;
        Ok(Response::new(pb::RevokeUserSessionsResponse { revoked }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let req = req.into_inner();
        self.user_id(&req.user_id)?;
        let after = page_cursor(&req.page_token)?;
        let page_size = match req.page_size as usize {
            0 => self.settings.max_list,
            n => n.min(self.settings.max_list),
        };
        let list = self
            .store
            .list_sessions(&req.user_id, after, page_size, self.list_bytes)
            .await?;
        let next_page_token = match list.sessions.last() {
            Some(last) if list.truncated => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: list.sessions.into_iter().map(session).collect(),
            truncated: list.truncated,
            next_page_token,
        }))
    }
}
