//! The start-up fast path: `nsbypass [--config FILE] hook STAGE` is
//! recognised by hand, before clap builds its command tree (~0.2 ms and a
//! few hundred kB per process, paid on every container event).
//!
//! Most hook calls have nothing to do: the no-op stages (createContainer,
//! startContainer, poststart) and containers that ask for nothing. For
//! those, `hook::run` drains stdin, reads `config.json` as bytes and leaves
//! before any config, logging or runtime starts; this module lets it do so
//! without the argument framework either. Only the argv forms the
//! generated hook definitions use (and their obvious variants) are taken;
//! anything else, `--help` included, falls back to clap, so behaviour and
//! error lines are unchanged.

use std::ffi::OsStr;
use std::path::PathBuf;

use crate::hook::Stage;

/// What a recognised argv asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct HookArgs {
    pub stage: Stage,
    /// `--config`, if given.
    pub config: Option<PathBuf>,
}

/// Recognises `[--config FILE | --config=FILE] hook STAGE [--config FILE |
/// --config=FILE]` (at most one `--config`), `args` without the program
/// name. `None` means "let clap decide".
pub fn recognise(args: &[&OsStr]) -> Option<HookArgs> {
    let (config, rest) = take_config(args)?;
    let (stage, rest) = match rest {
        [hook, stage, rest @ ..] if *hook == "hook" => (stage_named(stage)?, rest),
        _ => return None,
    };
    let config = match (config, take_config(rest)?) {
        (config, (None, [])) => config,
        (None, (Some(config), [])) => Some(config),
        _ => return None,
    };
    Some(HookArgs { stage, config })
}

/// A leading `--config FILE` or `--config=FILE`, and what follows it.
/// `None` for a value clap would not take as is (empty, or looking like a
/// flag).
#[allow(clippy::type_complexity)]
fn take_config<'s, 'a>(args: &'s [&'a OsStr]) -> Option<(Option<PathBuf>, &'s [&'a OsStr])> {
    let (value, rest) = match args {
        [flag, value, rest @ ..] if *flag == "--config" => (*value, rest),
        [arg, rest @ ..] => match arg.as_encoded_bytes().strip_prefix(b"--config=") {
            // SAFETY: the rest of an OsStr's encoded bytes after an ASCII
            // prefix is itself a valid encoding.
            Some(v) => (unsafe { OsStr::from_encoded_bytes_unchecked(v) }, rest),
            None => return Some((None, args)),
        },
        [] => return Some((None, args)),
    };
    if value.is_empty() || value.as_encoded_bytes().starts_with(b"-") {
        return None;
    }
    Some((Some(PathBuf::from(value)), rest))
}

fn stage_named(name: &OsStr) -> Option<Stage> {
    Some(match name.to_str()? {
        "prestart" => Stage::Prestart,
        "createRuntime" => Stage::CreateRuntime,
        "createContainer" => Stage::CreateContainer,
        "startContainer" => Stage::StartContainer,
        "poststart" => Stage::Poststart,
        "poststop" => Stage::Poststop,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Option<HookArgs> {
        let args: Vec<&OsStr> = line.split(' ').map(OsStr::new).collect();
        recognise(&args)
    }

    fn hook(stage: Stage, config: Option<&str>) -> Option<HookArgs> {
        Some(HookArgs {
            stage,
            config: config.map(PathBuf::from),
        })
    }

    #[test]
    fn the_generated_hook_argv_is_recognised() {
        // Exactly what install writes (hooks.d, CDI, the docker runtime's spec).
        let cmd = runtime_config::install::HookCommand {
            binary: "/usr/local/bin/nsbypass".into(),
            config: "/etc/nsbypass/config.toml".into(),
        };
        for stage in [
            Stage::Prestart,
            Stage::CreateRuntime,
            Stage::CreateContainer,
            Stage::StartContainer,
            Stage::Poststart,
            Stage::Poststop,
        ] {
            let args = cmd.args(stage.name());
            let args: Vec<&OsStr> = args[1..].iter().map(OsStr::new).collect();
            assert_eq!(
                recognise(&args),
                hook(stage, Some("/etc/nsbypass/config.toml"))
            );
        }
    }

    #[test]
    fn the_common_variants_are_recognised() {
        use Stage::*;
        assert_eq!(parse("hook prestart"), hook(Prestart, None));
        assert_eq!(
            parse("--config=/c hook poststop"),
            hook(Poststop, Some("/c"))
        );
        assert_eq!(
            parse("hook poststart --config /c"),
            hook(Poststart, Some("/c"))
        );
        assert_eq!(
            parse("hook createRuntime --config=/c"),
            hook(CreateRuntime, Some("/c"))
        );
        assert_eq!(
            parse("--config rel hook startContainer"),
            hook(StartContainer, Some("rel"))
        );
    }

    #[test]
    fn everything_else_is_left_to_clap() {
        for line in [
            "",
            "hook",
            "hook Prestart",
            "hook prestop",
            "hook prestart extra",
            "hook --help",
            "hook prestart --help",
            "--help hook prestart",
            "--version",
            "hook -- prestart",
            "hook --config /c prestart",
            "--config /a hook prestart --config /b",
            "--config /a --config /b hook prestart",
            "--config= hook prestart",
            "--config -x hook prestart",
            "--config=-x hook prestart",
            "--config",
            "--config /c",
            "--config /c hook",
            "hook prestart --config",
            "hook prestart --config=",
            "--conf /c hook prestart",
            "-c /c hook prestart",
            "doctor",
            "gc hook prestart",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
        assert_eq!(recognise(&[]), None);
    }
}
