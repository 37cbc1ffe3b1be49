//! Project automation (`cargo xtask <cmd>`), matklad style: one `match` over subcommands.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fetch-model") => {
            let path = worker_orcd::fetch::default_model_path()?;
            println!("{}", path.display());
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask <fetch-model>");
            std::process::exit(2)
        }
    }
}
