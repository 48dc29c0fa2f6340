//! A real browser for the tests: Debian's `chromium`, headless, driven over the Chrome DevTools
//! Protocol on a pipe (`--remote-debugging-pipe`: commands go in on its fd 3 and answers come
//! out on its fd 4, each a JSON message ended by a NUL byte), so no WebSocket client is needed.
//! The browser gets a profile directory of its own and is ended (by its pid) when dropped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// How long one command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser binary: Debian's `chromium` (`make test` installs it).
pub const CHROMIUM: &str = "chromium";

/// A headless chromium with one page open.
pub struct Browser {
    child: Child,
    commands: std::fs::File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session (`Target.attachToTarget` with `flatten`).
    session: String,
    profile: PathBuf,
}

fn pipe() -> anyhow::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    Ok(unsafe { (std::os::fd::FromRawFd::from_raw_fd(fds[0]), std::os::fd::FromRawFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts chromium (`width` × `height` window, profile in `profile`) with a blank page.
    pub fn launch(profile: &Path, width: u32, height: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(profile)?;
        let (browser_reads, we_write) = pipe()?;
        let (we_read, browser_writes) = pipe()?;
        let (read_fd, write_fd) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                // The tests run as root, where chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Out of the way first: a pipe end that is itself fd 3 or 4 would otherwise be
                // overwritten by the other's dup2.
                let (read_fd, write_fd) =
                    (libc::fcntl(read_fd, libc::F_DUPFD, 10), libc::fcntl(write_fd, libc::F_DUPFD, 10));
                if read_fd < 0 || write_fd < 0 || libc::dup2(read_fd, 3) < 0 || libc::dup2(write_fd, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {CHROMIUM}: is it installed? (make test installs it)"))?;
        drop((browser_reads, browser_writes));
        let (sender, answers) = mpsc::channel();
        let reader = std::fs::File::from(we_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: std::fs::File::from(we_write),
            answers,
            next_id: 0,
            session: String::new(),
            profile: profile.to_owned(),
        };
        let targets = browser.call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        let page = match page {
            Some(page) => page,
            None => browser.call("Target.createTarget", json!({"url": "about:blank"}))?["targetId"]
                .as_str()
                .context("no target id")?
                .to_owned(),
        };
        let attached = browser.call("Target.attachToTarget", json!({"targetId": page, "flatten": true}))?;
        browser.session = attached["sessionId"].as_str().context("no session id")?.to_owned();
        browser.page("Page.enable", json!({}))?;
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false
            }),
        )?;
        Ok(browser)
    }

    /// Sends a browser-level command and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, None)
    }

    /// Sends a command to the page's session.
    pub fn page(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.commands.write_all(&bytes).with_context(|| format!("sending {method} to {CHROMIUM}"))?;
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer =
                self.answers.recv_timeout(left).with_context(|| format!("{CHROMIUM} did not answer {method}"))?;
            if answer["id"] != id {
                continue; // an event, or an answer nobody waits for any more
            }
            if let Some(error) = answer.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let result = self.page("Page.navigate", json!({"url": url}))?;
        if let Some(error) = result.get("errorText") {
            bail!("opening {url}: {error}");
        }
        Ok(())
    }

    /// The value of `expression` in the page (awaited when it is a promise).
    pub fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .page("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// A left click at (`x`, `y`) of the page, as a user's mouse makes it.
    pub fn click(&mut self, x: f64, y: f64) -> anyhow::Result<()> {
        self.page("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y}))?;
        for kind in ["mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// Writes a PNG screenshot of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("no screenshot data")?)
            .context("the screenshot's base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.send("Browser.close", json!({}), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.profile);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
