//! Shell completions and man pages, generated from the clap definitions in [`crate::cli`]
//! (clap_complete, clap_mangen), so they cannot drift from `--help`.

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::Cli;

/// `handover completions SHELL`: the script, on `out`.
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    // Into memory first: clap_complete panics when its writer fails (`| head`, a full disk).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "handover", &mut script);
    out.write_all(&script).and_then(|()| out.flush()).context("write the completions")
}

/// `handover man [SUBCOMMAND]`: handover(1), or handover-SUBCOMMAND(1), on `out`.
pub(crate) fn man(subcommand: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    // Building fills in each subcommand's display name (`handover-serve`, the page's title)
    // and binary name (`handover serve`, its synopsis).
    cmd.build();
    let page = match subcommand {
        None => cmd,
        // The command line checked the name (`cli::subcommand_name`).
        Some(name) => cmd.find_subcommand(name).cloned().context("no such subcommand")?,
    };
    // The footer says which handover the page describes, for subcommands' pages too.
    let source = concat!("handover ", env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(page).source(source).render(out).context("write the man page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page() {
        for sub in Cli::command().get_subcommands() {
            let mut out = Vec::new();
            man(Some(sub.get_name()), &mut out).unwrap();
            let page = String::from_utf8(out).unwrap();
            let title = format!(".TH handover-{} 1", sub.get_name());
            assert!(page.contains(&title), "{}: {page}", sub.get_name());
            assert!(page.contains(concat!("\"handover ", env!("CARGO_PKG_VERSION"), "\"")));
        }
        assert!(man(Some("nonsense"), &mut Vec::new()).is_err());
    }
}
