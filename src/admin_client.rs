//! The CLI's side of the admin API: when a service for the same config is running, every
//! operational subcommand asks it instead of opening the database (redb allows one process).
//! Besides `outbound/`, the only user of ureq.

use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::config::Config;

/// Asks the running service; `Ok(None)` when nothing listens on `admin_listen`.
pub fn get_json(config: &Config, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
    call_json(config, "GET", path)
}

/// Like [`get_json`] with any method (`POST` for actions).
pub fn call_json(
    config: &Config,
    method: &str,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    call_with(&agent, config, method, path)
}

/// Like [`call_json`] for work that may take minutes (`replay` over a large history).
pub fn call_json_long(
    config: &Config,
    method: &str,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    call_with(&long_agent(), config, method, path)
}

fn call_with(
    agent: &ureq::Agent,
    config: &Config,
    method: &str,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let url = format!("http://{}{}", loopback(config), path);
    let auth = format!("Bearer {}", config.admin_token);
    let resp = if method == "POST" {
        agent.post(&url).header("Authorization", &auth).send_empty()
    } else {
        agent.get(&url).header("Authorization", &auth).call()
    };
    answer(config, &url, resp)
}

/// Sends a file as the request body (streamed, any size) and reads a JSON answer.
pub fn upload_json(
    config: &Config,
    path: &str,
    file: &std::path::Path,
) -> anyhow::Result<Option<serde_json::Value>> {
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let url = format!("http://{}{}", loopback(config), path);
    let resp = long_agent()
        .post(&url)
        .header("Authorization", &format!("Bearer {}", config.admin_token))
        .send(ureq::SendBody::from_reader(&mut f));
    answer(config, &url, resp)
}

/// Streams a GET answer into `out`; `Ok(false)` when nothing listens on `admin_listen`.
pub fn download(config: &Config, path: &str, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    let url = format!("http://{}{}", loopback(config), path);
    let resp = long_agent()
        .get(&url)
        .header("Authorization", &format!("Bearer {}", config.admin_token))
        .call();
    let mut resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::ConnectionFailed) => return Ok(false),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(false)
        }
        Err(e) => return Err(anyhow!("admin API at {url}: {e}")),
    };
    if resp.status().as_u16() != 200 {
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        return Err(anyhow!(
            "admin API at {url} answered {status}: {}",
            error_text(&body)
        ));
    }
    std::io::copy(&mut resp.body_mut().as_reader(), out)
        .with_context(|| format!("admin API at {url}: reading the answer"))?;
    Ok(true)
}

/// For imports and exports: connecting is quick or not at all; the work may take minutes.
fn long_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(6 * 3600)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The `error` of a JSON error answer, else the body.
fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

fn answer(
    config: &Config,
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let mut resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::ConnectionFailed) => return Ok(None),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(None)
        }
        Err(e) => return Err(anyhow!("admin API at {url}: {e}")),
    };
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("admin API at {url}: reading the answer"))?;
    match status {
        200 => serde_json::from_str(&body)
            .map(Some)
            .with_context(|| format!("admin API at {url}: answer is not JSON")),
        401 => Err(anyhow!(
            "admin API at {url} refused the admin_token from {}: is another instance with a different config listening there?",
            config.origin
        )),
        400 | 404 | 409 | 410 => Err(anyhow!("{}", error_text(&body))),
        s => Err(anyhow!("admin API at {url} answered {s}: {}", error_text(&body))),
    }
}

/// Where to reach `admin_listen` from this machine (an unspecified address means loopback).
fn loopback(config: &Config) -> String {
    let mut a = config.admin_listen;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a.to_string()
}
