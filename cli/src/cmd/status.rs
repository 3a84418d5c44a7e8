//! `eden status`: every member's status, found through the member list (the endpoints given are
//! only the way in).

use eden_proto::client::Client;
use serde_json::json;

use crate::exit::{Failure, UNAVAILABLE};
use crate::printer::{Format, Printer};

pub async fn run(client: &Client, out: &Printer) -> Result<(), Failure> {
    let members = client.member_list().await?;
    let mut urls: Vec<String> = members
        .members
        .iter()
        .flat_map(|m| m.client_ur_ls.first().cloned())
        .collect();
    if urls.is_empty() {
        urls = client.endpoints().to_vec();
    }
    let per_member = Client::new(&urls)?;
    let mut rows = Vec::new();
    let mut failures = 0;
    for (i, url) in urls.iter().enumerate() {
        match per_member.status_of(i).await {
            Ok(s) => {
                let h = s.header.unwrap_or_default();
                rows.push((
                    url.clone(),
                    Some((
                        h.member_id,
                        s.version,
                        s.db_size,
                        s.leader == h.member_id,
                        s.raft_term,
                        s.raft_index,
                        s.raft_applied_index,
                        h.revision,
                        s.is_learner,
                    )),
                    String::new(),
                ));
            }
            Err(e) => {
                failures += 1;
                rows.push((url.clone(), None, e.to_string()));
            }
        }
    }
    match out.format {
        Format::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(url, s, err)| match s {
                    Some((id, ver, db, leader, term, idx, applied, rev, learner)) => json!({
                        "endpoint": url, "id": id, "version": ver, "db_size": db, "is_leader": leader,
                        "raft_term": term, "raft_index": idx, "raft_applied_index": applied, "revision": rev, "is_learner": learner,
                    }),
                    None => json!({"endpoint": url, "error": err}),
                })
                .collect();
            out.json(&json!(v))?;
        }
        Format::Simple => {
            for (url, s, err) in &rows {
                match s {
                    Some((id, ver, db, leader, term, idx, applied, rev, learner)) => out.line(&format!(
                        "{url}, {id:x}, {ver}, {db}, leader={leader}, learner={learner}, term={term}, index={idx}, applied={applied}, revision={rev}"
                    ))?,
                    None => out.line(&format!("{url}, unreachable: {err}"))?,
                }
            }
        }
        Format::Table => {
            let t: Vec<Vec<String>> = rows
                .iter()
                .map(|(url, s, err)| match s {
                    Some((id, ver, db, leader, term, idx, applied, rev, learner)) => vec![
                        url.clone(),
                        format!("{id:x}"),
                        ver.clone(),
                        db.to_string(),
                        leader.to_string(),
                        learner.to_string(),
                        term.to_string(),
                        idx.to_string(),
                        applied.to_string(),
                        rev.to_string(),
                        String::new(),
                    ],
                    None => {
                        let mut r = vec![url.clone()];
                        r.extend(std::iter::repeat_n(String::new(), 9));
                        r.push(err.clone());
                        r
                    }
                })
                .collect();
            out.table(
                &[
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "REVISION",
                    "ERRORS",
                ],
                &t,
            )?;
        }
    }
    if failures > 0 {
        return Err(Failure {
            code: UNAVAILABLE,
            message: format!("{failures} member(s) unreachable"),
            quiet: false,
        });
    }
    Ok(())
}
