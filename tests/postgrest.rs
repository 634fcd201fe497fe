//! A small PostgREST-protocol server for the `supabase` backend's tests, over
//! a throwaway PostgreSQL. PostgREST itself cannot be installed on these
//! machines; this serves the subset of its protocol the backend uses, and
//! does per request what PostgREST's documentation describes:
//!
//! - verify the bearer JWT with the project's secret; no token means the
//!   anonymous role (<https://docs.postgrest.org/en/v12/references/auth.html>);
//! - in one transaction, `SET LOCAL ROLE` to the token's `role` claim and
//!   set `request.jwt.claims` to its claims
//!   (<https://docs.postgrest.org/en/v12/references/transactions.html>),
//!   then run the query, so grants and row level security decide the answer;
//! - tables: `GET` with `select=`, `col=eq.v`, `col=is.null`, `order=col.dir`,
//!   and the `Range` header for limit and offset;
//!   `POST` (insert) and `PATCH` (update) returning the rows, as with
//!   `Prefer: return=representation`;
//! - functions: `POST /rpc/name` with named arguments in a JSON object; a
//!   scalar result comes back as a JSON scalar, a set as an array, a single
//!   row as an object;
//! - errors: `{code, message, details, hint}`, with SQLSTATE `PTxyz`
//!   answered as HTTP `xyz`, `42501` as 401 (anonymous) or 403, `23503` and
//!   `23505` as 409, an unknown function as 404, others as 400
//!   (<https://docs.postgrest.org/en/v12/references/errors.html>).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_postgres::Client;

struct Server {
    db: Mutex<Client>,
    key: DecodingKey,
}

/// A running PostgREST-protocol server; its `url` stands for `SUPABASE_URL`
/// (the API is at `/rest/v1`).
pub struct TestPostgrest {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    _task: tokio::task::JoinHandle<()>,
}

impl TestPostgrest {
    /// Serves the database at `database_url`, verifying tokens with `secret`.
    pub async fn start(database_url: &str, secret: &[u8]) -> TestPostgrest {
        let server = Arc::new(Server {
            db: Mutex::new(crate::pg_client(database_url).await),
            key: DecodingKey::from_secret(secret),
        });
        let app = axum::Router::new()
            .route("/rest/v1/{*path}", axum::routing::any(handle))
            .with_state(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestPostgrest { url, _task: task }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"code": code, "message": message, "details": null, "hint": null});
    (status, axum::Json(body)).into_response()
}

fn identifier(name: &str) -> Option<&str> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    (first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .then_some(name)
}

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // 1. Who is asking: the JWT's claims, or the anonymous role.
    let claims = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => {
            let token = value.strip_prefix("Bearer ").unwrap_or_default();
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            match jsonwebtoken::decode::<Value>(token, &server.key, &validation) {
                Ok(data) => data.claims,
                Err(_) => return error(StatusCode::UNAUTHORIZED, "PGRST301", "JWT invalid"),
            }
        }
        None => json!({"role": "anon"}),
    };
    let Some(role) = claims["role"]
        .as_str()
        .and_then(identifier)
        .map(str::to_owned)
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "PGRST301",
            "JWT has no usable role",
        );
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(StatusCode::BAD_REQUEST, "PGRST102", "invalid JSON body"),
        }
    };
    let params: Vec<(String, String)> = query.map(|q| url_pairs(&q)).unwrap_or_default();

    let mut db = server.db.lock().await;
    let tx = match db.transaction().await {
        Ok(tx) => tx,
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "PGRST000",
                "database unavailable",
            );
        }
    };
    // 2. As PostgREST: claims into request.jwt.claims, then the role.
    let setup = async {
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims.to_string()],
        )
        .await?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}")).await
    };
    if let Err(e) = setup.await {
        return database_error(&e, &role);
    }
    // 3. The request itself.
    let result = if let Some(function) = path.strip_prefix("rpc/") {
        call(&tx, function, &body).await
    } else {
        match range(&headers) {
            Ok(range) => table(&tx, &method, &path, &params, range, &body).await,
            Err(failure) => Err(failure),
        }
    };
    match result {
        Ok((status, value)) => match tx.commit().await {
            Ok(()) => (status, axum::Json(value)).into_response(),
            Err(e) => database_error(&e, &role),
        },
        Err(Failure::Db(e)) => database_error(&e, &role),
        Err(Failure::Request(status, message)) => error(status, "PGRST100", &message),
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

enum Failure {
    Db(tokio_postgres::Error),
    Request(StatusCode, String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::Request(StatusCode::BAD_REQUEST, message.into())
}

/// `POST /rpc/name`: the function called with named arguments.
async fn call(
    tx: &tokio_postgres::Transaction<'_>,
    function: &str,
    args: &Value,
) -> Result<(StatusCode, Value), Failure> {
    let function = identifier(function).ok_or_else(|| bad("bad function name"))?;
    let signature = tx
        .query_opt(
            "SELECT p.proargnames, ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t),
                    p.proretset, rt.typtype::text, format_type(p.prorettype, NULL)
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_type rt ON rt.oid = p.prorettype
              WHERE n.nspname = 'public' AND p.proname = $1",
            &[&function],
        )
        .await?
        .ok_or_else(|| {
            Failure::Request(StatusCode::NOT_FOUND, format!("no function {function}"))
        })?;
    let names: Vec<String> = signature
        .get::<_, Option<Vec<String>>>(0)
        .unwrap_or_default();
    let types: Vec<String> = signature.get(1);
    let returns_set: bool = signature.get(2);
    let returns_row = signature.get::<_, String>(3) == "c";
    let returns: String = signature.get(4);
    let arguments: Vec<String> = names
        .iter()
        .zip(&types)
        .map(|(name, ty)| {
            let name = identifier(name).ok_or_else(|| bad("bad argument name"))?;
            Ok(match ty.as_str() {
                "jsonb" => format!("{name} => ($1::jsonb -> '{name}')"),
                t if t.ends_with("[]") => format!(
                    "{name} => ARRAY(SELECT jsonb_array_elements_text($1::jsonb -> '{name}'))::{t}"
                ),
                t => format!("{name} => ($1::jsonb ->> '{name}')::{t}"),
            })
        })
        .collect::<Result<_, Failure>>()?;
    let call = format!("public.{function}({})", arguments.join(", "));
    let sql = if returns_set || returns_row {
        format!("SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb) FROM {call} r")
    } else if returns == "void" {
        format!("SELECT NULL::jsonb FROM (SELECT {call}) v")
    } else {
        format!("SELECT to_jsonb({call})")
    };
    let args = if args.is_null() {
        json!({})
    } else {
        args.clone()
    };
    let value = tx
        .query_one(&sql, &[&args])
        .await?
        .get::<_, Option<Value>>(0)
        .unwrap_or(Value::Null);
    let value = match (returns_row && !returns_set, value) {
        (true, Value::Array(mut rows)) if rows.len() == 1 => rows.remove(0),
        (_, v) => v,
    };
    Ok((StatusCode::OK, value))
}

/// A `Range: FIRST-LAST` request header (items, both inclusive, `LAST`
/// optional), as PostgREST reads it for limits and offsets
/// (<https://docs.postgrest.org/en/v12/references/api/pagination_count.html>),
/// as SQL: ` LIMIT n OFFSET m`.
fn range(headers: &HeaderMap) -> Result<String, Failure> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(String::new());
    };
    let value = value.to_str().map_err(|_| bad("bad Range"))?;
    let (first, last) = value.split_once('-').ok_or_else(|| bad("bad Range"))?;
    let first: u64 = first.trim().parse().map_err(|_| bad("bad Range"))?;
    Ok(match last.trim() {
        "" => format!(" OFFSET {first}"),
        last => {
            let last: u64 = last.parse().map_err(|_| bad("bad Range"))?;
            if last < first {
                return Err(bad("bad Range"));
            }
            format!(" LIMIT {} OFFSET {first}", last - first + 1)
        }
    })
}

/// Tables: `GET`, `POST` (insert) and `PATCH` (update) with filters; a
/// `GET` within `range` (SQL `LIMIT`/`OFFSET`, from [`range`]).
async fn table(
    tx: &tokio_postgres::Transaction<'_>,
    method: &Method,
    table: &str,
    params: &[(String, String)],
    range: String,
    body: &Value,
) -> Result<(StatusCode, Value), Failure> {
    let table = identifier(table).ok_or_else(|| bad("bad table name"))?;
    // $1 is the body, for the methods that have one; filter values follow.
    let first_filter = if *method == Method::GET { 1 } else { 2 };
    let mut filters = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut columns = "*".to_owned();
    let mut order = String::new();
    for (key, value) in params {
        match key.as_str() {
            "select" => {
                let cols: Option<Vec<&str>> =
                    value.split(',').map(|c| identifier(c.trim())).collect();
                columns = match (value.as_str(), cols) {
                    ("*", _) => "*".to_owned(),
                    (_, Some(cols)) => cols.join(", "),
                    _ => return Err(bad("bad select")),
                };
            }
            "order" => {
                let (col, dir) = value.split_once('.').unwrap_or((value, "asc"));
                let col = identifier(col).ok_or_else(|| bad("bad order"))?;
                let dir = if dir == "desc" { "DESC" } else { "ASC" };
                order = format!(" ORDER BY {col} {dir}");
            }
            column => {
                let column = identifier(column).ok_or_else(|| bad("bad filter column"))?;
                if let Some(v) = value.strip_prefix("eq.") {
                    values.push(v.to_owned());
                    filters.push(format!(
                        "{column}::text = ${}",
                        values.len() + first_filter - 1
                    ));
                } else if value == "is.null" {
                    filters.push(format!("{column} IS NULL"));
                } else {
                    return Err(bad(format!("unsupported filter {value}")));
                }
            }
        }
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let body_keys = || -> Result<Vec<String>, Failure> {
        body.as_object()
            .ok_or_else(|| bad("the body must be an object"))?
            .keys()
            .map(|k| {
                identifier(k)
                    .map(str::to_owned)
                    .ok_or_else(|| bad("bad column"))
            })
            .collect()
    };
    let (status, sql) = match *method {
        Method::GET => (
            StatusCode::OK,
            format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb)
                   FROM (SELECT {columns} FROM public.{table}{filter}{order}{range}) r"
            ),
        ),
        Method::POST => {
            let keys = body_keys()?.join(", ");
            (
                StatusCode::CREATED,
                format!(
                    "WITH inserted AS (
                       INSERT INTO public.{table} ({keys})
                       SELECT {keys} FROM jsonb_populate_record(NULL::public.{table}, $1::jsonb)
                       RETURNING *)
                     SELECT coalesce(jsonb_agg(to_jsonb(inserted)), '[]'::jsonb) FROM inserted"
                ),
            )
        }
        Method::PATCH => {
            let sets: Vec<String> = body_keys()?
                .iter()
                .map(|k| {
                    format!("{k} = (SELECT {k} FROM jsonb_populate_record(NULL::public.{table}, $1::jsonb))")
                })
                .collect();
            (
                StatusCode::OK,
                format!(
                    "WITH updated AS (UPDATE public.{table} SET {}{filter} RETURNING *)
                     SELECT coalesce(jsonb_agg(to_jsonb(updated)), '[]'::jsonb) FROM updated",
                    sets.join(", ")
                ),
            )
        }
        _ => {
            return Err(Failure::Request(
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported".into(),
            ));
        }
    };
    let body = if body.is_null() {
        json!({})
    } else {
        body.clone()
    };
    let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    if *method != Method::GET {
        args.push(&body);
    }
    for value in &values {
        args.push(value);
    }
    let value = tx
        .query_one(&sql, &args)
        .await?
        .get::<_, Option<Value>>(0)
        .unwrap_or(Value::Null);
    Ok((status, value))
}

fn database_error(e: &tokio_postgres::Error, role: &str) -> Response {
    let Some(db) = e.as_db_error() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PGRST000",
            "database unavailable",
        );
    };
    let code = db.code().code();
    let status = match code {
        c if c.starts_with("PT") => c[2..]
            .parse::<u16>()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_REQUEST),
        "42501" if role == "anon" => StatusCode::UNAUTHORIZED,
        "42501" => StatusCode::FORBIDDEN,
        "23503" | "23505" => StatusCode::CONFLICT,
        "42883" => StatusCode::NOT_FOUND,
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let body = json!({
        "code": code,
        "message": db.message(),
        "details": db.detail(),
        "hint": db.hint(),
    });
    (status, axum::Json(body)).into_response()
}
