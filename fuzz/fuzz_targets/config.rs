#![no_main]
//! Any text as a config file: a config or an error naming what is wrong, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = umbra::config::Config::parse(text) {
        let _ = cfg.validate();
    }
});
