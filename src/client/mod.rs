//! The client commands: `get`, `list`, `watch` against a running
//! tenant-status (`completions` is `crate::cli`'s). What a developer or an operator on
//! call uses instead of grpcurl: readable by default, JSON for scripts,
//! and exit codes a script can branch on (`EXIT_NOT_FOUND`,
//! `EXIT_UNAVAILABLE`; 2 for flags that cannot be used, 1 for anything
//! else).
//!
//! `args` holds the flags, `output` the table and JSON rendering, `watch`
//! the reconnect-and-resume loop. This is the one module besides `serve`
//! that knows protobuf types: it speaks the public contract as any client
//! would.

mod args;
mod output;
mod watch;

use std::{
    io::{self, Write},
    process::ExitCode,
    time::Duration,
};

use futures_util::future::join_all;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub use args::{ClientArgs, GetArgs, ListArgs, Output, StateArg, WatchArgs};

use crate::pb::{self, tenant_status_service_client::TenantStatusServiceClient};

/// Exit code of `get` when a tenant is not found (gRPC NOT_FOUND).
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code when the server cannot be reached or answers UNAVAILABLE (or
/// does not answer in time): trying again later may succeed.
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code for flags or files that cannot be used, as for `serve`.
pub const EXIT_CONFIG: u8 = 2;

/// The generated client with the bearer token on every call.
pub type Client = TenantStatusServiceClient<InterceptedService<Channel, Bearer>>;

/// Why a client command failed, which decides its exit code.
#[derive(Debug)]
pub enum Failure {
    /// A flag or file that cannot be used.
    Config(String),
    NotFound(String),
    Unavailable(String),
    Other(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::NotFound(_) => EXIT_NOT_FOUND,
            Self::Unavailable(_) => EXIT_UNAVAILABLE,
            Self::Other(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Config(m) | Self::NotFound(m) | Self::Unavailable(m) | Self::Other(m) => m,
        }
    }

    /// A call's status, said with what was asked (`what`: a tenant, "list").
    fn from_status(what: &str, status: &Status) -> Self {
        let text = format!(
            "{what}: {} ({})",
            status.message(),
            crate::pb::code_name(status.code())
        );
        match status.code() {
            Code::NotFound => Self::NotFound(text),
            Code::Unavailable | Code::DeadlineExceeded => Self::Unavailable(text),
            _ => Self::Other(text),
        }
    }

    fn report(&self) -> ExitCode {
        eprintln!("tenant-status: {}", self.message());
        ExitCode::from(self.exit_code())
    }
}

/// Puts `authorization: Bearer <token>` on every call when a token is set.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The channel as the flags say, not yet connected: the address checked,
/// TLS material and the token read.
pub fn endpoint(args: &ClientArgs) -> Result<(Endpoint, Bearer), Failure> {
    let bad = |flag: &str, problem: String| Failure::Config(format!("{flag}: {problem}"));
    let addr = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let uri: tonic::codegen::http::Uri = addr.parse().map_err(|e| {
        bad(
            "--addr",
            format!(
                "{:?} is not an address such as http://127.0.0.1:50051: {e}",
                args.addr
            ),
        )
    })?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(bad(
                "--addr",
                format!("{:?} must start with http:// or https://", args.addr),
            ));
        }
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("--addr", format!("{:?} names no host", args.addr)));
    }
    let mut endpoint = Endpoint::from(uri.clone())
        .connect_timeout(args.timeout)
        // A watch must notice a server that vanished without closing the
        // connection, to reconnect and resume.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| bad(flag, format!("cannot read {}: {e}", path.display())))
    };
    let identity = match (&args.tls_client_cert, &args.tls_client_key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(
            read("--tls-client-cert", cert)?,
            read("--tls-client-key", key)?,
        )),
        (None, None) => None,
        _ => {
            return Err(bad(
                "--tls-client-cert",
                "--tls-client-cert and --tls-client-key go together".into(),
            ));
        }
    };
    if tls {
        let mut config = ClientTlsConfig::new();
        config = match &args.ca_file {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("--ca-file", ca)?)),
            None => config.with_native_roots(),
        };
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| bad("--ca-file", format!("cannot set up TLS: {e}")))?;
    } else if args.ca_file.is_some() || identity.is_some() {
        return Err(bad(
            "--addr",
            "TLS settings need an https:// address".to_owned(),
        ));
    }
    let token = match &args.token_file {
        Some(path) => Some(bearer(path).map_err(|e| bad("--token-file", e))?),
        None => None,
    };
    Ok((endpoint, Bearer(token)))
}

/// The `authorization` value from a token file: its first line that is
/// neither blank nor a comment.
fn bearer(path: &std::path::Path) -> Result<MetadataValue<Ascii>, String> {
    let token = crate::files::token_lines(path)?.swap_remove(0);
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        format!(
            "{} holds a token that is not printable ASCII",
            path.display()
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Connects as the flags say; a server that cannot be reached is
/// `Unavailable`.
pub async fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    let (endpoint, bearer) = endpoint(args)?;
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::Unavailable(format!(
            "cannot reach tenant-status at {}: {}",
            args.addr,
            error_chain(&e)
        ))
    })?;
    Ok(TenantStatusServiceClient::with_interceptor(channel, bearer))
}

/// An error with its sources, which name the real cause (refused,
/// certificate unknown, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // hyper and tonic repeat a cause at two levels; say it once.
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `get`: each tenant's record; exit 0 when every one was found, else the
/// first failure's code (3 not found, 4 unavailable).
pub async fn get(args: GetArgs) -> ExitCode {
    let client = match connect(&args.client).await {
        Ok(c) => c,
        Err(f) => return f.report(),
    };
    let timeout = args.client.timeout;
    let calls = args.tenants.iter().map(|ctx| {
        let mut client = client.clone();
        async move {
            let request = pb::GetTenantStateRequest {
                context_identifier: ctx.clone(),
            };
            match tokio::time::timeout(timeout, client.get_tenant_state(request)).await {
                Ok(Ok(r)) => r
                    .into_inner()
                    .tenant
                    .ok_or_else(|| Failure::Other(format!("{ctx}: the server sent no record"))),
                Ok(Err(status)) => Err(Failure::from_status(ctx, &status)),
                Err(_) => Err(Failure::Unavailable(format!(
                    "{ctx}: no answer within {}",
                    humantime::format_duration(timeout)
                ))),
            }
        }
    });
    let results = join_all(calls).await;
    let found: Vec<&pb::Tenant> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut out = io::stdout().lock();
    if print_tenants(&mut out, args.client.output, &found).is_err() {
        return ExitCode::SUCCESS; // stdout closed (| head): nothing more to say
    }
    let mut code = ExitCode::SUCCESS;
    for failure in results.iter().filter_map(|r| r.as_ref().err()) {
        if code == ExitCode::SUCCESS {
            code = ExitCode::from(failure.exit_code());
        }
        eprintln!("tenant-status: {}", failure.message());
    }
    code
}

/// `list`: every tracked tenant (in the given states), page after page.
pub async fn list(args: ListArgs) -> ExitCode {
    let mut client = match connect(&args.client).await {
        Ok(c) => c,
        Err(f) => return f.report(),
    };
    let states: Vec<i32> = args
        .state
        .iter()
        .map(|s| output::state_from_arg(*s) as i32)
        .collect();
    let mut tenants = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListTenantsRequest {
            page_size: args.page_size,
            page_token: std::mem::take(&mut page_token),
            states: states.clone(),
        };
        let page =
            match tokio::time::timeout(args.client.timeout, client.list_tenants(request)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return Failure::from_status("list", &status).report(),
                Err(_) => {
                    return Failure::Unavailable(format!(
                        "list: no answer within {}",
                        humantime::format_duration(args.client.timeout)
                    ))
                    .report();
                }
            };
        tenants.extend(page.tenants);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if tenants.is_empty() && args.client.output == Output::Table {
        eprintln!("tenant-status: no tenant tracked matches");
    }
    let refs: Vec<&pb::Tenant> = tenants.iter().collect();
    let _ = print_tenants(&mut io::stdout().lock(), args.client.output, &refs);
    ExitCode::SUCCESS
}

/// `watch`: events as they come, reconnecting and resuming until
/// interrupted.
pub async fn watch(args: WatchArgs) -> ExitCode {
    let client = match connect(&args.client).await {
        Ok(c) => c,
        Err(f) => return f.report(),
    };
    let output = args.client.output;
    let mut out = io::stdout().lock();
    let result = watch::run(
        client,
        args.tenants,
        args.since_revision,
        |event| {
            let line = match output {
                Output::Json => Some(output::event_json(event).to_string()),
                Output::Table => output::event_line(event, std::time::SystemTime::now()),
            };
            if let Some(line) = line {
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Ok(())
        },
        |note| eprintln!("tenant-status: {note}"),
    )
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

fn print_tenants(out: &mut impl Write, output: Output, tenants: &[&pb::Tenant]) -> io::Result<()> {
    match output {
        Output::Json => {
            for t in tenants {
                writeln!(out, "{}", output::tenant_json(t))?;
            }
        }
        Output::Table if tenants.is_empty() => {}
        Output::Table => {
            write!(
                out,
                "{}",
                output::table(tenants, std::time::SystemTime::now())
            )?;
        }
    }
    out.flush()
}
