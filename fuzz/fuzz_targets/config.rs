//! Config parsing: any text gives a config or an error naming the file,
//! never a panic; a config that parses survives a round trip through YAML.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsrelay::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    match Config::parse(text, path) {
        Ok(config) => {
            let again = Config::parse(&config.to_yaml(), path)
                .unwrap_or_else(|e| panic!("own output rejected: {e}\n{}", config.to_yaml()));
            assert_eq!(config, again, "round trip changed the config");
        }
        Err(ConfigError::Invalid(e)) => assert_eq!(e.path, path),
        Err(e) => panic!("parsing text cannot fail to read: {e}"),
    }
});
