//! The docker runtime entry's command line (`runtime_args::CommandLine`),
//! NUL-separated arguments as runc gets them (any bytes).
#![no_main]
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use runtime_config::runtime_args::CommandLine;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let line = CommandLine::parse(&args);
    match &line.created {
        Ok(Some(created)) => {
            assert!(!created.bundle.as_os_str().is_empty(), "{line:?}");
            assert!(args.iter().any(|a| a == "create" || a == "run"), "{line:?}");
        }
        Ok(None) => {}
        Err(message) => assert!(!message.contains('\n'), "two-line error: {message}"),
    }
    // The log file, when found, is one of the arguments or a part of one.
    if let Some(log) = &line.log {
        let log = log.as_encoded_bytes();
        assert!(
            args.iter().any(|a| a.as_encoded_bytes().ends_with(log)),
            "{line:?}"
        );
    }
});
