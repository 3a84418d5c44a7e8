//! Templates in a task's arguments, environment, working directory and script, rendered on the
//! agent just before it runs (minijinja, strict: an undefined name fails the task, and nothing
//! runs).
//!
//! In scope: `node.name`, `node.labels.KEY`, `node.facts.*` (the running node), `vars["NODE"].NAME`
//! (any node's variable) and `vars.cluster.NAME` (cluster-wide variables).

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::model::{Facts, TaskSpec};

/// What a template sees.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Context {
    pub node: NodeContext,
    /// node name (or "cluster") -> variable name -> value.
    pub vars: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
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

fn render_one(env: &Environment, ctx: &Context, what: &str, s: &str) -> Result<String, String> {
    if !is_template(s) {
        return Ok(s.to_string());
    }
    env.render_str(s, ctx)
        .map_err(|e| format!("template in {what}: {e:#}"))
}

/// Renders every template of the task; Err says which part failed and why.
pub fn render(spec: &TaskSpec, ctx: &Context) -> Result<TaskSpec, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
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
        c.vars
            .entry("db1".into())
            .or_default()
            .insert("token".into(), serde_json::json!("s3cret"));
        c.vars
            .entry("cluster".into())
            .or_default()
            .insert("dc".into(), serde_json::json!({"name": "fra"}));
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
        let e = render(&spec, &ctx()).unwrap_err();
        assert!(e.contains("argument 2"), "{e}");
        assert!(e.contains("undefined"), "{e}");
        let spec = TaskSpec {
            command: vec!["echo".into(), "{{ node.labels.missing }}".into()],
            ..Default::default()
        };
        assert!(render(&spec, &ctx()).is_err());
    }
}
