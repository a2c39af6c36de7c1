//! Talking to a running sidecar's admin listener: `backstop status --admin URL` and
//! `backstop swap --admin URL FILE`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The largest answer read from an admin listener.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// An admin call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The URL is not `http://host:port`.
    #[error("{0:?} is not an admin URL (http://host:port)")]
    Url(String),
    /// No answer.
    #[error("no answer from {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The sidecar said no.
    #[error("{status}: {body}")]
    Refused {
        /// Its status.
        status: u16,
        /// What it said.
        body: String,
    },
}

/// A client of one admin listener.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for `base` (`http://127.0.0.1:4001`), sending `token` on changes.
    pub fn new(base: &str, token: Option<String>) -> Result<AdminClient, AdminError> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(AdminError::Url(base.to_string()));
        }
        Ok(AdminClient {
            base: base.to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// `GET /status`, as JSON.
    pub async fn status(&self) -> Result<serde_json::Value, AdminError> {
        let body = self.call("GET", "/status", Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| AdminError::Refused {
            status: 200,
            body: format!("not JSON: {e}"),
        })
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> Result<String, AdminError> {
        let body = self.call("GET", "/metrics", Bytes::new()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Any call; the answer's body when it succeeded.
    pub async fn call(&self, method: &str, path: &str, body: Bytes) -> Result<Bytes, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| AdminError::Url(url.clone()))?;
        let unreachable = |reason: String| AdminError::Unreachable {
            url: url.clone(),
            reason,
        };
        let response = tokio::time::timeout(Duration::from_secs(120), self.http.request(request))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        let body = limited
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(AdminError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    }
}
