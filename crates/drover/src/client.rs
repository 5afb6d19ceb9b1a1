//! A client for drover's HTTP API, shared by `drover jobs`, `drover estimate` and `drover demo`.
//!
//! Defaults: the server is `http://127.0.0.1:8080` (the embedded configuration's listener),
//! the token comes from the `DROVER_TOKEN` environment variable, connections time out after
//! 10 seconds and ordinary requests after 60; the event stream has no overall timeout (the
//! server sends a keep-alive comment every 15 seconds).
//!
//! The token is held in a type whose `Debug` prints `[redacted]`, sent only in the
//! `Authorization: Bearer` header, and never appears in an error: errors name the route, the
//! status and the API's error code, and for `invalid_request` each violated field by its JSON
//! pointer.

use std::fmt;
use std::time::Duration;

use drover_proto::JobId;
use drover_proto::api::{
    DriverList, ErrorBody, EstimateRequest, EstimateResponse, Job, JobEvent, JobList, Readiness,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

/// The server `--url` defaults to.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The environment variable the token is read from.
pub const TOKEN_ENV: &str = "DROVER_TOKEN";
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of an ordinary (non-streaming) request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `DROVER_TOKEN` is not set.
    #[error("{TOKEN_ENV} is not set: export an API token made with `drover token new`")]
    MissingToken,
    /// `DROVER_TOKEN` cannot be sent in a header.
    #[error("{TOKEN_ENV} is not a valid token (it must be visible ASCII)")]
    BadToken,
    /// `--url` is not an http(s) URL.
    #[error("--url {url:?} is not an http:// or https:// URL")]
    BadUrl {
        /// What was given.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
    /// The server could not be reached, or the connection broke.
    #[error("{method} {path}: no answer from {base}")]
    Transport {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The server.
        base: String,
        /// What happened.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error body.
    #[error("{method} {path}: {}", describe(*status, body))]
    Api {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// The error body (its `error` code, `message` and `violations`).
        body: Box<ErrorBody>,
    },
    /// The server answered with something that is not the expected body.
    #[error("{method} {path}: HTTP {status}, and the body is not {what}")]
    Unexpected {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// What was expected.
        what: &'static str,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}

fn describe(status: StatusCode, body: &ErrorBody) -> String {
    let mut text = format!("HTTP {} {}", status.as_u16(), body.error.as_str());
    if let Some(message) = &body.message {
        text.push_str(": ");
        text.push_str(message);
    }
    for violation in &body.violations {
        let field =
            if violation.instance_path.is_empty() { "(body)" } else { &violation.instance_path };
        text.push_str(&format!("; field {field}: {}", violation.message));
    }
    text.push_str(&format!(" (request {})", body.request_id));
    text
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn api_code(&self) -> Option<drover_proto::api::ApiErrorCode> {
        match self {
            Self::Api { body, .. } => Some(body.error),
            _ => None,
        }
    }
}

/// An API token, redacted from `Debug`.
#[derive(Clone)]
pub struct Token(HeaderValue);

impl Token {
    /// Wraps a token; refuses one that cannot be a header value.
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ClientError::BadToken)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The token from `DROVER_TOKEN`.
    pub fn from_env() -> Result<Self, ClientError> {
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.trim().is_empty() => Self::new(&token),
            Ok(_) | Err(std::env::VarError::NotPresent) => Err(ClientError::MissingToken),
            Err(std::env::VarError::NotUnicode(_)) => Err(ClientError::BadToken),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// A client for one server with one token.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: Url,
    token: Token,
    http: reqwest::Client,
}

/// A response body and its status.
#[derive(Debug)]
pub struct Answer<T> {
    /// The HTTP status.
    pub status: StatusCode,
    /// The parsed body.
    pub body: T,
    /// The body as it arrived, for `--json`.
    pub raw: serde_json::Value,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with `token`.
    pub fn new(base: &str, token: Token) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl { url: base.to_owned() };
        let mut url = Url::parse(base).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(bad());
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        // The one TLS provider (see the workspace manifest); a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self { base: url, token, http })
    }

    /// The server's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|_| ClientError::BadUrl { url: format!("{}{path}", self.base) })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request =
            self.http.request(method.clone(), self.url(path)?).header(AUTHORIZATION, &self.token.0);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        request.send().await.map_err(|source| ClientError::Transport {
            method,
            path: path.to_owned(),
            base: self.base.to_string(),
            source,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
        what: &'static str,
    ) -> Result<Answer<T>, ClientError> {
        let response =
            self.send(method.clone(), path, body, headers, Some(REQUEST_TIMEOUT)).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| ClientError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            base: self.base.to_string(),
            source,
        })?;
        let unexpected = |what, source| ClientError::Unexpected {
            method: method.clone(),
            path: path.to_owned(),
            status,
            what,
            source,
        };
        let readiness_answer = status == StatusCode::SERVICE_UNAVAILABLE && what == "readiness";
        if !(status.is_success() || readiness_answer) {
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|e| unexpected("an error body", e))?;
            return Err(ClientError::Api {
                method: method.clone(),
                path: path.to_owned(),
                status,
                body: Box::new(body),
            });
        }
        let raw: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| unexpected(what, e))?;
        let body = serde_json::from_value(raw.clone()).map_err(|e| unexpected(what, e))?;
        Ok(Answer { status, body, raw })
    }

    /// `POST /v1/jobs` with `body` (a job spec as JSON text), optionally idempotent.
    pub async fn submit(
        &self,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<Job>, ClientError> {
        let headers: Vec<(&'static str, String)> =
            idempotency_key.map(|k| ("idempotency-key", k.to_owned())).into_iter().collect();
        self.call(Method::POST, "/v1/jobs", Some(body), &headers, "a job").await
    }

    /// `GET /v1/jobs?...` with `query` already encoded (without `?`).
    pub async fn list(&self, query: &str) -> Result<Answer<JobList>, ClientError> {
        let path =
            if query.is_empty() { "/v1/jobs".to_owned() } else { format!("/v1/jobs?{query}") };
        self.call(Method::GET, &path, None, &[], "a job list").await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &JobId) -> Result<Answer<Job>, ClientError> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None, &[], "a job").await
    }

    /// `DELETE /v1/jobs/{id}`.
    pub async fn cancel(&self, id: &JobId) -> Result<Answer<Job>, ClientError> {
        self.call(Method::DELETE, &format!("/v1/jobs/{id}"), None, &[], "a job").await
    }

    /// `POST /v1/estimates`.
    pub async fn estimate(
        &self,
        request: &EstimateRequest,
    ) -> Result<Answer<EstimateResponse>, ClientError> {
        let body = serde_json::to_vec(request).map_err(|source| ClientError::Unexpected {
            method: Method::POST,
            path: "/v1/estimates".to_owned(),
            status: StatusCode::OK,
            what: "an estimate request",
            source,
        })?;
        self.call(Method::POST, "/v1/estimates", Some(body), &[], "an estimate").await
    }

    /// `GET /v1/drivers`.
    pub async fn drivers(&self) -> Result<Answer<DriverList>, ClientError> {
        self.call(Method::GET, "/v1/drivers", None, &[], "a driver list").await
    }

    /// `GET /readyz` (a 503 with a readiness body is an answer, not an error).
    pub async fn readiness(&self) -> Result<Answer<Readiness>, ClientError> {
        self.call(Method::GET, "/readyz", None, &[], "readiness").await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let path = "/metrics";
        let response = self.send(Method::GET, path, None, &[], Some(REQUEST_TIMEOUT)).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| ClientError::Transport {
            method: Method::GET,
            path: path.to_owned(),
            base: self.base.to_string(),
            source,
        })?;
        if !status.is_success() {
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|source| ClientError::Unexpected {
                    method: Method::GET,
                    path: path.to_owned(),
                    status,
                    what: "an error body",
                    source,
                })?;
            return Err(ClientError::Api {
                method: Method::GET,
                path: path.to_owned(),
                status,
                body: Box::new(body),
            });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /v1/jobs/{id}/events`, resuming after event `after` (0: from the start).
    pub async fn events(&self, id: &JobId, after: u64) -> Result<EventStream, ClientError> {
        let path = format!("/v1/jobs/{id}/events");
        let headers: Vec<(&'static str, String)> =
            if after > 0 { vec![("last-event-id", after.to_string())] } else { Vec::new() };
        let response = self.send(Method::GET, &path, None, &headers, None).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|source| ClientError::Unexpected {
                    method: Method::GET,
                    path: path.clone(),
                    status,
                    what: "an error body",
                    source,
                })?;
            return Err(ClientError::Api {
                method: Method::GET,
                path,
                status,
                body: Box::new(body),
            });
        }
        Ok(EventStream {
            response,
            buffer: Vec::new(),
            data: String::new(),
            path,
            base: self.base.to_string(),
        })
    }
}

/// A job's server-sent events, parsed.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    data: String,
    path: String,
    base: String,
}

impl EventStream {
    /// The next event; `None` once the server ended the stream (after the job's terminal
    /// state).
    pub async fn next(&mut self) -> Result<Option<JobEvent>, ClientError> {
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if self.data.is_empty() {
                        continue;
                    }
                    let data = std::mem::take(&mut self.data);
                    let event =
                        serde_json::from_str(&data).map_err(|source| ClientError::Unexpected {
                            method: Method::GET,
                            path: self.path.clone(),
                            status: StatusCode::OK,
                            what: "a job event",
                            source,
                        })?;
                    return Ok(Some(event));
                }
                if let Some(rest) = line.strip_prefix("data:") {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
                }
                // `id:`, `event:` and `:` comments: the data carries seq and type already.
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(ClientError::Transport {
                        method: Method::GET,
                        path: self.path.clone(),
                        base: self.base.clone(),
                        source,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug() {
        let client = ApiClient::new(DEFAULT_URL, Token::new("drover_secret").unwrap()).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("drover_secret"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn urls_must_be_http() {
        let token = || Token::new("t").unwrap();
        assert!(matches!(ApiClient::new("ftp://x", token()), Err(ClientError::BadUrl { .. })));
        assert!(matches!(ApiClient::new("not a url", token()), Err(ClientError::BadUrl { .. })));
        let client = ApiClient::new("http://h:1/prefix", token()).unwrap();
        assert_eq!(client.url("/v1/jobs").unwrap().as_str(), "http://h:1/prefix/v1/jobs");
    }

    #[test]
    fn api_errors_name_the_field() {
        let body = ErrorBody {
            error: drover_proto::api::ApiErrorCode::InvalidRequest,
            request_id: "req-1".to_owned(),
            message: None,
            violations: vec![drover_proto::Violation {
                instance_path: "/max_runtime_s".to_owned(),
                schema_path: "/properties/max_runtime_s/minimum".to_owned(),
                message: "value is less than the minimum of 1".to_owned(),
            }],
            detail: None,
        };
        let error = ClientError::Api {
            method: Method::POST,
            path: "/v1/jobs".to_owned(),
            status: StatusCode::BAD_REQUEST,
            body: Box::new(body),
        };
        let text = error.to_string();
        assert!(text.contains("field /max_runtime_s: value is less than"), "{text}");
        assert!(text.contains("HTTP 400 invalid_request"), "{text}");
    }
}
