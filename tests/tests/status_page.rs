//! Issue 16 item 5: the controller's status page (`GET /ui`) seen through a real browser. A
//! secure `batonctl local up` cluster; headless Chromium (`chromium-headless-shell` or
//! `chromium` from PATH, `apt install chromium-headless-shell`) loads the active controller's
//! page over HTTPS with the read token as HTTP Basic credentials in the URL, and the DOM it
//! dumps must show the leader and three healthy members. The leader replica is killed
//! (SIGKILL); the page, reloaded through the browser each time, must show a new leader at a
//! higher epoch and a failover timeline with at least `detected` and `promoted` within 30 s.
//! A screenshot of that page is kept as `target/test-artifacts/status-page.png`. Every browser
//! run has its own profile directory and is killed (its whole process group) when it ends or
//! times out; the cluster is stopped at the end, also on failure.

use baton_tests::client::Client;
use baton_tests::procs::{batonctl, local_kill, local_up, percent_encode, wait_for, LocalDown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// `target/`: `$CARGO_TARGET_DIR`, else the workspace's.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo().join(d)
            }
        }
        _ => repo().join("target"),
    }
}

/// The headless browser on PATH, or a failure that says what to install.
fn browser() -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    ["chromium-headless-shell", "chromium"]
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no headless browser: `sudo apt install chromium-headless-shell` \
                 (binary /usr/bin/chromium-headless-shell; or ./scripts/install-prereqs.sh), \
                 or have `chromium` on PATH"
            )
        })
}

/// Whether `pid` has exited but is not reaped yet (its id, and its process group's, stay
/// reserved until then).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// What one browser run wrote to stdout, and its stderr when it failed.
struct Run {
    stdout: String,
}

/// Runs the browser once, in its own process group with its own profile directory, bounded by
/// `timeout`; the whole group is killed when the browser has exited or the time is up.
fn run_browser(bin: &Path, extra: &[String], url: &str, timeout: Duration) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir()?;
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            // Under the page's 2 s refresh: one load, never a reload mid-dump.
            "--virtual-time-budget=1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.path().join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    while !zombie(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let timed_out = !zombie(pid);
    // The leader is not reaped yet, so the group id is still ours: end its helpers too.
    // SAFETY: kill(2) on our own process group.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let status = child.wait()?;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if timed_out || !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        anyhow::bail!(
            "{} {url}: {} ({status}); stderr:\n{stderr}",
            bin.display(),
            if timed_out { "timed out" } else { "failed" },
        );
    }
    Ok(Run { stdout })
}

/// The DOM of `url` after loading it in the browser.
async fn dump_dom(bin: &Path, url: &str) -> anyhow::Result<String> {
    let (bin, url) = (bin.to_path_buf(), url.to_string());
    let run = tokio::task::spawn_blocking(move || {
        run_browser(&bin, &["--dump-dom".into()], &url, Duration::from_secs(20))
    })
    .await??;
    Ok(run.stdout)
}

// ----- a tiny reader of the dumped DOM (Chromium serializes attributes as name="value") -----

/// An element: its start tag and its whole text (start tag to matching end tag).
#[derive(Clone, Copy)]
struct El<'a> {
    tag: &'a str,
    outer: &'a str,
}

impl<'a> El<'a> {
    fn attr(&self, name: &str) -> Option<String> {
        let key = format!(" {name}=\"");
        let i = self.tag.find(&key)? + key.len();
        let end = self.tag[i..].find('"')?;
        Some(
            self.tag[i..i + end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    }

    fn has_class(&self, class: &str) -> bool {
        self.attr("class")
            .is_some_and(|c| c.split_whitespace().any(|x| x == class))
    }

    /// Every `name` element inside this one (this one included), in document order.
    fn all(&self, name: &str) -> Vec<El<'a>> {
        elements(self.outer, name)
    }
}

/// Every `name` element of `html`, in document order (nested ones too).
fn elements<'a>(html: &'a str, name: &str) -> Vec<El<'a>> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let is_open_at = |i: usize| {
        html[i..].starts_with(&open)
            && html[i + open.len()..]
                .chars()
                .next()
                .is_some_and(|c| c == '>' || c == '/' || c.is_whitespace())
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = html[from..].find(&open) {
        let start = from + k;
        from = start + open.len();
        if !is_open_at(start) {
            continue;
        }
        let Some(tag_end) = html[start..].find('>').map(|e| start + e + 1) else {
            break;
        };
        // The matching end tag: count nested elements of the same name.
        let mut depth = 1;
        let mut j = tag_end;
        let mut end = html.len();
        while j < html.len() {
            let next_open = html[j..]
                .match_indices(&open)
                .map(|(o, _)| j + o)
                .find(|&o| is_open_at(o));
            let next_close = html[j..].find(&close).map(|c| j + c);
            match (next_open, next_close) {
                (Some(o), Some(c)) if o < c => {
                    depth += 1;
                    j = o + open.len();
                }
                (_, Some(c)) => {
                    depth -= 1;
                    j = c + close.len();
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                (_, None) => break,
            }
        }
        out.push(El {
            tag: &html[start..tag_end],
            outer: &html[start..end],
        });
    }
    out
}

/// What the page says about cluster `main`.
#[derive(Debug, Clone, PartialEq)]
struct Page {
    epoch: Option<u64>,
    leader: Option<String>,
    /// (member, role, health), in table order.
    members: Vec<(String, String, String)>,
    /// The newest promotion's timeline steps, in order.
    steps: Vec<String>,
    /// Rows of the recent journal (its header row not counted).
    journal_rows: usize,
    refresh: bool,
    scripts: usize,
}

fn read_page(html: &str) -> Option<Page> {
    let section = elements(html, "section")
        .into_iter()
        .find(|s| s.has_class("cluster") && s.attr("data-cluster").as_deref() == Some("main"))?;
    let members = section
        .all("tr")
        .into_iter()
        .filter_map(|r| {
            Some((
                r.attr("data-member")?,
                r.attr("data-role").unwrap_or_default(),
                r.attr("data-health").unwrap_or_default(),
            ))
        })
        .collect();
    let steps = section
        .all("div")
        .into_iter()
        .find(|d| d.has_class("timeline"))
        .map(|t| {
            t.all("li")
                .into_iter()
                .filter(|l| l.has_class("step"))
                .filter_map(|l| l.attr("data-step"))
                .collect()
        })
        .unwrap_or_default();
    let journal_rows = section
        .all("table")
        .into_iter()
        .find(|t| t.has_class("journal"))
        .map(|t| {
            t.all("tr")
                .iter()
                .filter(|r| r.outer.contains("<td"))
                .count()
        })
        .unwrap_or(0);
    let refresh = elements(html, "meta").iter().any(|m| {
        m.attr("http-equiv")
            .is_some_and(|h| h.eq_ignore_ascii_case("refresh"))
    });
    Some(Page {
        epoch: section.attr("data-epoch").and_then(|e| e.parse().ok()),
        leader: section.attr("data-leader").filter(|l| !l.is_empty()),
        members,
        steps,
        journal_rows,
        refresh,
        scripts: elements(html, "script").len(),
    })
}

// ----- the cluster ----------------------------------------------------------------------------

/// The URL of the active controller (None while there is none).
async fn active_controller(c: &Client, l: &serde_json::Value) -> Option<String> {
    for ctl in l["controllers"].as_array()? {
        let Some(url) = ctl["url"].as_str() else {
            continue;
        };
        let r = c
            .call(
                "GET",
                &format!("{url}/v1/cluster"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
        if r.is_ok_and(|r| r.status == 200 && r.json()["active"] == true) {
            return Some(url.to_string());
        }
    }
    None
}

/// `https://baton:TOKEN@127.0.0.1:PORT/ui` of a controller at `https://127.0.0.1:PORT`.
fn page_url(controller: &str, token: &str) -> anyhow::Result<String> {
    let hostport = controller
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("a secure deployment's controller: {controller}"))?;
    anyhow::ensure!(hostport.starts_with("127.0.0.1:"), "{controller}");
    Ok(format!(
        "https://baton:{}@{}/ui",
        percent_encode(token),
        hostport.trim_end_matches('/')
    ))
}

/// Loads the active controller's page in the browser until `ok` accepts what it shows, for at
/// most `timeout`; returns the URL and the page. The last DOM is kept for the error.
async fn page_until(
    bin: &Path,
    c: &Client,
    l: &serde_json::Value,
    token: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Page) -> bool,
) -> anyhow::Result<(String, Page)> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(the page was never loaded)");
    loop {
        if let Some(ctl) = active_controller(c, l).await {
            let url = page_url(&ctl, token)?;
            match dump_dom(bin, &url).await {
                Ok(dom) => {
                    if let Some(p) = read_page(&dom) {
                        if ok(&p) {
                            return Ok((url, p));
                        }
                        last = format!("{p:#?}\n{dom}");
                    } else {
                        last = dom;
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for the page to show {what}; last:\n{last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_failover_in_a_real_browser() -> anyhow::Result<()> {
    let bin = browser()?;
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cl");
    let d = dir.display().to_string();
    let _down = LocalDown(&dir);
    let l = local_up(&dir)?;
    let ca = l["ca"].as_str().expect("a secure deployment names its CA");
    let token = l["tokens"]["read"]
        .as_str()
        .expect("a read token")
        .to_string();
    let tls = baton_runtime::tls::Tls::client_only(&ca.into())?;
    let dialer = || baton_runtime::connect::Dialer::new(Some(tls.clone()), "");
    let reader = Client::with_dialer(Duration::from_secs(3), dialer(), Some(token.clone()));
    let stranger = Client::with_dialer(Duration::from_secs(3), dialer(), None);

    // The contract's door, checked directly: no credentials, 401 with a Basic challenge.
    let ctl = wait_for(Duration::from_secs(30), "an active controller", || {
        active_controller(&reader, &l)
    })
    .await?;
    let r = stranger
        .call("GET", &format!("{ctl}/ui"), &[], bytes::Bytes::new())
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r.status, 401, "{}", r.text());
    // One challenge per scheme (Bearer and Basic): a browser answers the Basic one.
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Basic realm=\"baton\"")),
        "{challenges:?}"
    );

    // Healthy: a leader and three members heard from.
    let healthy = |p: &Page| {
        p.leader.is_some()
            && p.members.len() == 3
            && p.members.iter().all(|(_, _, h)| h == "ok")
            && p.members
                .iter()
                .any(|(m, role, _)| Some(m) == p.leader.as_ref() && role == "leader")
    };
    let (url, before) = page_until(
        &bin,
        &reader,
        &l,
        &token,
        Duration::from_secs(30),
        "a leader and three healthy members",
        healthy,
    )
    .await?;
    println!(
        "before the kill ({}): {before:?}",
        url.replace(&token, "READTOKEN")
    );
    assert!(before.refresh, "the page reloads itself: {before:?}");
    assert_eq!(before.scripts, 0, "the page has no JavaScript");
    let leader = before.leader.clone().expect("checked above");
    let epoch = before.epoch.expect("the section carries its epoch");
    // The controller's API agrees with the page.
    let st = batonctl(&["--local-dir", &d, "status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout)?;
    assert_eq!(v["leader"]["id"].as_str(), Some(leader.as_str()), "{v}");

    // Kill the leader replica.
    local_kill(&dir, &leader)?;
    let killed = Instant::now();
    let replaced = |p: &Page| {
        p.leader.as_ref().is_some_and(|n| *n != leader)
            && p.epoch.is_some_and(|e| e > epoch)
            && ["detected", "promoted"]
                .iter()
                .all(|s| p.steps.iter().any(|x| x == s))
    };
    let (url, after) = page_until(
        &bin,
        &reader,
        &l,
        &token,
        Duration::from_secs(30),
        "a new leader at a higher epoch and a timeline with detected and promoted",
        replaced,
    )
    .await?;
    println!(
        "{leader} killed; after {:?} the page shows: {after:?}",
        killed.elapsed()
    );
    let killed_row = after.members.iter().find(|(m, _, _)| *m == leader);
    assert!(
        killed_row.is_some_and(|(_, _, h)| h != "ok"),
        "the killed member is not shown healthy: {after:?}"
    );
    assert!(after.journal_rows > 0, "a recent journal: {after:?}");

    // A screenshot of that page, kept as a test artifact.
    let artifacts = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let shot = {
        let (bin, url, png) = (bin.clone(), url.clone(), png.clone());
        tokio::task::spawn_blocking(move || {
            run_browser(
                &bin,
                &[
                    format!("--screenshot={}", png.display()),
                    "--window-size=1280,1000".into(),
                    "--hide-scrollbars".into(),
                ],
                &url,
                Duration::from_secs(20),
            )
        })
        .await?
    };
    shot?;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    println!("screenshot: {} ({size} bytes)", png.display());
    assert!(size > 10_000, "{}: {size} bytes", png.display());
    let head = std::fs::read(&png)?;
    assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    println!("took {:?} in all", started.elapsed());
    Ok(())
}
