//! The container files stay in step with the processes: compose runs every long-running
//! process, and the image carries the local models where its settings look for them (so a
//! compose deployment answers messages with no provider key). No Docker engine is needed:
//! these read the files the engine would.

use std::path::Path;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The subcommands of the processes that run all the time (`colloquy dev` runs them all).
const PROCESSES: [&str; 5] = ["serve", "relay", "project", "assistant", "ingest"];

#[test]
fn compose_runs_every_long_running_process() {
    let compose = read("docker-compose.yml");
    for process in PROCESSES {
        let command = format!("command: [\"{process}\"]");
        assert!(compose.contains(&command), "docker-compose.yml has no service running `{process}`");
    }
}

#[test]
fn the_image_carries_the_local_models_where_its_settings_point() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("bash /src/scripts/models.sh"),
        "the image's models stage does not run scripts/models.sh (which checks the SHA-256 sums)"
    );
    let copied = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY --from=models /state/models "))
        .map(str::trim)
        .expect("the runtime stage copies the models from the models stage");
    let setting = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("COLLOQUY_ASSISTANT__LOCAL__MODELS_DIR="))
        .map(|v| v.trim_end_matches('\\').trim())
        .expect("the image sets COLLOQUY_ASSISTANT__LOCAL__MODELS_DIR");
    assert_eq!(copied, setting, "the models are copied to {copied} but the settings look in {setting}");
}
