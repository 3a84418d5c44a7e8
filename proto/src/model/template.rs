//! Templates (minijinja, strict: an undefined name is an error), one flavour for every use:
//! - in a task's arguments, environment, working directory and script, rendered on the agent just
//!   before it runs (a failing template fails the task, and nothing runs);
//! - in every string of a reactor rule's actions (see [`crate::model::rules`]).
//!
//! A string holds a template when it has `{{`, `{%` or `{#`; any other string is taken as is.
//!
//! In a task's scope: `node.name`, `node.labels.KEY`, `node.facts.*` (the running node), `vars["NODE"].NAME`
//! (any node's variable) and `vars.cluster.NAME` (cluster-wide variables). Variables are looked
//! up by name ([`Vars`]): the agent loads only those a template names, each with its own read,
//! which the server allows only when the variable's readers include the node. Files the same way:
//! `files["NODE/PATH"]` is a file's text, loaded when named, readable only by its readers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value};
pub use minijinja::Environment;
use minijinja::UndefinedBehavior;
use serde::Serialize;

use crate::model::objects::{Facts, TaskSpec};

/// What a template sees.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Context {
    pub node: NodeContext,
    pub vars: Vars,
    pub files: Files,
}

/// Values a template reads, loaded by key when it asks: a template that names one not loaded yet
/// fails, and the key is recorded as asked for ([`Lazy::missing`]); the caller loads it (or
/// learns it may not) and renders again.
#[derive(Debug, Default)]
struct Lazy {
    known: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Looked up and found missing: not asked for again.
    absent: Mutex<BTreeSet<String>>,
    asked: Mutex<BTreeSet<String>>,
}

impl Lazy {
    fn insert(&self, key: String, value: serde_json::Value) {
        self.known.lock().unwrap().insert(key, value);
    }

    fn absent(&self, key: String) {
        self.absent.lock().unwrap().insert(key);
    }

    fn missing(&self) -> Vec<String> {
        let known = self.known.lock().unwrap();
        let absent = self.absent.lock().unwrap();
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|k| !absent.contains(*k) && !known.contains_key(*k))
            .cloned()
            .collect()
    }

    fn get(&self, key: String) -> Option<Value> {
        let v = self
            .known
            .lock()
            .unwrap()
            .get(&key)
            .map(Value::from_serialize);
        self.asked.lock().unwrap().insert(key);
        v
    }
}

/// The variables a task's templates read (`vars["NODE"].NAME`, `vars.cluster.NAME`), loaded by
/// name ([`Lazy`]).
#[derive(Debug, Default, Clone)]
pub struct Vars(Arc<Lazy>);

impl Vars {
    pub fn insert(&self, scope: &str, name: &str, value: serde_json::Value) {
        self.0.insert(format!("{scope}/{name}"), value);
    }

    /// Records that a variable does not exist (a template naming it fails as undefined).
    pub fn absent(&self, scope: &str, name: &str) {
        self.0.absent(format!("{scope}/{name}"));
    }

    /// Variables a template asked for that are neither loaded nor known to be absent.
    pub fn missing(&self) -> Vec<(String, String)> {
        self.0
            .missing()
            .into_iter()
            .filter_map(|k| k.split_once('/').map(|(s, n)| (s.into(), n.into())))
            .collect()
    }
}

impl Serialize for Vars {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Value::from_dyn_object(Arc::new(self.clone())).serialize(s)
    }
}

impl Object for Vars {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(Value::from_object(Scope {
            vars: (**self).clone(),
            scope: key.as_str()?.to_string(),
        }))
    }
}

/// One scope's variables (`vars["NODE"]` or `vars.cluster`).
#[derive(Debug)]
struct Scope {
    vars: Vars,
    scope: String,
}

impl Object for Scope {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.vars.0.get(format!("{}/{}", self.scope, key.as_str()?))
    }
}

/// The files a task's templates read (`files["web1/tls/ca.crt"]`, as text), loaded by name
/// ([`Lazy`]).
#[derive(Debug, Default, Clone)]
pub struct Files(Arc<Lazy>);

impl Files {
    pub fn insert(&self, name: &str, text: String) {
        self.0.insert(name.into(), serde_json::Value::String(text));
    }

    /// Records that a file does not exist (a template naming it fails as undefined).
    pub fn absent(&self, name: &str) {
        self.0.absent(name.into());
    }

    /// Files a template asked for that are neither loaded nor known to be absent.
    pub fn missing(&self) -> Vec<String> {
        self.0.missing()
    }
}

impl Serialize for Files {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Value::from_dyn_object(Arc::new(self.clone())).serialize(s)
    }
}

impl Object for Files {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.get(key.as_str()?.to_string())
    }
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct NodeContext {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub facts: Facts,
}

/// True when `s` holds template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// True when any part of the task uses templates that read variables (so the agent loads them).
pub fn uses_vars(spec: &TaskSpec) -> bool {
    strings(spec).any(|s| is_template(s) && s.contains("vars"))
}

fn strings(spec: &TaskSpec) -> impl Iterator<Item = &String> {
    spec.command
        .iter()
        .chain(spec.env.values())
        .chain(spec.cwd.iter())
        .chain(spec.script.iter())
}

/// The one template environment: strict about undefined names.
pub fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// `s` rendered over `ctx` if it holds a template, else `s` as is; Err says why it failed.
pub fn render_str(env: &Environment, s: &str, ctx: &impl Serialize) -> Result<String, String> {
    if !is_template(s) {
        return Ok(s.to_string());
    }
    env.render_str(s, ctx).map_err(|e| format!("{e:#}"))
}

/// Every string inside `v` rendered over `ctx`.
pub fn render_json(
    env: &Environment,
    v: &serde_json::Value,
    ctx: &impl Serialize,
) -> Result<serde_json::Value, String> {
    Ok(match v {
        serde_json::Value::String(s) => serde_json::Value::String(render_str(env, s, ctx)?),
        serde_json::Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|x| render_json(env, x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(env, x, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn render_one(env: &Environment, ctx: &Context, what: &str, s: &str) -> Result<String, String> {
    render_str(env, s, ctx).map_err(|e| format!("template in {what}: {e}"))
}

/// Renders every template of the task; Err says which part failed and why.
pub fn render(spec: &TaskSpec, ctx: &Context) -> Result<TaskSpec, String> {
    let env = env();
    let mut out = spec.clone();
    for (i, a) in out.command.iter_mut().enumerate() {
        *a = render_one(&env, ctx, &format!("argument {}", i + 1), a)?;
    }
    for (k, v) in out.env.iter_mut() {
        *v = render_one(&env, ctx, &format!("env {k}"), v)?;
    }
    if let Some(cwd) = out.cwd.as_mut() {
        *cwd = render_one(&env, ctx, "cwd", cwd)?;
    }
    if let Some(script) = out.script.as_mut() {
        *script = render_one(&env, ctx, "the script", script)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut c = Context::default();
        c.node.name = "web1".into();
        c.node.labels.insert("role".into(), "web".into());
        c.node.facts.hostname = "web1.example".into();
        c.vars.insert("db1", "token", serde_json::json!("s3cret"));
        c.vars
            .insert("cluster", "dc", serde_json::json!({"name": "fra"}));
        c
    }

    #[test]
    fn renders_node_facts_and_vars() {
        let spec = TaskSpec {
            command: vec![
                "echo".into(),
                "{{ node.name }}/{{ node.labels.role }}/{{ node.facts.hostname }}".into(),
                "{{ vars[\"db1\"].token }} {{ vars.cluster.dc.name }}".into(),
            ],
            ..Default::default()
        };
        let out = render(&spec, &ctx()).unwrap();
        assert_eq!(out.command[1], "web1/web/web1.example");
        assert_eq!(out.command[2], "s3cret fra");
        assert!(uses_vars(&spec));
    }

    #[test]
    fn an_undefined_name_fails_with_where_it_was() {
        let spec = TaskSpec {
            command: vec!["echo".into(), "{{ vars[\"db2\"].token }}".into()],
            ..Default::default()
        };
        let c = ctx();
        let e = render(&spec, &c).unwrap_err();
        assert!(e.contains("argument 2"), "{e}");
        assert!(e.contains("undefined"), "{e}");
        // The variable it named is recorded, to be loaded; once known absent, it is not asked again.
        assert_eq!(
            c.vars.missing(),
            vec![("db2".to_string(), "token".to_string())]
        );
        c.vars.absent("db2", "token");
        assert!(c.vars.missing().is_empty());
        let spec = TaskSpec {
            command: vec!["echo".into(), "{{ node.labels.missing }}".into()],
            ..Default::default()
        };
        assert!(render(&spec, &ctx()).is_err());
    }

    #[test]
    fn one_flavour_for_tasks_and_rules() {
        let env = env();
        let ctx = serde_json::json!({"a": 1});
        // A comment alone makes a template (it was verbatim in rules before issue 12).
        assert_eq!(render_str(&env, "x{# note #}y", &ctx).unwrap(), "xy");
        assert_eq!(render_str(&env, "plain {a}", &ctx).unwrap(), "plain {a}");
        assert!(render_str(&env, "{{ b }}", &ctx).is_err());
        let v = render_json(&env, &serde_json::json!({"k": ["{{ a }}", 2]}), &ctx).unwrap();
        assert_eq!(v, serde_json::json!({"k": ["1", 2]}));
    }
}
