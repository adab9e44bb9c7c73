//! The admin API's error type and its one mapping to HTTP:
//! `{"error":{"code":"<machine_code>","message":"<human text>"}}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::server::Body;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Allow` for a 405.
    pub allow: Option<HeaderValue>,
    /// The `Retry-After` header (seconds) of a 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// Adds the `Allow` header a 405 answer carries.
    pub fn with_allow(mut self, allow: HeaderValue) -> ApiError {
        self.allow = Some(allow);
        self
    }

    pub fn unauthorized() -> ApiError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn not_found(what: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn method_not_allowed() -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this resource",
        )
    }

    pub fn invalid_json(detail: impl std::fmt::Display) -> ApiError {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body is not valid JSON for this call: {detail}"),
        )
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn bad_query(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "admin: internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// The status and the `error` object, apart: a batch item's answer
    /// carries the object beside its own status.
    pub fn into_parts(self) -> (StatusCode, ErrorBody) {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
        };
        (self.status, body)
    }

    pub fn into_response(self) -> Response<Body> {
        let (allow, retry_after) = (self.allow.clone(), self.retry_after);
        let (status, error) = self.into_parts();
        let mut resp = json_response(status, &ErrorAnswer { error });
        if let Some(allow) = allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Every admin error answer: `{"error":{"code","message"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
}

/// The `error` object of every admin error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A machine code (`[a-z_]+`), stable across releases.
    #[schema(value_type = String, pattern = "^[a-z_]+$", example = "not_found")]
    pub code: &'static str,
    /// Human text; may change.
    pub message: String,
}

pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON values serialise");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
