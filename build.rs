//! Embeds the commit the binary was built from (`git describe --always --dirty`), so a
//! recording's fingerprint names the build even where the binary runs without its checkout.
//! `WORKER_ORCD_GIT_COMMIT` set in the environment wins; without git, nothing is embedded.
fn main() {
    println!("cargo:rerun-if-env-changed=WORKER_ORCD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    if std::env::var_os("WORKER_ORCD_GIT_COMMIT").is_some() {
        return;
    }
    let out = std::process::Command::new("git").args(["describe", "--always", "--dirty", "--abbrev=40"]).output();
    if let Ok(o) = out {
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !s.is_empty() {
            println!("cargo:rustc-env=WORKER_ORCD_GIT_COMMIT={s}");
        }
    }
}
