//! The OpenAPI 3.1 description of the API, generated from the code that registers the routes, and
//! served at `GET /api/v1/openapi.json`.
//!
//! Handlers carry `#[utoipa::path(...)]` and are registered with `utoipa_axum::routes!` on an
//! [`OpenApiRouter`], which adds the route and its description in one step: a route cannot be
//! served without being described, nor described without being served. What many routes share
//! is added here, by the code that makes it true, instead of being repeated (and forgotten) in
//! each annotation:
//!
//! - [`authenticated`] puts the `authenticate` layer on a group of routes *and* marks each of
//!   them as needing the bearer token, with its 401 answer;
//! - [`finish`] gives every answer the `x-request-id` header and every error status the
//!   `application/problem+json` body, which the `request_id` layer guarantees for all routes,
//!   and bounds each `limit` parameter by the configured `api.max_page`.

use axum::Extension;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{Object, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};
use utoipa::{Number, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;

use super::ApiState;
use super::error::{ApiError, Problem};

/// The name of the bearer security scheme in the description.
const BEARER: &str = "bearer";

/// The parts of the description that belong to no route.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hub API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The edge hub's HTTPS API: devices, their latest values and readings, commands, a live stream, and upstream sync.\n\n\
            Every route needs `Authorization: Bearer <token>` except `/healthz`. Every answer has \
            an `x-request-id` header; every error is `application/problem+json` (RFC 9457) with \
            that id as `request_id`. Timestamps are RFC 3339 in UTC with milliseconds.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "devices", description = "The device registry and latest values."),
        (name = "readings", description = "Stored readings: raw, downsampled, exported."),
        (name = "commands", description = "Commands for devices and their results."),
        (name = "stream", description = "Live readings and events over a WebSocket."),
        (name = "tokens", description = "Bearer tokens: make, list, revoke (admin scope)."),
        (name = "device-credentials", description = "Devices' MQTT passwords: make, list, rotate, revoke (admin scope)."),
        (name = "sync", description = "Upstream sync: cloud pull by offset, consumers, sink status, parked readings."),
        (name = "session", description = "The dashboard's session cookie: sign in with a token or a client certificate, sign out."),
        (name = "backups", description = "Consistent backups of the running hub (admin scope)."),
        (name = "rules", description = "Alert rules (admin scope) and the alerts they raise."),
        (name = "health", description = "Liveness, readiness and metrics."),
        (name = "meta", description = "This description."),
    ),
)]
struct ApiDoc;

/// The description before any route is added: info, tags, the problem schema, the bearer scheme.
pub(super) fn base() -> OpenApi {
    let mut spec = ApiDoc::openapi();
    spec.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A hub token (`hub_` and 64 hex digits): the first run writes the \
                         admin's to `hub-data/admin.token`; `hub token create` makes others.",
                    ))
                    .build(),
            ),
        );
    spec
}

/// Puts the `authenticate` layer on every route of `routes` and says so in their description:
/// each operation needs the bearer token and may answer 401.
pub(super) fn authenticated(
    routes: OpenApiRouter<ApiState>,
    state: &ApiState,
) -> OpenApiRouter<ApiState> {
    let mut routes = routes.route_layer(middleware::from_fn_with_state(
        state.clone(),
        super::authenticate,
    ));
    for item in routes.get_openapi_mut().paths.paths.values_mut() {
        for operation in operations(item) {
            // A handler that needs a scope says so in its annotation
            // (`security(("bearer" = ["read"]))`), which stays; the others need a valid token
            // (or a client certificate that is an identity) and no particular scope.
            if operation.security.as_ref().is_none_or(|s| s.is_empty()) {
                operation.security =
                    Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            }
            operation
                .responses
                .responses
                .entry("401".to_owned())
                .or_insert_with(|| {
                    utoipa::openapi::Response::new("No token, or not a valid one.").into()
                });
            // The same layer limits the rate, per identity and of failed attempts per address.
            let limited = utoipa::openapi::ResponseBuilder::new()
                .description("Too many requests from this identity (or too many failed attempts from this address); `Retry-After` says how many seconds to wait.")
                .build();
            operation
                .responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| limited.into());
            // The same layer reads a body whole, by a deadline and within a size.
            if operation.request_body.is_some() {
                operation
                    .responses
                    .responses
                    .entry("408".to_owned())
                    .or_insert_with(|| {
                        utoipa::openapi::Response::new(
                            "The body did not arrive whole within `api.body_timeout`; the connection is closed.",
                        )
                        .into()
                    });
                operation
                    .responses
                    .responses
                    .entry("413".to_owned())
                    .or_insert_with(|| {
                        utoipa::openapi::Response::new("The body is larger than 16 KiB.").into()
                    });
            }
        }
    }
    routes
}

/// Adds what every route shares (see the module's doc) once all routes are in.
pub(super) fn finish(mut spec: OpenApi, max_page: usize) -> OpenApi {
    let request_id = HeaderBuilder::new()
        .schema(Some(Object::with_type(Type::String)))
        .description(Some(
            "The request's id, also in a problem's `request_id`; quote it when reporting one.",
        ))
        .build();
    for item in spec.paths.paths.values_mut() {
        for operation in operations(item) {
            for (status, response) in &mut operation.responses.responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                response
                    .headers
                    .insert("x-request-id".to_owned(), request_id.clone().into());
                let error = status.starts_with('4') || status.starts_with('5');
                if error && response.content.is_empty() {
                    response.content.insert(
                        "application/problem+json".to_owned(),
                        Content::new(Some(Ref::from_schema_name("Problem"))).into(),
                    );
                }
            }
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(p) = parameter
                    && p.name == "limit"
                    && p.parameter_in == ParameterIn::Query
                    && let Some(RefOr::T(Schema::Object(schema))) = &mut p.schema
                {
                    schema.maximum = Some(Number::UInt(max_page));
                }
            }
        }
    }
    spec
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The description as served: rendered once when the router is built.
#[derive(Debug, Clone)]
pub(super) struct SpecJson(Bytes);

impl SpecJson {
    /// Renders `spec`. Rendering cannot fail (every map key is a string); if it did, the route
    /// would answer 500 and the log would say why.
    pub(super) fn new(spec: &OpenApi) -> Self {
        match serde_json::to_vec_pretty(spec) {
            Ok(json) => SpecJson(Bytes::from(json)),
            Err(e) => {
                tracing::error!(error = %e, "the OpenAPI description cannot be rendered");
                SpecJson(Bytes::new())
            }
        }
    }
}

/// This description.
///
/// The OpenAPI 3.1 description of the API, generated from the code that serves it. Any valid
/// token may read it.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document.", body = serde_json::Value),
        (status = 500, description = "The description could not be rendered."),
    ),
)]
pub(super) async fn openapi_json(Extension(spec): Extension<SpecJson>) -> Response {
    if spec.0.is_empty() {
        return ApiError::Internal.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        spec.0,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    //! The description against the router itself, without a socket: every route the router
    //! serves is described and every described route is served, with the security the
    //! description claims.

    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::Value;
    use tokio::sync::watch;
    use tower::ServiceExt as _;

    use crate::api::{ApiState, RequestIds, router};
    use crate::auth::TokenRegistry;
    use crate::ingest::mqtt::Link;
    use crate::store::memory::MemoryEngine;
    use crate::store::{Store, TokenRecord};

    struct Fixture {
        _dir: tempfile::TempDir,
        state: ApiState,
        admin: String,
        no_scope: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let tokens = TokenRegistry::open(&dir.path().join("token.key"), store.clone()).unwrap();
        let token = |scopes: &[&str]| {
            tokens
                .create(TokenRecord {
                    name: "t".into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    devices: vec![],
                    created_ms: 0,
                    expires_ms: None,
                    revoked: false,
                    last_used_ms: None,
                })
                .unwrap()
        };
        let admin = token(&["admin"]);
        let no_scope = token(&[]);
        let live = crate::live::Live::new();
        let presence = Arc::new(crate::live::Presence::new(std::time::Duration::from_secs(
            60,
        )));
        let (commands, _dispatcher) = crate::commands::new(
            store.clone(),
            presence.clone(),
            live.clone(),
            crate::commands::CommandSettings::default(),
            crate::commands::Transports::default(),
            tokio::sync::mpsc::channel(1).1,
        );
        let store_for_rules = store.clone();
        let credentials = crate::auth::credentials::DeviceCredentials::open(
            &dir.path().join("token.key"),
            store.clone(),
        )
        .unwrap();
        let state = ApiState {
            durable: crate::store::durable::channel(store.next_offset().unwrap()).1,
            store,
            tokens,
            credentials,
            device_certs: crate::api::removal::no_certs(dir.path().join("tls")),
            max_page: 1000,
            mqtt_link: watch::channel(Link::Up).1,
            request_ids: Arc::new(RequestIds::new()),
            commands,
            presence,
            live,
            max_wait: std::time::Duration::from_secs(60),
            max_pull_wait: std::time::Duration::from_secs(60),
            stream_slots: Arc::new(tokio::sync::Semaphore::new(1)),
            shutdown: tokio_util::sync::CancellationToken::new(),
            clients: Arc::new(crate::auth::clients::ClientIdentities::default()),
            limits: Arc::new(crate::api::Limits::new(0, 1)),
            sync: Arc::new(crate::sync::SyncState::default()),
            metrics: Arc::new(crate::metrics::Registry::default()),
            requests: Arc::new(crate::metrics::RequestMetrics::default()),
            liveness: Arc::new(crate::liveness::IngestLiveness::default()),
            backups: Arc::new(crate::api::Backups {
                data_dir: dir.path().to_owned(),
                engine: crate::store::EngineKind::Redb,
                running: tokio::sync::Mutex::new(()),
            }),
            rules: crate::rules::RulesHandle::new(
                store_for_rules,
                watch::channel(Vec::new()).1,
                watch::channel(0).0,
            ),
            sessions: Arc::new(crate::api::dashboard::Sessions::new().unwrap()),
        };
        Fixture {
            _dir: dir,
            state,
            admin,
            no_scope,
        }
    }

    async fn call(
        f: &Fixture,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router(f.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    async fn spec(f: &Fixture) -> Value {
        let (status, headers, body) =
            call(f, Method::GET, "/api/v1/openapi.json", Some(&f.admin)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        serde_json::from_slice(&body).unwrap()
    }

    /// The paths the router serves, read from its `Debug` output (axum has no other way to list
    /// them). If axum changes that output, this fails loudly rather than checking nothing.
    fn served_paths(f: &Fixture) -> BTreeSet<String> {
        let text = format!("{:?}", router(f.state.clone()));
        let mut paths = BTreeSet::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("RouteId(") {
            rest = &rest[at..];
            let Some(open) = rest.find("): \"") else {
                break;
            };
            let tail = &rest[open + 4..];
            let Some(close) = tail.find('"') else { break };
            let path = &tail[..close];
            if !path.contains("__private__axum") {
                paths.insert(path.to_owned());
            }
            rest = &tail[close..];
        }
        assert!(
            paths.contains("/api/v1/devices") && paths.contains("/healthz"),
            "cannot read the router's paths from its Debug output: {paths:?}"
        );
        paths
    }

    /// The docs page's and the dashboard's static files: served, public, and deliberately not in
    /// the description.
    const DOCS: [&str; 5] = ["/docs", "/docs/", "/docs/{file}", "/", "/assets/{file}"];

    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    fn concrete(path: &str) -> String {
        path.replace("{id}", "t-1").replace("{file}", "x")
    }

    #[tokio::test]
    async fn the_spec_is_openapi_3_1_with_the_crate_version_and_valid_references() {
        let f = fixture();
        let spec = spec(&f).await;
        assert!(
            spec["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            spec["openapi"]
        );
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // Every reference resolves.
        let schemas = spec["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, refs));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        walk(&spec, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        // Operation ids are unique, and so are the parameters of each operation.
        let mut ids = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "{method} {path}: {id} twice");
                let mut params = BTreeSet::new();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let key = (p["name"].to_string(), p["in"].to_string());
                    assert!(params.insert(key), "{method} {path}: {p} twice");
                }
                let templated = path.matches('{').count();
                let in_path = params.iter().filter(|(_, at)| at == "\"path\"").count();
                assert_eq!(templated, in_path, "{method} {path}: path parameters");
            }
        }
    }

    #[tokio::test]
    async fn every_route_served_is_described_and_every_described_route_is_served() {
        let f = fixture();
        let spec = spec(&f).await;
        let described: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        let mut served = BTreeSet::new();
        for path in served_paths(&f) {
            for method in METHODS {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (status, _, body) = call(&f, m, &concrete(&path), Some(&f.admin)).await;
                let fallback = status == StatusCode::NOT_FOUND
                    && String::from_utf8_lossy(&body).contains("no such route");
                if status != StatusCode::METHOD_NOT_ALLOWED && !fallback {
                    served.insert((path.clone(), method.to_owned()));
                }
            }
        }
        let docs: BTreeSet<_> = DOCS
            .iter()
            .map(|p| (p.to_string(), "get".to_owned()))
            .collect();
        assert!(docs.is_subset(&served), "the docs page is served");
        let served: BTreeSet<_> = served.difference(&docs).cloned().collect();
        assert_eq!(served, described, "served (left) and described (right)");
        for path in [
            "/healthz",
            "/readyz",
            "/api/v1/readyz",
            "/api/v1/openapi.json",
            "/api/v1/devices",
            "/api/v1/devices/{id}",
            "/api/v1/devices/{id}/latest",
            "/api/v1/devices/{id}/readings",
        ] {
            assert!(
                described.contains(&(path.to_owned(), "get".to_owned())),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn every_operation_but_healthz_needs_the_token_as_described() {
        let f = fixture();
        let spec = spec(&f).await;
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (status, headers, _) = call(&f, m, &concrete(path), None).await;
                if path == "/healthz" {
                    assert!(op.get("security").is_none(), "{path}");
                    assert_eq!(status, StatusCode::OK, "{path}");
                    continue;
                }
                // Signing in and out authenticate by themselves: nothing to sign in with, or no
                // session to end, is a 401 too.
                if path == "/api/v1/session" && method != "get" {
                    assert!(op.get("security").is_none(), "{method} {path}");
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                    assert_eq!(headers["content-type"], "application/problem+json");
                    continue;
                }
                // The bearer scheme, with the scope the operation needs, if any.
                let requirement = op["security"].as_array().unwrap();
                assert_eq!(requirement.len(), 1, "{method} {path}");
                let scopes = requirement[0]["bearer"].as_array().unwrap();
                assert!(scopes.len() <= 1, "{method} {path}");
                for scope in scopes {
                    assert!(
                        crate::auth::Scope::parse(scope.as_str().unwrap()).is_some(),
                        "{method} {path}"
                    );
                }
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(headers["content-type"], "application/problem+json");
            }
        }
    }

    #[tokio::test]
    async fn every_answer_has_the_request_id_and_every_error_the_problem_body() {
        let f = fixture();
        let spec = spec(&f).await;
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let at = format!("{method} {path} {status}");
                    assert!(response["headers"]["x-request-id"].is_object(), "{at}");
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/problem+json"]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{at}"
                        );
                    }
                }
            }
        }
        let readings = &spec["paths"]["/api/v1/devices/{id}/readings"]["get"];
        let content = readings["responses"]["200"]["content"].as_object().unwrap();
        let types: BTreeSet<_> = content.keys().map(String::as_str).collect();
        assert_eq!(
            types,
            BTreeSet::from(["application/json", "text/csv", "application/x-ndjson"])
        );
        let limit = readings["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], 1000, "api.max_page");
    }

    #[tokio::test]
    async fn any_valid_token_reads_the_spec() {
        let f = fixture();
        let (status, ..) = call(&f, Method::GET, "/api/v1/openapi.json", Some(&f.no_scope)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, ..) = call(&f, Method::GET, "/api/v1/devices", Some(&f.no_scope)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, headers, body) = call(&f, Method::GET, "/api/v1/openapi.json", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 401);
        assert_eq!(
            problem["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
}
