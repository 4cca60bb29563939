//! `batonctl init`: writes the first cluster state through the active controller, retrying
//! while members have not reported yet (`409 members_missing`) or no controller is ready (503),
//! and saying what it waits for each time that changes.

use crate::client::Ctl;
use crate::ops::answer_message;
use crate::output::print_lines;
use crate::Fail;
use std::time::{Duration, Instant};

pub async fn init(ctl: &Ctl, wait: Duration) -> Result<(), Fail> {
    let path = ctl.path("/init");
    let start = Instant::now();
    let mut last_said = String::new();
    loop {
        // Waited for: members not reporting yet (409 members_missing), no active controller or
        // a busy one (503).
        let waiting_for = match ctl.operate(&path, None).await? {
            Ok((_, a)) if a.ok() => {
                print_lines(&[answer_message(&a.body)]);
                crate::output::print_result(&a.body);
                return Ok(());
            }
            Ok((_, a)) if a.is(409, "members_missing") || a.status == 503 => {
                a.error().map(|(_, m)| m).unwrap_or_default()
            }
            Ok((_, a)) => return Err(Fail::refused(a.error().map(|(_, m)| m).unwrap_or_default())),
            Err(no) if !no.standby.is_empty() => no.message(&ctl.cluster),
            Err(no) => return Err(Fail::unreachable(no.message(&ctl.cluster))),
        };
        if start.elapsed() >= wait {
            return Err(Fail::refused(format!(
                "init gave up after {} s: {waiting_for}",
                wait.as_secs()
            )));
        }
        if waiting_for != last_said {
            print_lines(&[format!("waiting: {waiting_for}")]);
            last_said = waiting_for;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
