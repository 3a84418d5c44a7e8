//! eden's built-in resource plugins: file, exec, service, package. Each is a separate process speaking the plugin protocol
//! (`eden plugin serve NAME` is the program; design/plugins.md), started by the agent exactly as
//! it starts a plugin written by anyone else: the built-ins are the proof that the protocol
//! carries real work.
//!
//! A plugin here is a set of [`Resource`] types; [`Builtin`] turns it into the protocol's
//! Provider service.

pub mod exec;
pub mod file;
pub mod inotify;
pub mod package;
pub mod service;

use eden_proto::plugin_v1 as pb;
use eden_proto::plugin_v1::provider_server::Provider;
use serde_json::{Map, Value};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// What a plan says about one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub planned: Value,
    pub action: pb::Action,
    pub requires_replace: Vec<String>,
    pub detail: String,
}

impl Plan {
    pub fn noop(state: Value) -> Plan {
        Plan {
            planned: state,
            action: pb::Action::Noop,
            requires_replace: vec![],
            detail: String::new(),
        }
    }

    /// The plan for a resource that must be absent: nothing to do when it is, else delete it.
    pub fn absent(prior: &Value, detail: impl FnOnce() -> String) -> Plan {
        if prior.is_null() {
            return Plan::noop(Value::Null);
        }
        Plan {
            planned: Value::Null,
            action: pb::Action::Delete,
            requires_replace: vec![],
            detail: detail(),
        }
    }
}

/// One resource type.
#[tonic::async_trait]
pub trait Resource: Send + Sync + 'static {
    fn schema(&self) -> pb::ResourceSchema;
    /// Problems with a configuration, each with the attribute it is about.
    fn validate(&self, config: &Map<String, Value>) -> Vec<(String, String)>;
    /// The resource as it is now (`Value::Null`: it does not exist).
    async fn read(&self, config: &Map<String, Value>) -> Result<Value, String>;
    async fn plan(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        notified: bool,
        drift_check: bool,
    ) -> Result<Plan, String>;
    /// A stream with an item (the reason) each time the resource may have changed; None: this
    /// type cannot watch (the agent checks it at its interval only).
    fn watch(
        &self,
        _config: &Map<String, Value>,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, String> {
        Ok(None)
    }

    /// Makes the planned change; returns the resource after it.
    async fn apply(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        planned: &Value,
        notified: bool,
    ) -> Result<Value, String>;
}

/// A plugin made of resource types, as a Provider service.
pub struct Builtin {
    pub name: &'static str,
    pub resources: Vec<Box<dyn Resource>>,
}

/// The built-in plugin called `name`.
pub fn builtin(name: &str) -> Option<Builtin> {
    let (name, resources): (&'static str, Vec<Box<dyn Resource>>) = match name {
        "file" => ("file", vec![Box::new(file::File)]),
        "exec" => ("exec", vec![Box::new(exec::Exec)]),
        "service" => ("service", vec![Box::new(service::Service)]),
        "package" => ("package", vec![Box::new(package::Package)]),
        _ => return None,
    };
    Some(Builtin { name, resources })
}

/// The names of the built-in plugins.
pub const BUILTINS: [&str; 4] = ["exec", "file", "package", "service"];

fn error(summary: impl Into<String>, attribute: Option<&str>) -> pb::Diagnostic {
    pb::Diagnostic {
        severity: pb::diagnostic::Severity::Error as i32,
        summary: summary.into(),
        detail: String::new(),
        attribute: attribute.map(|a| vec![a.to_string()]).unwrap_or_default(),
    }
}

fn config_of(json: &str) -> Result<Map<String, Value>, Status> {
    match serde_json::from_str(json) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Status::invalid_argument(
            "the configuration is not a JSON object",
        )),
    }
}

fn value_of(json: &str) -> Result<Value, Status> {
    if json.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(json).map_err(|e| Status::invalid_argument(format!("a state: {e}")))
}

impl Builtin {
    fn resource(&self, type_: &str) -> Result<&dyn Resource, Status> {
        self.resources
            .iter()
            .find(|r| r.schema().r#type == type_)
            .map(|r| r.as_ref())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "plugin {} has no resource type {type_:?}",
                    self.name
                ))
            })
    }

    /// The configuration checked against the schema and the type's own rules.
    fn checked(&self, type_: &str, json: &str) -> Result<Checked<'_>, Vec<pb::Diagnostic>> {
        let r = self
            .resource(type_)
            .map_err(|s| vec![error(s.message(), None)])?;
        let config = config_of(json).map_err(|s| vec![error(s.message(), None)])?;
        let schema = r.schema();
        let mut d = vec![];
        for a in &schema.attributes {
            if a.required && !config.contains_key(&a.name) {
                d.push(error(format!("{} is required", a.name), Some(&a.name)));
            }
        }
        for k in config.keys() {
            if !schema
                .attributes
                .iter()
                .any(|a| &a.name == k && (a.optional || !a.computed))
            {
                d.push(error(format!("{type_} has no attribute {k:?}"), Some(k)));
            }
        }
        d.extend(
            r.validate(&config)
                .into_iter()
                .map(|(attr, why)| error(why, Some(&attr))),
        );
        if d.is_empty() {
            Ok((r, config))
        } else {
            Err(d)
        }
    }
}

/// A resource type and a configuration checked against it.
type Checked<'a> = (&'a dyn Resource, Map<String, Value>);

fn failed(d: Vec<pb::Diagnostic>) -> Status {
    Status::invalid_argument(
        d.iter()
            .map(|d| d.summary.clone())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[tonic::async_trait]
impl Provider for Builtin {
    type WatchResourceStream = std::pin::Pin<
        Box<dyn futures_core::Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>,
    >;

    async fn watch_resource(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchResourceStream>, Status> {
        let req = req.into_inner();
        let (r, config) = self
            .checked(&req.r#type, &req.config_json)
            .map_err(failed)?;
        match r.watch(&config).map_err(Status::failed_precondition)? {
            None => Err(Status::unimplemented(format!(
                "{} cannot watch its resources",
                req.r#type
            ))),
            Some(rx) => {
                let events = tokio_stream::wrappers::ReceiverStream::new(rx)
                    .map(|reason| Ok(pb::WatchEvent { reason }));
                Ok(Response::new(Box::pin(events)))
            }
        }
    }

    async fn get_schema(
        &self,
        _: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        Ok(Response::new(pb::GetSchemaResponse {
            name: self.name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            resources: self.resources.iter().map(|r| r.schema()).collect(),
            diagnostics: vec![],
        }))
    }

    async fn validate_resource(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = req.into_inner();
        let diagnostics = self
            .checked(&req.r#type, &req.config_json)
            .err()
            .unwrap_or_default();
        Ok(Response::new(pb::ValidateResponse { diagnostics }))
    }

    async fn read_resource(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let req = req.into_inner();
        let (r, config) = self
            .checked(&req.r#type, &req.config_json)
            .map_err(failed)?;
        let reply = match r.read(&config).await {
            Ok(state) => pb::ReadResponse {
                state_json: state.to_string(),
                diagnostics: vec![],
            },
            Err(e) => pb::ReadResponse {
                state_json: "null".into(),
                diagnostics: vec![error(e, None)],
            },
        };
        Ok(Response::new(reply))
    }

    async fn plan_resource(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let req = req.into_inner();
        let (r, config) = match self.checked(&req.r#type, &req.config_json) {
            Ok(x) => x,
            Err(diagnostics) => {
                return Ok(Response::new(pb::PlanResponse {
                    diagnostics,
                    ..Default::default()
                }))
            }
        };
        let prior = value_of(&req.prior_state_json)?;
        let reply = match r.plan(&config, &prior, req.notified, req.drift_check).await {
            Ok(p) => pb::PlanResponse {
                planned_state_json: p.planned.to_string(),
                action: p.action as i32,
                requires_replace: p.requires_replace,
                detail: p.detail,
                diagnostics: vec![],
            },
            Err(e) => pb::PlanResponse {
                diagnostics: vec![error(e, None)],
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn apply_resource(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let (r, config) = self
            .checked(&req.r#type, &req.config_json)
            .map_err(failed)?;
        let prior = value_of(&req.prior_state_json)?;
        let planned = value_of(&req.planned_state_json)?;
        let reply = match r.apply(&config, &prior, &planned, req.notified).await {
            Ok(state) => pb::ApplyResponse {
                new_state_json: state.to_string(),
                diagnostics: vec![],
            },
            Err(e) => pb::ApplyResponse {
                new_state_json: prior.to_string(),
                diagnostics: vec![error(e, None)],
            },
        };
        Ok(Response::new(reply))
    }
}

/// An attribute for a schema.
pub(crate) fn attr(name: &str, type_: &str, description: &str) -> pb::Attribute {
    pb::Attribute {
        name: name.into(),
        r#type: type_.into(),
        optional: true,
        description: description.into(),
        ..Default::default()
    }
}

/// An attribute the plugin sets (never in a configuration).
pub(crate) fn computed(name: &str, type_: &str, description: &str) -> pb::Attribute {
    pb::Attribute {
        name: name.into(),
        r#type: type_.into(),
        computed: true,
        description: description.into(),
        ..Default::default()
    }
}

/// A string attribute of a configuration, if set.
pub(crate) fn string<'a>(config: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    config.get(name).and_then(Value::as_str)
}

/// A configuration's attributes that are not strings where the schema says string.
pub(crate) fn type_errors(
    schema: &pb::ResourceSchema,
    config: &Map<String, Value>,
) -> Vec<(String, String)> {
    let mut out = vec![];
    for a in &schema.attributes {
        let Some(v) = config.get(&a.name) else {
            continue;
        };
        let ok = match a.r#type.as_str() {
            "string" => v.is_string(),
            "bool" => v.is_boolean(),
            "number" => v.is_number(),
            "list" => v.is_array(),
            "map" => v.is_object(),
            _ => true,
        };
        if !ok {
            out.push((a.name.clone(), format!("{} must be a {}", a.name, a.r#type)));
        }
    }
    out
}
