//! The rule engine: pure logic, no I/O. `react(state, event) -> firings`; a runtime does the I/O.
//! The rules' shape and their state are eden's model (`eden_proto::model::rules`).

use eden_proto::glob;
use eden_proto::model::events::Event;
use eden_proto::model::rules::{duration, Action, Rule, State};
use eden_proto::model::template::{self, Environment};
use serde::Serialize;

/// A rule's actions rendered for one event.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Firing {
    pub rule: String,
    pub tag: String,
    pub revision: i64,
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub actions: Vec<Action>,
}

fn render_action(env: &Environment, a: &Action, ctx: &serde_json::Value) -> Result<Action, String> {
    let r = |s: &String| template::render_str(env, s, ctx);
    let ro = |s: &Option<String>| {
        s.as_ref()
            .map(|s| template::render_str(env, s, ctx))
            .transpose()
    };
    Ok(match a {
        Action::Run {
            on,
            nodes,
            command,
            shell,
            register,
            readers,
            for_,
            timeout,
        } => Action::Run {
            on: ro(on)?,
            nodes: ro(nodes)?,
            command: command.iter().map(r).collect::<Result<_, _>>()?,
            shell: *shell,
            register: ro(register)?,
            readers: readers.iter().map(r).collect::<Result<_, _>>()?,
            for_: ro(for_)?,
            timeout: timeout.clone(),
        },
        Action::SetVar { node, name, value } => Action::SetVar {
            node: r(node)?,
            name: r(name)?,
            value: template::render_json(env, value, ctx)?,
        },
        Action::Emit { tag, data, labels } => Action::Emit {
            tag: r(tag)?,
            data: template::render_json(env, data, ctx)?,
            labels: labels
                .iter()
                .map(|(k, v)| Ok((k.clone(), r(v)?)))
                .collect::<Result<_, String>>()?,
        },
        Action::Post { url, body } => Action::Post {
            url: r(url)?,
            body: ro(body)?,
        },
        Action::Apply { state, node } => Action::Apply {
            state: r(state)?,
            node: r(node)?,
        },
    })
}

/// True when the event is one the rule is about (tag, labels, data), before any `when`.
pub fn matches(rule: &Rule, event: &Event) -> bool {
    glob::matches(&rule.on, &event.tag)
        && rule
            .labels
            .iter()
            .all(|(k, g)| event.labels.get(k).is_some_and(|v| glob::matches(g, v)))
        && rule.data.iter().all(|(k, v)| event.data.get(k) == Some(v))
}

/// What the rules do about one event. `extra` holds the rest of the template context (`vars`,
/// `node`); the event is added as `event`. A rule whose templates fail is reported in the error
/// list and does not fire; the others still do.
pub fn react(
    rules: &[Rule],
    state: &mut State,
    event: &Event,
    extra: &serde_json::Value,
) -> (Vec<Firing>, Vec<String>) {
    let env = template::env();
    let ctx = context(extra, event);
    let (mut fired, mut errors) = (Vec::new(), Vec::new());
    for rule in rules.iter().filter(|r| matches(r, event)) {
        if let Some(w) = &rule.when {
            let group = match w
                .group_by
                .as_deref()
                .map(|g| template::render_str(&env, g, &ctx))
            {
                None => String::new(),
                Some(Ok(g)) => g,
                Some(Err(e)) => {
                    errors.push(format!("rule {}: group_by: {e}", rule.name));
                    continue;
                }
            };
            let within = duration("within", &w.within)
                .unwrap_or_default()
                .as_millis() as u64;
            let cooldown = w
                .cooldown
                .as_deref()
                .and_then(|c| duration("cooldown", c).ok())
                .map_or(0, |d| d.as_millis() as u64);
            let g = state
                .groups
                .entry(format!("{}\u{0}{group}", rule.name))
                .or_default();
            let now = event.time;
            let debounce = w
                .debounce
                .as_deref()
                .and_then(|d| duration("debounce", d).ok())
                .map(|d| d.as_millis() as u64);
            if let (Some(d), Some(_)) = (debounce, &g.pending) {
                // Still bouncing: the last event wins and the wait starts again.
                g.pending = Some((event.clone(), now + d));
                continue;
            }
            g.times.retain(|t| now.saturating_sub(*t) <= within);
            g.times.push(now);
            let cooling = g
                .last_fired
                .is_some_and(|t| now.saturating_sub(t) < cooldown);
            if g.times.len() < w.count || cooling {
                continue;
            }
            g.times.clear();
            g.last_fired = Some(now);
            if let Some(d) = debounce {
                g.pending = Some((event.clone(), now + d));
                continue;
            }
        }
        match fire(&env, rule, event, &ctx) {
            Ok(f) => fired.push(f),
            Err(e) => errors.push(e),
        }
    }
    (fired, errors)
}

/// The template context for `event`: `extra` (vars, node) plus the event and its tag's parts.
fn context(extra: &serde_json::Value, event: &Event) -> serde_json::Value {
    let mut ctx = if extra.is_object() {
        extra.clone()
    } else {
        serde_json::json!({})
    };
    ctx["event"] = serde_json::to_value(event).expect("JSON");
    ctx["event"]["parts"] = serde_json::json!(event.tag.split('/').collect::<Vec<_>>());
    ctx
}

/// A rule's actions rendered for `event`; Err names the rule and the template that failed.
fn fire(
    env: &Environment,
    rule: &Rule,
    event: &Event,
    ctx: &serde_json::Value,
) -> Result<Firing, String> {
    let actions = rule
        .actions
        .iter()
        .map(|a| render_action(env, a, ctx))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("rule {}: {e}", rule.name))?;
    Ok(Firing {
        rule: rule.name.clone(),
        tag: event.tag.clone(),
        revision: event.revision,
        actions,
    })
}

/// Fires the debounced rules whose wait is over at `now` (the runtime calls it every second).
pub fn tick(
    rules: &[Rule],
    state: &mut State,
    now: u64,
    extra: &serde_json::Value,
) -> (Vec<Firing>, Vec<String>) {
    let env = template::env();
    let (mut fired, mut errors) = (Vec::new(), Vec::new());
    for rule in rules {
        let prefix = format!("{}\u{0}", rule.name);
        for (key, g) in state.groups.range_mut(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            let Some((event, due)) = g.pending.clone() else {
                continue;
            };
            if due > now {
                continue;
            }
            g.pending = None;
            g.last_fired = Some(now);
            match fire(&env, rule, &event, &context(extra, &event)) {
                Ok(f) => fired.push(f),
                Err(e) => errors.push(e),
            }
        }
    }
    (fired, errors)
}

/// True when a debounced firing waits (the runtime ticks only then).
pub fn pending(state: &State) -> bool {
    state.groups.values().any(|g| g.pending.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eden_proto::model::rules::parse;

    fn event(tag: &str, time: u64, labels: &[(&str, &str)]) -> Event {
        Event {
            tag: tag.into(),
            revision: time as i64,
            time,
            source: "test".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: serde_json::json!({"status": "ok"}),
        }
    }

    const JOIN: &str = r#"
name: issue-token
on: node/joined/*
actions:
  - run:
      on: role=issuer
      command: [sh, -c, "make-token {{ event.parts[2] }}"]
      register: token
  - emit: { tag: "join/{{ event.tag }}", data: { rev: "{{ event.revision }}" } }
"#;

    #[test]
    fn a_matching_event_fires_rendered_actions() {
        let rules = parse(JOIN).unwrap();
        let mut st = State::default();
        let (f, e) = react(
            &rules,
            &mut st,
            &event("node/joined/web9", 5, &[]),
            &serde_json::json!({}),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(f.len(), 1);
        match &f[0].actions[0] {
            Action::Run { command, on, .. } => {
                assert_eq!(command[2], "make-token web9");
                assert_eq!(on.as_deref(), Some("role=issuer"));
            }
            other => panic!("{other:?}"),
        }
        match &f[0].actions[1] {
            Action::Emit { tag, data, .. } => {
                assert_eq!(tag, "join/node/joined/web9");
                assert_eq!(data["rev"], "5");
            }
            other => panic!("{other:?}"),
        }
        let (f, _) = react(
            &rules,
            &mut st,
            &event("node/left/web9", 6, &[]),
            &serde_json::json!({}),
        );
        assert!(f.is_empty());
    }

    #[test]
    fn a_thorium_rule_fires_on_the_third_event_in_its_window_then_cools_down() {
        let rules = parse(
            r#"
- name: flapping
  on: alert/firing/*
  labels: { severity: crit* }
  when: { count: 3, within: 60s, group_by: "{{ event.labels.instance }}", cooldown: 5m }
  actions:
    - set_var: { name: "flapping-{{ event.labels.instance }}", value: true }
"#,
        )
        .unwrap();
        let mut st = State::default();
        let s = 1000;
        let mut fire = |t: u64, inst: &str, sev: &str| {
            react(
                &rules,
                &mut st,
                &event(
                    "alert/firing/Down",
                    t,
                    &[("instance", inst), ("severity", sev)],
                ),
                &serde_json::json!({}),
            )
            .0
            .len()
        };
        assert_eq!(fire(0, "a", "critical"), 0);
        assert_eq!(fire(10 * s, "a", "critical"), 0);
        assert_eq!(
            fire(15 * s, "b", "critical"),
            0,
            "another group counts apart"
        );
        assert_eq!(fire(20 * s, "a", "warning"), 0, "labels must match");
        assert_eq!(fire(30 * s, "a", "critical"), 1, "third within 60 s");
        // Cooldown: three more within the window do not fire again for 5 minutes...
        for t in [31, 32, 33, 34] {
            assert_eq!(fire(t * s, "a", "critical"), 0);
        }
        // ...and events spread wider than the window never do.
        assert_eq!(fire(400 * s, "a", "critical"), 0);
        assert_eq!(fire(470 * s, "a", "critical"), 0);
        assert_eq!(fire(540 * s, "a", "critical"), 0);
        // After the cooldown, three within the window fire again.
        assert_eq!(fire(600 * s, "a", "critical"), 0);
        assert_eq!(fire(601 * s, "a", "critical"), 0);
        assert_eq!(fire(602 * s, "a", "critical"), 1);
    }

    #[test]
    fn a_debounced_rule_fires_once_events_stop_with_the_last_one() {
        let rules = parse(
            "name: settle\non: deploy/*\nwhen: { count: 1, within: 1m, debounce: 10s }\nactions:\n  - emit: { tag: \"settled/{{ event.parts[1] }}\" }\n",
        )
        .unwrap();
        let mut st = State::default();
        let x = serde_json::json!({});
        for (t, tag) in [(0, "deploy/a"), (4_000, "deploy/b"), (8_000, "deploy/c")] {
            assert!(react(&rules, &mut st, &event(tag, t, &[]), &x).0.is_empty());
        }
        assert!(pending(&st));
        assert!(
            tick(&rules, &mut st, 17_000, &x).0.is_empty(),
            "8 s + 10 s not yet over"
        );
        let (f, _) = tick(&rules, &mut st, 18_000, &x);
        assert_eq!(f.len(), 1);
        match &f[0].actions[0] {
            Action::Emit { tag, .. } => assert_eq!(tag, "settled/c", "the last event wins"),
            other => panic!("{other:?}"),
        }
        assert!(tick(&rules, &mut st, 30_000, &x).0.is_empty(), "once");
        assert!(!pending(&st));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (text, why) in [
            ("name: x\non: a\nactions: []\n", "no actions"),
            ("name: x\non: a\nactions:\n  - run: { command: [true] }\n", "exactly one of"),
            ("name: x\non: a\nwhen: { count: 2, within: soon }\nactions:\n  - emit: { tag: t }\n", "when.within"),
            ("name: x\non: a\nactions:\n  - emit: { tag: \"{{ oops\" }\n", "template"),
            ("name: x\non: a\nfoo: 1\nactions:\n  - emit: { tag: t }\n", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn an_undefined_name_stops_that_rule_only() {
        let rules = parse(
            r#"
- name: good
  on: "**"
  actions: [ { emit: { tag: ok } } ]
- name: bad
  on: "**"
  actions: [ { emit: { tag: "{{ vars.nope.x }}" } } ]
"#,
        )
        .unwrap();
        let (f, e) = react(
            &rules,
            &mut State::default(),
            &event("x", 1, &[]),
            &serde_json::json!({"vars": {}}),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("rule bad"), "{e:?}");
    }
}
