//! Golden-script stories of the reactor's step (`eden_reactor::step`): rules in, events in; the
//! firings' writes, posts and errors out, with the rules' state carried from one step to the
//! next as the runtime carries it in its cursor. Regenerate the expected output with
//! `UPDATE_GOLDENFILES=1 cargo test -p eden-reactor --test step` and review the diff.
//!
//!   rule yaml="..."                      add rules (YAML, one rule or a list, as `reactor apply`)
//!   event TAG [time=MS] [K=V]...         one revision with one event (labels K=V); prints the step
//!   tick now=MS                          the debounced rules whose wait is over
//!   var NODE NAME VALUE                  a variable the templates see (`vars`)

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;

use eden_proto::model::events::Event;
use eden_proto::model::rules::{parse, Rule, State};
use eden_proto::model::tasks::Targets;
use eden_reactor::step::{self, Step, Write};

#[derive(Default)]
struct Runner {
    rules: Vec<Rule>,
    state: State,
    revision: i64,
    vars: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

fn show(step: &Step) -> Result<String, Box<dyn Error>> {
    let mut out = String::new();
    if step.planned.is_empty() && step.errors.is_empty() {
        writeln!(out, "no rule fires")?;
    }
    for p in &step.planned {
        let f = &p.firing;
        writeln!(out, "fired {} on {} @{}", f.rule, f.tag, f.revision)?;
        for w in &p.writes {
            match w {
                Write::Task(t) => {
                    let on = match &t.targets {
                        Targets::Selector(s) => format!("on {s}"),
                        Targets::Nodes(n) => format!("on nodes {}", n.join(",")),
                    };
                    let reg = t
                        .register
                        .as_ref()
                        .map_or(String::new(), |r| format!(" (register {r})"));
                    writeln!(out, "  run {on}: {}{reg}", t.command.join(" "))?;
                }
                Write::Var { node, name, value } => {
                    writeln!(out, "  set var {node}/{name} = {value}")?
                }
                Write::Event(e) => {
                    writeln!(out, "  emit {} from {} data {}", e.tag, e.source, e.data)?
                }
                Write::Converge { node, state } => {
                    writeln!(out, "  apply state {state} on {node}")?
                }
            }
        }
        for (url, body) in &p.posts {
            writeln!(out, "  post {url} {body}")?;
        }
        for e in &p.errors {
            writeln!(out, "  error: {e}")?;
        }
    }
    // Template errors come with minijinja's context over several lines: the first says it.
    for e in &step.errors {
        writeln!(out, "error: {}", e.lines().next().unwrap_or_default())?;
    }
    Ok(out)
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        cmd: &goldenscript::Command,
        _ctx: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        let mut pos = Vec::new();
        let mut opts = BTreeMap::new();
        for a in &cmd.args {
            match a {
                goldenscript::Argument::Positional(v) => pos.push(v.clone()),
                goldenscript::Argument::KeyValue(k, v) => {
                    opts.insert(k.clone(), v.clone());
                }
                other => return Err(format!("unsupported argument {other}").into()),
            }
        }
        let extra = serde_json::json!({ "vars": self.vars });
        match cmd.name.as_str() {
            "rule" => {
                let text = opts.get("yaml").ok_or("rule needs yaml=...")?;
                let rules = parse(text)?;
                let names: Vec<String> = rules.iter().map(|r| r.name.clone()).collect();
                self.rules.extend(rules);
                Ok(format!("rules {}\n", names.join(", ")))
            }
            "var" => {
                let value: serde_json::Value = serde_json::from_str(&pos[2])
                    .unwrap_or_else(|_| serde_json::Value::String(pos[2].clone()));
                self.vars
                    .entry(pos[0].clone())
                    .or_default()
                    .insert(pos[1].clone(), value);
                Ok(String::new())
            }
            "event" => {
                self.revision += 1;
                let time = opts
                    .remove("time")
                    .map(|t| t.parse())
                    .transpose()?
                    .unwrap_or(0);
                let ev = Event {
                    tag: pos[0].clone(),
                    revision: self.revision,
                    time,
                    source: "test".into(),
                    labels: opts,
                    data: serde_json::Value::Null,
                };
                let st = step::step(&self.rules, &mut self.state, &[ev], &extra);
                show(&st)
            }
            "tick" => {
                let now = opts.get("now").ok_or("tick needs now=MS")?.parse()?;
                let st = step::tick(&self.rules, &mut self.state, now, &extra);
                show(&st)
            }
            other => Err(format!("unknown command {other}").into()),
        }
    }
}

#[test]
fn step_stories() {
    goldenscript::run(&mut Runner::default(), "tests/scripts/step").expect("goldenscript");
}
