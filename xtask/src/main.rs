//! Project automation (`cargo xtask <cmd>`), matklad style: one `match` over subcommands.
mod fuzz;
mod gpu;
mod replay;
mod soak;
mod vocab;

const USAGE: &str = "usage: cargo xtask <fetch-model [NAME | --list] | fetch-vocab | replay [PATHS..] [--backend auto|cpu|cuda] [--report FILE.json] [--junit FILE.xml] [--explain] [--filter PATTERN] [--diff A B] | record-llama [--token] | gpu-bundle [--out DIR] [--model PATH.gguf] [--with-corpus] | fuzz TARGET [--seconds N] [--runs N] | soak [--duration 60m] [--clients N] [--out DIR]>";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fetch-model") => {
            let path = match args.get(1).map(String::as_str) {
                None => worker_orcd::fetch::default_model_path()?,
                Some("--list") => {
                    for m in worker_orcd::fetch::named_models() {
                        println!("{:<28} {:>11} bytes  sha256 {}  {}", m.name, m.size, m.sha256, m.licence);
                    }
                    return Ok(());
                }
                Some(name) => worker_orcd::fetch::fetch_named(name)?,
            };
            println!("{}", path.display());
            Ok(())
        }
        Some("replay") => {
            let ok = replay::replay(&args)?;
            std::process::exit(if ok { 0 } else { 1 })
        }
        Some("record-llama") => replay::record_llama(&args[1..]),
        Some("gpu-bundle") => gpu::gpu_bundle(&args[1..]),
        Some("fetch-vocab") => vocab::fetch_vocab(),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}
