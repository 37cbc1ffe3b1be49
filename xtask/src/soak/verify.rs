//! Memory samples, the record disk and its janitor, and the replay of every recording.

use super::*;

// ---------------------------------------------------------------------------------------------
// Memory, the record disk, verification

#[derive(Clone, Copy, serde::Serialize)]
pub(super) struct Sample {
    pub(super) t_s: f64,
    pub(super) rss_kb: u64,
    pub(super) anon_kb: u64,
}

pub(super) fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    Some((field("VmRSS:")?, field("RssAnon:").unwrap_or(0)))
}

/// The record directory: a tmpfs of `mb` where mounting works (root in a container), else a
/// plain directory (then the disk never fills, and the summary says so).
pub(super) fn mount_record_dir(dir: &Path, mb: u64) -> String {
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"]).arg(dir).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        format!("tmpfs of {mb} MiB")
    } else {
        "plain directory (mount -t tmpfs failed: the disk never fills)".into()
    }
}

pub(super) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Moves `from` to `to` (across file systems: copy, then remove).
pub(super) fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    std::fs::remove_file(from)
}

/// One sweep of the janitor: finished recordings (`.wrec`) and cut ones no longer written
/// (`.wrec.partial` untouched for `idle`) move from the record disk into a new batch
/// directory, freeing the disk. Returns the batch and how many files it holds.
pub(super) fn sweep(rec: &Path, archive: &Path, batch: usize, idle: Duration) -> std::io::Result<(PathBuf, usize)> {
    let dir = archive.join(format!("batch-{batch:05}"));
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    for e in std::fs::read_dir(rec)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= idle);
        if name.ends_with(".wrec") || (name.ends_with(".wrec.partial") && old) {
            move_file(&e.path(), &dir.join(&name))?;
            n += 1;
        }
    }
    Ok((dir, n))
}

#[derive(Default, serde::Serialize)]
pub(super) struct Verified {
    pub(super) batches: u64,
    pub(super) files: u64,
    pub(super) pass: u64,
    pub(super) incomplete: u64,
    pub(super) fail: u64,
    /// `.wrec` files that replayed INCOMPLETE (a finished name must hold a whole recording).
    pub(super) whole_but_incomplete: u64,
    /// `.partial` files that replayed PASS as if whole.
    pub(super) partial_but_pass: u64,
    pub(super) replay_seconds: f64,
    pub(super) positions_replayed: u64,
    pub(super) problems: Vec<String>,
    /// File name → verdict, for the named-recording check.
    #[serde(skip)]
    pub(super) seen: HashMap<String, &'static str>,
}

/// Replays one batch with `worker-orcd replay --report`, and judges each case by its name:
/// `.wrec` must PASS, `.wrec.partial` must be INCOMPLETE. Verified files are deleted unless
/// `keep`; failing ones are always kept.
pub(super) fn verify_batch(bin: &Path, model: Option<&Path>, dir: &Path, reports: &Path, keep: bool, v: &mut Verified) -> Result<()> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    if files.is_empty() {
        let _ = std::fs::remove_dir(dir);
        return Ok(());
    }
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let report_dir = reports.join(&name);
    std::fs::create_dir_all(&report_dir)?;
    let report = report_dir.join("replay.json");
    let mut cmd = Command::new(bin);
    cmd.arg("replay").arg(dir).args(["--backend", "cpu", "--threads", "1", "--report"]).arg(&report);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    let out = cmd.output().with_context(|| format!("running {} replay", bin.display()))?;
    std::fs::write(report_dir.join("replay.log"), [&out.stdout[..], &out.stderr[..]].concat())?;
    let doc: Value = match std::fs::read(&report).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(d) => d,
        None => {
            v.fail += files.len() as u64;
            v.problems.push(format!("{name}: replay wrote no report (exit {:?}); see {}", out.status.code(), report_dir.join("replay.log").display()));
            return Ok(());
        }
    };
    v.batches += 1;
    v.replay_seconds += doc["seconds"].as_f64().unwrap_or(0.0);
    v.positions_replayed += doc["tokens_replayed"].as_u64().unwrap_or(0);
    let mut bad = false;
    for c in doc["cases"].as_array().into_iter().flatten() {
        let src = c["source"].as_str().unwrap_or("");
        let file = Path::new(src).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let passed = c["passed"].as_bool().unwrap_or(false);
        let incomplete = !c["incomplete"].is_null();
        v.files += 1;
        let verdict = match (passed, incomplete) {
            (true, false) => "PASS",
            (true, true) => "INCOMPLETE",
            _ => "FAIL",
        };
        match verdict {
            "PASS" => v.pass += 1,
            "INCOMPLETE" => v.incomplete += 1,
            _ => v.fail += 1,
        }
        let partial = file.ends_with(".partial");
        let wrong = match verdict {
            "FAIL" => true,
            "INCOMPLETE" if !partial => {
                v.whole_but_incomplete += 1;
                true
            }
            "PASS" if partial => {
                v.partial_but_pass += 1;
                true
            }
            _ => false,
        };
        if wrong {
            bad = true;
            let checks: Vec<String> =
                c["checks"].as_array().into_iter().flatten().filter(|k| k["passed"] == false).map(|k| format!("{}: {}", k["name"], k["detail"])).collect();
            v.problems.push(format!("{name}/{file}: {verdict} {}; first divergence {}", checks.join("; "), c["first_divergence"]));
        }
        v.seen.insert(file, verdict);
    }
    if !keep && !bad {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(&report_dir);
    } else if !keep {
        // Keep only what failed, with its report.
        for f in &files {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            if v.problems.iter().all(|p| !p.contains(&n)) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    Ok(())
}
