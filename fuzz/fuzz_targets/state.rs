//! The OCI state JSON a runtime writes to a hook's stdin: `State::parse`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsbypass_fuzz::one_line;
use runtime_config::State;

fuzz_target!(|data: &[u8]| {
    match State::parse(data) {
        Ok(state) => {
            assert!(state.bundle.is_absolute(), "{state:?}");
            assert!(state.pid.is_none_or(|p| p > 0), "{state:?}");
        }
        Err(e) => one_line(&e),
    }
});
