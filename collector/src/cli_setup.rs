//! `init` and `enroll`: set up a data directory and an agent's bundle, and
//! print what was written.

use std::io::Write as _;

use ferry_collector::{Config, EnrollOptions, InitOptions};

use crate::cli_args::{EnrollArgs, InitArgs};

pub(crate) fn init(
    InitArgs {
        data_dir,
        config,
        sans,
    }: InitArgs,
) -> anyhow::Result<()> {
    let data_dir = match (&config, data_dir) {
        (Some(path), _) => Config::load(path)?.data_dir,
        (None, Some(dir)) => dir,
        (None, None) => anyhow::bail!("give --data-dir or --config"),
    };
    let report = ferry_collector::init(&InitOptions {
        data_dir: data_dir.clone(),
        sans,
        write_config: config.is_none(),
    })?;
    out!("created CA {}", report.ca_cert.display());
    out!(
        "created server certificate {}",
        report.server_cert.display()
    );
    let location = match (&config, report.config) {
        (Some(path), _) => format!("--config {}", path.display()),
        (None, written) => {
            match written {
                Some(c) => out!("wrote {}", c.display()),
                None => out!(
                    "kept the existing {}",
                    data_dir.join("collector.toml").display()
                ),
            }
            format!("--data-dir {}", data_dir.display())
        }
    };
    out!("next: ferry-collector enroll AGENT_ID {location} --out DIR");
    Ok(())
}

pub(crate) fn enroll(
    EnrollArgs {
        agent_id,
        out,
        location,
        address,
        server_name,
        valid_days,
    }: EnrollArgs,
) -> anyhow::Result<()> {
    let bundle = ferry_collector::enroll_with(&EnrollOptions {
        data_dir: location.data_dir()?,
        agent_id,
        out_dir: out,
        address,
        server_name,
        valid_days,
    })?;
    out!("enrolled {}", bundle.agent_id);
    for p in [&bundle.cert, &bundle.key, &bundle.ca, &bundle.config] {
        out!("  {}", p.display());
    }
    Ok(())
}
