//! The docker runtime entry's reading of a runc command line: which
//! `create` or `run` makes what container from what bundle, and where runc's
//! `--log` goes. Pure: the hook's `runtime` command does the exec and the
//! file edits.
//!
//! The command line is read as runc reads it (Go's `flag` rules: `-x` and
//! `--x` alike, `=value` or the next argument); a `create` or `run` that
//! cannot be read for certain is refused rather than guessed at.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The flags of one runc command (or of runc itself), by name: runc reads
/// `-name` and `--name` alike, a value as `-name=V` or as the next argument.
struct Flags {
    /// Flags that take a value.
    valued: &'static [&'static str],
    /// Flags that take none (`-name=true|false` sets one explicitly).
    boolean: &'static [&'static str],
}

/// runc's and crun's global options.
const GLOBAL_FLAGS: Flags = Flags {
    valued: &[
        "root",
        "log",
        "log-format",
        "log-level",
        "criu",
        "rootless",
        "cgroup-manager",
    ],
    boolean: &["debug", "systemd-cgroup"],
};

/// `runc create`'s options.
const CREATE_FLAGS: Flags = Flags {
    valued: &[
        "bundle",
        "b",
        "console-socket",
        "pidfd-socket",
        "pid-file",
        "preserve-fds",
    ],
    boolean: &["no-pivot", "no-new-keyring"],
};

/// `runc run`'s options: create's, and how to wait for the container.
const RUN_FLAGS: Flags = Flags {
    valued: CREATE_FLAGS.valued,
    boolean: &[
        "no-pivot",
        "no-new-keyring",
        "detach",
        "d",
        "keep",
        "no-subreaper",
    ],
};

/// Flags that make runc print something and do nothing else.
const INFO_FLAGS: [&str; 4] = ["help", "h", "version", "v"];

/// One argument as Go's `flag` package (under runc's urfave/cli) reads it.
#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    /// Not a flag: a command or container id (`-` alone is one too).
    Word,
    /// `--`: the flags end here.
    End,
    /// `-name` or `--name`, with the value if it is attached as `=value`.
    Flag(&'a [u8], Option<&'a OsStr>),
}

impl<'a> Token<'a> {
    fn of(arg: &'a OsStr) -> Result<Token<'a>, String> {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            return Ok(Token::Word);
        }
        if bytes == b"--" {
            return Ok(Token::End);
        }
        let name = if bytes[1] == b'-' {
            &bytes[2..]
        } else {
            &bytes[1..]
        };
        if name.is_empty() || name[0] == b'-' || name[0] == b'=' {
            return Err(format!("bad flag syntax {arg:?}"));
        }
        Ok(match name.iter().position(|&b| b == b'=') {
            Some(i) => Token::Flag(&name[..i], Some(OsStr::from_bytes(&name[i + 1..]))),
            None => Token::Flag(name, None),
        })
    }
}

/// The flags at the front of an argument list, read as runc reads them.
#[derive(Debug, Default)]
struct Read<'a> {
    /// The valued flags' values, in order.
    values: Vec<(&'a [u8], &'a OsStr)>,
    /// Where the first word is (after a `--`, if there was one).
    next: usize,
    /// `--help` or `--version`: runc runs nothing.
    info: bool,
    /// The argument that could not be understood, and why: reading stopped there.
    error: Option<String>,
}

impl<'a> Read<'a> {
    /// The last value given to any of `names` (a later flag overrides an earlier one).
    fn value(&self, names: &[&str]) -> Option<&'a OsStr> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| names.iter().any(|name| name.as_bytes() == *n))
            .map(|(_, v)| *v)
    }
}

impl Flags {
    /// Reads flags from the front of `args` up to the first word, as Go's
    /// `flag` package does: a valued flag without `=` takes the next
    /// argument whatever it looks like; a boolean takes none.
    fn read<'a>(&self, args: &'a [OsString]) -> Read<'a> {
        let mut read = Read::default();
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_os_str();
            let (name, value) = match Token::of(arg) {
                Ok(Token::Word) => break,
                Ok(Token::End) => {
                    i += 1;
                    break;
                }
                Ok(Token::Flag(name, value)) => (name, value),
                Err(message) => {
                    read.error = Some(message);
                    break;
                }
            };
            let is = |list: &[&str]| list.iter().any(|n| n.as_bytes() == name);
            if is(self.valued) {
                let value = match value {
                    Some(value) => value,
                    None => match args.get(i + 1) {
                        Some(next) => {
                            i += 1;
                            next.as_os_str()
                        }
                        None => {
                            read.error = Some(format!("flag {arg:?} needs a value"));
                            break;
                        }
                    },
                };
                read.values.push((name, value));
            } else if is(self.boolean) || is(&INFO_FLAGS) {
                read.info |= is(&INFO_FLAGS);
            } else {
                read.error = Some(format!(
                    "unknown flag {arg:?}: nsbypass cannot tell whether it takes a value"
                ));
                break;
            }
            i += 1;
        }
        read.next = i;
        read
    }
}

/// A runc command line, as far as runtime mode needs to understand it.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// runc's `--log` file, where containerd reads the error it shows.
    pub log: Option<OsString>,
    /// The container a `create` or `run` makes; `Ok(None)` for any other
    /// command; `Err` (what could not be understood) when it may be a
    /// `create` or `run` but nsbypass cannot tell of what bundle.
    pub created: Result<Option<Created>, String>,
}

/// What a `create` or `run` makes.
#[derive(Debug, PartialEq, Eq)]
pub struct Created {
    /// The bundle directory, as given (`.` when none or empty).
    pub bundle: PathBuf,
    /// The container id, lossily as UTF-8.
    pub id: String,
}

impl CommandLine {
    /// Reads runc's arguments (without the program name).
    pub fn parse(args: &[OsString]) -> CommandLine {
        let globals = GLOBAL_FLAGS.read(args);
        let log = globals.value(&["log"]).map(OsStr::to_owned);
        let rest = &args[globals.next..];
        let created = match globals.error {
            // Whatever the flag is, a command line without these words
            // creates nothing.
            Some(message) if rest.iter().any(|a| a == "create" || a == "run") => Err(message),
            Some(_) => Ok(None),
            None if globals.info => Ok(None),
            None => created(rest),
        };
        CommandLine { log, created }
    }
}

/// The bundle and id of `create|run FLAGS... ID`, as runc reads them;
/// `Ok(None)` for any other command.
fn created(args: &[OsString]) -> Result<Option<Created>, String> {
    let (command, flags) = match args.split_first() {
        Some((c, rest)) if c == "create" => ("create", CREATE_FLAGS.read(rest)),
        Some((c, rest)) if c == "run" => ("run", RUN_FLAGS.read(rest)),
        _ => return Ok(None),
    };
    let rest = &args[1..];
    if let Some(message) = flags.error {
        return Err(format!("{command}: {message}"));
    }
    if flags.info {
        return Ok(None);
    }
    // Without an id runc creates nothing (and says so itself).
    let Some(id) = rest.get(flags.next) else {
        return Ok(None);
    };
    if let Some(extra) = rest.get(flags.next + 1) {
        return Err(format!(
            "{command}: {extra:?} after the container id {id:?}: nsbypass reads flags before the id only"
        ));
    }
    // runc stays in its working directory for an empty or absent bundle.
    let bundle = match flags.value(&["bundle", "b"]) {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from("."),
    };
    Ok(Some(Created {
        bundle,
        id: id.to_string_lossy().into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn created_by(line: &str) -> Result<Option<(PathBuf, String)>, String> {
        CommandLine::parse(&args(line))
            .created
            .map(|c| c.map(|c| (c.bundle, c.id)))
    }

    fn some(bundle: &str, id: &str) -> Result<Option<(PathBuf, String)>, String> {
        Ok(Some((PathBuf::from(bundle), id.to_owned())))
    }

    #[test]
    fn finds_the_bundle_of_create_as_docker_calls_it() {
        // containerd's go-runc, for docker's create and for run.
        let line = "--root /run/docker/runtime-runc/moby --log /x/log.json --log-format json \
                    --systemd-cgroup create --bundle /x/b --pid-file /x/init.pid \
                    --console-socket /tmp/pty.sock --no-pivot --no-new-keyring --preserve-fds 2 c0ffee";
        assert_eq!(created_by(line), some("/x/b", "c0ffee"));
        let line = "--root /r --debug --log /x/log.json --log-format json --rootless=false \
                    run --bundle /x/b --detach --pid-file /x/init.pid c0ffee";
        assert_eq!(created_by(line), some("/x/b", "c0ffee"));
        assert_eq!(
            CommandLine::parse(&args(line)).log,
            Some(OsString::from("/x/log.json"))
        );
    }

    #[test]
    fn every_form_runc_reads_is_read_alike() {
        let cases = [
            ("create -b /b id", "/b"),
            ("create -b=/b id", "/b"),
            ("create --b /b id", "/b"),
            ("create --b=/b id", "/b"),
            ("create --bundle /b id", "/b"),
            ("create --bundle=/b id", "/b"),
            ("create -bundle /b id", "/b"),
            ("create -bundle=/b id", "/b"),
            ("create -b=/b=c id", "/b=c"),
            ("create id", "."),
            ("create -b= id", "."),
            ("create -b /first --bundle=/b id", "/b"),
            ("--root /r create -b /b id", "/b"),
            ("--root=/r create -b /b id", "/b"),
            ("-root /r create -b /b id", "/b"),
            ("-root=/r -log=/l -log-format=json create -b /b id", "/b"),
            ("--log /l --log-format json --log-level debug create -b /b id", "/b"),
            ("--criu /c --rootless auto --cgroup-manager cgroupfs create -b /b id", "/b"),
            ("--debug -systemd-cgroup --debug=false create -b /b id", "/b"),
            ("-- create -b /b id", "/b"),
            ("create --no-pivot -no-new-keyring=true -b /b id", "/b"),
            ("create --pid-file=/p -console-socket /s --preserve-fds=3 --pidfd-socket /f -b /b id", "/b"),
            ("create -b /b -- id", "/b"),
            // As Go's flag does, a valued flag takes the next argument whatever it is.
            ("create --pid-file --bundle id", "."),
            ("create --bundle -- id", "--"),
            ("run -d -b /b id", "/b"),
            ("run --detach=true --keep --no-subreaper -b=/b id", "/b"),
        ];
        for (line, bundle) in cases {
            assert_eq!(created_by(line), some(bundle, "id"), "{line}");
        }
        assert_eq!(created_by("create -b /b -- -id"), some("/b", "-id"));
    }

    #[test]
    fn the_log_file_is_found_in_every_form() {
        for line in [
            "--log /l create -b /b id",
            "--log=/l create id",
            "-log /l create id",
            "-log=/l state id",
            "--log /x --log /l start id",
            "--log /l create --unknown id",
            "--log /l --unknown create id",
        ] {
            assert_eq!(
                CommandLine::parse(&args(line)).log,
                Some(OsString::from("/l")),
                "{line}"
            );
        }
        assert_eq!(CommandLine::parse(&args("--root /r create id")).log, None);
    }

    #[test]
    fn what_may_be_a_create_but_cannot_be_read_is_refused_naming_the_argument() {
        let cases = [
            ("create --bogus x id", "create: unknown flag \"--bogus\": nsbypass cannot tell whether it takes a value"),
            ("create -db /x id", "create: unknown flag \"-db\""),
            ("create -detach id", "create: unknown flag \"-detach\""),
            ("create -d id", "create: unknown flag \"-d\""),
            ("run --config /c id", "run: unknown flag \"--config\""),
            ("create ---b /x id", "create: bad flag syntax \"---b\""),
            ("create -=x id", "create: bad flag syntax \"-=x\""),
            ("create -b /b --bundle", "create: flag \"--bundle\" needs a value"),
            ("create id --bundle /b", "create: \"--bundle\" after the container id \"id\": nsbypass reads flags before the id only"),
            ("create id extra", "create: \"extra\" after the container id \"id\""),
            ("--new-global create -b /b id", "unknown flag \"--new-global\""),
            ("--new-global x run -b /b id", "unknown flag \"--new-global\""),
        ];
        for (line, want) in cases {
            let got = created_by(line).unwrap_err();
            assert!(got.starts_with(want), "{line}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn other_commands_pass_through() {
        for line in [
            "--root /r start id",
            "--root /r delete --force id",
            "state id",
            "exec --bogus id sh",
            "--root create list",
            "--version",
            "--version create -b /b id",
            "-h create -b /b id",
            "create --help",
            "create -b /b -h id",
            "create",
            "create -b /b",
            "--new-global state id",
            "--new-global=1 kill id KILL",
            "--root",
            "",
        ] {
            assert_eq!(created_by(line), Ok(None), "{line}");
        }
    }
}
