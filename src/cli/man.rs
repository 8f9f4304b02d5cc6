//! `cyberwave-cloud-node man`: the man page, made from the clap definitions.

use clap::CommandFactory;

use super::output::write_stdout;
use super::Cli;

/// Prints the man page, for packaging (`man > cyberwave-cloud-node.1`). One
/// page for the whole program: clap_mangen's top-level sections, a COMMANDS
/// section with each command's synopsis, description, options and notes, then
/// the top level's notes (API TOKEN and so on) as sections of their own.
/// (clap_mangen's own page would point at a cyberwave-cloud-node-start(1) and
/// so on, which nobody installs.)
pub(super) fn page() -> anyhow::Result<()> {
    let mut command = Cli::command();
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    let top_notes = command.get_after_long_help().map(ToString::to_string);
    for sub in leaf_commands(&command) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        page.extend_from_slice(format!(".SS \"{name}\"\n").as_bytes());
        // -v and -h are in the top-level OPTIONS already.
        let sub = sub.clone().mut_args(|arg| {
            let hide = arg.is_hide_set() || arg.is_global_set() || arg.get_id() == "help";
            arg.hide(hide)
        });
        let man = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section)?;
        man.render_description_section(&mut section)?;
        man.render_options_section(&mut section)?;
        // Its sections become paragraphs of this subsection.
        for line in String::from_utf8(section)?.lines() {
            let line = if line.starts_with(".SH ") {
                ".PP"
            } else {
                line
            };
            page.extend_from_slice(line.as_bytes());
            page.push(b'\n');
        }
        let notes = sub.get_after_long_help().map(ToString::to_string);
        if let Some(notes) = notes.filter(|notes| Some(notes) != top_notes.as_ref()) {
            page.extend_from_slice(roff_notes(&notes, false).as_bytes());
        }
    }
    if let Some(notes) = &top_notes {
        page.extend_from_slice(roff_notes(notes, true).as_bytes());
    }
    man.render_version_section(&mut page)?;
    write_stdout(&page);
    Ok(())
}

/// The commands that run something (`config show`, not `config`), in --help
/// order, without the hidden ones and `help`.
fn leaf_commands(command: &clap::Command) -> Vec<&clap::Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .flat_map(|sub| {
            if sub.has_subcommands() {
                leaf_commands(sub)
            } else {
                vec![sub]
            }
        })
        .collect()
}

/// An `after_long_help` text in roff: its unindented lines are headings
/// (sections at the top level, bold lines in a command's subsection), the
/// indented ones are kept as they are, unfilled.
fn roff_notes(text: &str, top_level: bool) -> String {
    let mut roff = String::new();
    let mut unfilled = false;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with(' ') {
            if !unfilled {
                roff.push_str(".nf\n");
                unfilled = true;
            }
            roff.push_str(&line);
        } else {
            if unfilled {
                roff.push_str(".fi\n");
                unfilled = false;
            }
            if top_level {
                roff.push_str(&format!(".SH \"{line}\""));
            } else {
                roff.push_str(&format!(".PP\n\\fB{line}\\fR"));
            }
        }
        roff.push('\n');
    }
    if unfilled {
        roff.push_str(".fi\n");
    }
    roff
}
