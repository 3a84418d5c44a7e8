//! Golden-script stories of the agent's decision about one assignment (`eden_agent::decide`).
//! Regenerate the expected output with `UPDATE_GOLDENFILES=1 cargo test -p eden-agent --test
//! decide` and review the diff.
//!
//!   decide [gone] [result] [canceled] [claim=RUN] [deadline=MS] [now=MS]
//!
//! The deciding agent's run is `r1`; a claim by another run was started at 0 ms. Times are
//! milliseconds since the Unix epoch.

use std::error::Error;

use eden_agent::decide::{decide, Decision, Seen};
use eden_proto::model::objects::{Claim, TaskSpec};

struct Runner;

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        cmd: &goldenscript::Command,
        _ctx: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        if cmd.name != "decide" {
            return Err(format!("unknown command {}", cmd.name).into());
        }
        let mut seen = Seen {
            spec: Some(TaskSpec {
                id: "T1".into(),
                deadline: 100,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut now = 0;
        for a in &cmd.args {
            match a {
                goldenscript::Argument::Positional(v) => match v.as_str() {
                    "gone" => seen.spec = None,
                    "result" => seen.has_result = true,
                    "canceled" => seen.canceled = true,
                    other => return Err(format!("unknown flag {other}").into()),
                },
                goldenscript::Argument::KeyValue(k, v) => match k.as_str() {
                    "claim" => {
                        seen.claim = Some(Claim {
                            instance: "i1".into(),
                            run: v.clone(),
                            started_at: 0,
                        })
                    }
                    "deadline" => {
                        if let Some(s) = seen.spec.as_mut() {
                            s.deadline = v.parse()?;
                        }
                    }
                    "now" => now = v.parse()?,
                    other => return Err(format!("unknown option {other}").into()),
                },
                other => return Err(format!("unsupported argument {other}").into()),
            }
        }
        Ok(match decide(&seen, "r1", now) {
            Decision::Nothing => "nothing\n".into(),
            Decision::Resume => "resume (run it unless this run already does)\n".into(),
            Decision::Lost(why) => format!("result lost: {why}\n"),
            Decision::Canceled => "result canceled\n".into(),
            Decision::Unreachable(why) => format!("result unreachable: {why}\n"),
            Decision::Claim => "claim, then run\n".into(),
        })
    }
}

#[test]
fn decide_stories() {
    goldenscript::run(&mut Runner, "tests/scripts/decide").expect("goldenscript");
}
