//! One error type for every HTTP failure. Its body is `application/problem+json` (RFC 9457) with
//! the request id; the detail says what the client can fix, never a path, a secret or a stack.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An API failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: a parameter is wrong; the text says which and why.
    BadRequest(String),
    /// 401: no credentials, or ones that are not valid.
    Unauthorized,
    /// 403: valid credentials without the needed scope.
    Forbidden(&'static str),
    /// 403: a request with the session cookie that does not come from the hub's own pages.
    ForeignOrigin,
    /// 404: no such thing (or not visible to this identity).
    NotFound(String),
    /// 406: the client refuses every representation the route has.
    NotAcceptable(String),
    /// 408: the request body did not arrive in time; the connection is closed after it.
    Timeout(String),
    /// 409: the request conflicts with the state of the thing (a device offline).
    Conflict(String),
    /// 413: the request body is larger than the route takes.
    TooLarge(String),
    /// 414: the request target is longer than the API reads.
    UriTooLong(String),
    /// 431: the request's header fields are more or larger than the API reads.
    HeadersTooLarge(String),
    /// 429: too many open things (commands) for now.
    TooMany(String),
    /// 500: the hub failed; the detail goes to the log only.
    Internal,
    /// 503: a dependency is not ready.
    Unavailable(String),
}

// The fields are kept on the response until the request-id layer writes the body, which always
// fills in `request_id`.
/// An error, as RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Not found",
    "status": 404,
    "detail": "no device \"door-9\"",
    "request_id": "5f1c09ab-2a"
}))]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` (the status says it all).
    #[serde(rename = "type")]
    #[schema(value_type = String, format = "uri-reference", example = "about:blank")]
    pub kind: &'static str,
    /// A short summary of the kind.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong in this request, and what the client can fix; absent when there is
    /// nothing more to say than the title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id, also in the `x-request-id` header: quote it when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = true, value_type = String)]
    pub request_id: Option<String>,
    /// Extension members (RFC 9457, 3.2) of some problems: `/readyz` gives the state of each part
    /// it depends on (`"store": "disk_full"`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub members: Option<std::collections::BTreeMap<&'static str, &'static str>>,
}

impl Problem {
    /// A problem for a bare status, used for errors produced outside the handlers.
    pub fn for_status(status: StatusCode) -> Problem {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: None,
            request_id: None,
            members: None,
        }
    }

    /// The response with `request_id` filled in.
    pub fn into_response_with_id(mut self, request_id: &str) -> Response {
        self.request_id = Some(request_id.to_owned());
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl ApiError {
    fn problem(&self) -> (StatusCode, Problem) {
        let (status, title, detail) = match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "Bad request", Some(d.clone())),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                Some("send a valid token as `Authorization: Bearer <token>`".to_owned()),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                Some(format!("this identity lacks the `{scope}` scope")),
            ),
            ApiError::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                Some(
                    "with the session cookie, a write or a stream must come from the hub's own \
                     pages (its `Origin`), and nothing from another site's"
                        .to_owned(),
                ),
            ),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "Not found", Some(d.clone())),
            ApiError::NotAcceptable(d) => (
                StatusCode::NOT_ACCEPTABLE,
                "Not acceptable",
                Some(d.clone()),
            ),
            ApiError::Timeout(d) => (
                StatusCode::REQUEST_TIMEOUT,
                "Request timeout",
                Some(d.clone()),
            ),
            ApiError::Conflict(d) => (StatusCode::CONFLICT, "Conflict", Some(d.clone())),
            ApiError::UriTooLong(d) => (StatusCode::URI_TOO_LONG, "URI too long", Some(d.clone())),
            ApiError::HeadersTooLarge(d) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request header fields too large",
                Some(d.clone()),
            ),
            ApiError::TooLarge(d) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                Some(d.clone()),
            ),
            ApiError::TooMany(d) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                Some(d.clone()),
            ),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", None),
            ApiError::Unavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                Some(d.clone()),
            ),
        };
        let problem = Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            request_id: None,
            members: None,
        };
        (status, problem)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem) = self.problem();
        let mut response = status.into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // The body was not read (whole): the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Open commands close within their timeout; a few seconds is a fair first retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response.extensions_mut().insert(problem);
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        ApiError::Internal
    }
}
