//! `cyberwave-cloud-node completions <shell>`: clap_complete's script for
//! the shell, with its bash script repaired for our hyphenated name.

use clap::CommandFactory;

use super::output::write_stdout;
use super::Cli;

/// `send`'s command argument: any non-empty name passes (the node judges
/// it, and a newer node may know more), but the commands this version
/// knows are offered to the shell, so `send <TAB>` lists them (and
/// `wait`).
#[derive(Debug, Clone, Copy)]
pub struct CommandName;

impl clap::builder::TypedValueParser for CommandName {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::NonEmptyStringValueParser::new().parse_ref(command, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let names = crate::protocol::CommandKind::ALL.map(|kind| kind.name());
        // `wait` is send's own: it attaches to a workload started earlier.
        Some(Box::new(
            names
                .into_iter()
                .chain(["wait"])
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// Prints the completion script for `shell`. clap_complete panics on a write
/// error, so the script is made in memory and written through
/// [`write_stdout`], where a closed pipe ends the program quietly.
pub(super) fn print(shell: clap_complete::Shell) -> anyhow::Result<()> {
    write_stdout(script(shell).as_bytes());
    Ok(())
}

/// The completion script for `shell`.
pub fn script(shell: clap_complete::Shell) -> String {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, &name, &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => repair_bash(&script, &name),
        _ => script,
    }
}

/// clap_complete's bash script (4.6.11) spells the state of a subcommand
/// two ways when the program's name has a hyphen: the loop that reads the
/// words builds `cyberwave__cloud__node__subcmd__start`, the arms that
/// offer its options say `cyberwave__subcmd__cloud__subcmd__node__subcmd__start`
/// (the name's hyphens escaped as the subcommand separator), so no arm
/// below the top level ever matched: `start --<TAB>` offered nothing and
/// `send --wait <TAB>` fell back to file names. Upstream:
/// clap-rs/clap#6421. The arms are renamed to the loop's spelling; once
/// clap_complete agrees with itself this finds nothing to rename.
fn repair_bash(script: &str, name: &str) -> String {
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    if wrong == right {
        return script.to_owned();
    }
    script.replace(&wrong, &right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bash_arm_is_a_state_the_loop_can_reach() {
        let script = script(clap_complete::Shell::Bash);
        let reached: Vec<&str> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        let arms: Vec<&str> = script
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("cyberwave") && l.ends_with(')') && !l.contains(','))
            .map(|l| l.trim_end_matches(')'))
            .collect();
        assert!(arms.len() > 10, "{script}");
        for arm in arms {
            assert!(reached.contains(&arm), "arm {arm} is never reached");
        }
    }
}
